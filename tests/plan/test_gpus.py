from __future__ import annotations

import pytest

from hpc_ft.errors import UserError
from hpc_ft.plan.gpus import GPUS, get_gpu, gpu_names


def test_catalogue_has_the_cluster_gpus_and_cpu():
    assert set(gpu_names()) == {"V100-16GB", "V100-32GB", "A100-40GB", "A100-80GB", "H100-80GB", "cpu"}


@pytest.mark.parametrize("spelling", ["V100-16GB", "v100-16gb", "V100_16GB", "v100 16gb", "v100-sxm2-16gb"])
def test_lookup_is_case_and_punctuation_insensitive(spelling):
    assert get_gpu(spelling).name == "V100-16GB"


def test_unknown_gpu_names_the_key_and_suggests():
    with pytest.raises(UserError) as exc:
        get_gpu("V100-16G")
    msg = str(exc.value)
    assert "cluster.gpu.model='V100-16G'" in msg and "Did you mean 'V100-16GB'?" in msg


def test_v100_has_no_bf16_and_no_flash_attention():
    v100 = get_gpu("V100-16GB")
    assert not v100.bf16 and not v100.flash_attention and v100.compute_capability == (7, 0)
    assert v100.peak_tflops["bf16"] is None and v100.peak_tflops["fp16"] == 125.0
    assert get_gpu("A100-80GB").bf16 and get_gpu("H100-80GB").flash_attention


def test_memory_sizes_are_what_the_driver_reports():
    assert 15.7 < GPUS["V100-16GB"].memory_gib < 15.8
    assert 31.7 < GPUS["V100-32GB"].memory_gib < 31.8
    assert GPUS["A100-80GB"].memory_gib == 80.0


def test_cpu_memory_is_configurable_or_read_from_the_host():
    assert get_gpu("cpu", cpu_memory_gib=12.5).memory_gib == 12.5
    assert get_gpu("CPU").memory_gib > 0
    assert get_gpu("cpu").is_cpu and not get_gpu("cpu").fp16


@pytest.mark.parametrize("name,sizes", [("A100", ("A100-40GB", "A100-80GB")), ("a100", ("A100-40GB", "A100-80GB")),
                                        ("V100", ("V100-16GB", "V100-32GB"))])
def test_a_name_sold_in_two_memory_sizes_is_refused_naming_both(name, sizes):
    with pytest.raises(UserError) as err:
        get_gpu(name)
    msg = str(err.value)
    assert f"cluster.gpu.model={name}" in msg and "ambiguous" in msg
    assert all(size in msg for size in sizes)
