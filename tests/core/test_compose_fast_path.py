"""Value overrides applied to the kept default composition give exactly what Hydra composes; anything whose
Hydra reading is not certain, or that does not apply cleanly, is left to Hydra."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from hpc_ft.compose import compose as c
from hpc_ft.errors import UserError

SAME_AS_HYDRA = [
    ["work_dir=/tmp/hpc-ft-fast"],
    ["trainer.max_steps=10", "model.optim.lr=5e-3", "eval=true", "trainer.precision=bf16"],
    ["model.optim.lr=.5", "model.optim.lr=1e-4", "trainer.val_check_interval=0.25", "model.seed=-3"],
    ["data.dir=/data/my_set", "exp_manager.name=run_a-1", "model.data.train_ds.prompt_template=null"],
    ["model.data.train_ds.file_names=/x/train.jsonl", "backend.threads=2", "exp_manager.resume_if_exists=False"],
]
LEFT_TO_HYDRA = ["model=tiny_neox", "+cluster.env.X=1", "cluster.time=01:00:00", "model.name='a b'",
                 "trainer.max_steps=1_000", "x.y=${work_dir}", "model.optim.lr=inf", "trainer.devices=2,4",
                 "model.data.train_ds.file_names=[a,b]", "name=", "model.name=01abc"]


def _roots():
    return [c.conf_dir()]


@pytest.mark.parametrize("overrides", SAME_AS_HYDRA, ids=lambda o: " ".join(o)[:40])
def test_value_overrides_on_the_kept_base_equal_hydras_composition(overrides):
    c.hydra_compose([])  # the base, kept once
    fast = c._compose_on_base(overrides, _roots())
    assert fast is not None, "every override here is a plain value: the fast path must take it"
    hydra = c._hydra_compose_uncached(overrides, _roots(), None)
    hydra_data = OmegaConf.to_container(hydra, resolve=False)
    hydra_data.pop("hydra", None)
    assert OmegaConf.to_container(fast, resolve=False) == hydra_data


@pytest.mark.parametrize("override", LEFT_TO_HYDRA)
def test_anything_not_certainly_a_plain_value_goes_to_hydra(override):
    assert c.plain_value_override(override) is None


def test_an_unknown_key_gets_hydras_own_error():
    c.hydra_compose([])
    assert c._compose_on_base(["trainer.max_stepz=3"], _roots()) is None
    with pytest.raises(UserError, match="trainer.max_stepz"):
        c.compose_job(["trainer.max_stepz=3"])


def test_an_unknown_group_option_is_one_line_naming_the_options():
    assert c.load_group_option("cluster", "local").executor == "local"
    with pytest.raises(UserError, match=r"cluster=slurm_locl: no such option in group 'cluster'.*slurm_local"):
        c.load_group_option("cluster", "slurm_locl")
