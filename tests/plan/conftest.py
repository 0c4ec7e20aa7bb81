"""Shared fixtures for the planner tests: model configs written from their published values."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpc_ft.plan import PlanRequest, load_arch

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_path(name: str) -> str:
    return str(FIXTURES / f"{name}.json")


@pytest.fixture(scope="session")
def elyza():
    return load_arch(fixture_path("elyza-japanese-llama-2-7b"))


@pytest.fixture(scope="session")
def llama3():
    return load_arch(fixture_path("llama-3-8b"))


@pytest.fixture(scope="session")
def mistral():
    return load_arch(fixture_path("mistral-7b-v0.1"))


@pytest.fixture(scope="session")
def neox():
    return load_arch(fixture_path("rinna-japanese-gpt-neox-3.6b"))


@pytest.fixture()
def reference(elyza):
    """The NIG tutorial job: ELYZA-7B p-tuning, 4 x V100-16GB, TP=4, MBS=4, GBS=16, bf16, O2 off.

    seq_len 256: JCommonsenseQA prompts are short and NeMo pads each batch to its longest
    sample (rounded up to 16), not to max_seq_length (reference notes §1.8, §4.3).
    """
    return PlanRequest(
        arch=elyza, backend="nemo", gpu="V100-16GB", gpus_per_node=4, num_nodes=1, devices=4,
        tp=4, pp=1, mbs=4, gbs=16, seq_len=256, precision="bf16", megatron_amp_O2=False,
        peft_scheme="ptuning", optimizer="fused_adam",
    )
