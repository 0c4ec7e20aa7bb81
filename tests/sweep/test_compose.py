"""Fast point composition: every point equals a real compose of its overrides, at one Hydra call per base."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from hpc_ft.compose import compose as compose_mod
from hpc_ft.compose.compose import compose_job
from tests.sweep.hydra_reference import sweep_points
from hpc_ft.errors import UserError
from hpc_ft.compose.points import compose_points, point_overrides, sweep_axes


def _reference(overrides):
    """(resolved container, error) of a real compose of one point's overrides."""
    try:
        return OmegaConf.to_container(compose_job(overrides), resolve=True), None
    except UserError as exc:
        return None, str(exc)


SWEEPS = [
    # plain values on existing leaves: the fast path
    ["cluster=slurm_local", "model.micro_batch_size=1,2,4", "model.optim.lr=1e-3,1e-2"],
    ["model.seed=range(1,4)", "trainer.precision=16,bf16,8", "trainer.val_check_interval=0.5,20"],
    # group choices: one compose per choice, values applied to each
    ["cluster=local,slurm_local,nig", "model.micro_batch_size=choice(1,4)"],
    ["model.micro_batch_size=1,2", "model=elyza_llama2_7b,tiny_llama"],
    ["experiment=nig_elyza_ptuning", "model.tensor_model_parallel_size=1,2,4", "model.micro_batch_size=2,4"],
    # an interpolation that depends on the swept key (exp_manager.name, the GBS)
    ["model.peft.peft_scheme=lora,none", "model.micro_batch_size=1,2"],
    ["model.global_batch_size=${model.micro_batch_size}", "model.micro_batch_size=1,2,4"],
    ["exp_manager.name=${model}", "model.seed=1,2"],
    # interpolations inside swept values, lists, paths that interpolations go through lists from
    ["experiment=nig_elyza_ptuning", "model.micro_batch_size=2,4", "model.global_batch_size=${model.micro_batch_size},16"],
    ["model.peft.lora_tuning.target_modules=[attention_qkv],[mlp]", "model.seed=1,2"],
    ["data.dir=${work_dir}/d1,${work_dir}/d2", "model.seed=1,2"],
    ["data.dir=/tmp/a,/tmp/b", "work_dir=/tmp/x,/tmp/y"],
    # overlapping keys: Hydra applies them in command-line order
    ["model.optim={lr:1},{lr:2}", "model.optim.lr=3,4"],
    ["model.optim.lr=3,4", "model.optim={lr:5}"],
    # +key / ~key
    ["+cluster.env.FOO=a,b", "model.seed=1,2"],
    ["~model.optim.name", "model.optim.lr=1,2"],
    # refused values: the same error as a real compose
    ["model.micro_batch_size=abc,2,0", "model.optim.lr=x,0.5"],
    ["model.hf_config=???,x", "model.seed=1,2"],
    ["cluster.time=01:00:00,forever"],
    ["model.micro_bach_size=1,2", "model.optim.lr=1,2"],
    ["cluster.env.FOO=a,b"],
    ["+foo=1,2", "model.micro_batch_size=1,2"],
]


@pytest.mark.parametrize("sweep", SWEEPS, ids=[" ".join(s)[:60] for s in SWEEPS])
def test_every_point_equals_a_real_compose_of_its_overrides(sweep, work_dir):
    overrides = [f"work_dir={work_dir}"] + sweep
    points = compose_points(overrides)
    assert len(points) == len(point_overrides(overrides)) > 1
    for p in points:
        expected, error = _reference(p.overrides)
        assert p.error == error, p.overrides
        assert p.spec == expected, p.overrides  # a SpecView is a dict: equal by value


def test_point_overrides_are_spelled_as_hydras_basic_sweeper_spells_them(work_dir):
    overrides = [f"work_dir={work_dir}", "model.micro_batch_size=range(1,9,2)", "cluster.time=01:00:00,02:00:00",
                 "model.optim.lr=choice(1e-4,3e-4)", "exp_manager.name='a b',c", "model.seed=3", "model.seed=1,2"]
    assert point_overrides(overrides) == sweep_points(overrides)
    assert [p.overrides for p in compose_points(overrides)] == sweep_points(overrides)


def test_range_and_choice_expand_in_hydra_order(work_dir):
    points = compose_points([f"work_dir={work_dir}", "model.tensor_model_parallel_size=choice(1,2)",
                             "model.micro_batch_size=range(1,4)"])
    assert [(p.spec.model.tensor_model_parallel_size, p.spec.model.micro_batch_size) for p in points] == [
        (1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    assert points[4].swept == {"model.tensor_model_parallel_size": "2", "model.micro_batch_size": "2"}


def test_a_glob_over_a_group_lists_its_options(work_dir):
    points = compose_points([f"work_dir={work_dir}", "cluster=glob(*)"])
    assert sorted(p.spec.cluster.name for p in points) == ["local", "nig", "slurm_local", "slurm_local2"]


def test_interval_cannot_be_listed(work_dir):
    with pytest.raises(UserError, match=r"model.optim.lr: interval\(\) cannot be listed"):
        sweep_axes([f"work_dir={work_dir}", "model.optim.lr=interval(0.1,0.2)"])


def test_a_syntax_error_names_the_grammar(work_dir):
    with pytest.raises(UserError, match="sweep overrides: .*key=a,b,c"):
        compose_points([f"work_dir={work_dir}", "model.micro_batch_size=[1,2"])


class _Counter:
    def __init__(self, monkeypatch, module, name):
        self.calls = []
        original = getattr(module, name)

        def counted(*args, **kwargs):
            self.calls.append(args)
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)


def test_a_1000_point_sweep_calls_hydra_once_per_group_choice(work_dir, monkeypatch, private_cache):
    hydra = _Counter(monkeypatch, compose_mod, "hydra_compose")
    points = compose_points([f"work_dir={work_dir}", "cluster=local,slurm_local",
                             "model.tensor_model_parallel_size=1,2", "model.micro_batch_size=range(1,251)"])
    assert len(points) == 1000
    assert len(hydra.calls) == 2
    assert {p.how for p in points} == {"fast"}
    assert points[999].spec.cluster.name == "slurm_local" and points[999].spec.model.micro_batch_size == 250


def test_a_swept_plus_key_is_composed_for_real_per_value(work_dir, monkeypatch, private_cache):
    hydra = _Counter(monkeypatch, compose_mod, "hydra_compose")
    points = compose_points([f"work_dir={work_dir}", "+cluster.env.A=x,y,z", "model.micro_batch_size=range(1,11)"])
    assert len(points) == 30 and len(hydra.calls) == 3
    assert {p.spec.cluster.env["A"] for p in points} == {"x", "y", "z"}


def test_an_unknown_key_gives_hydras_error_from_one_real_compose(work_dir, monkeypatch, private_cache):
    hydra = _Counter(monkeypatch, compose_mod, "hydra_compose")
    points = compose_points([f"work_dir={work_dir}", "model.micro_bach_size=range(1,51)"])
    assert all(p.error and "model.micro_bach_size: unknown key" in p.error for p in points)
    assert "Did you mean 'model.micro_batch_size'" in points[0].error
    assert len(hydra.calls) == 2  # the base, and one real compose that produced the error


def test_a_value_out_of_range_refuses_only_that_point(work_dir):
    points = compose_points([f"work_dir={work_dir}", "model.micro_batch_size=0,2"])
    assert points[0].error.startswith("model.micro_batch_size=0: must be >= 1")
    assert points[1].error is None and points[1].spec.model.micro_batch_size == 2
