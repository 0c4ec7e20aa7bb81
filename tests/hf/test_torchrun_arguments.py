"""The node programs' options survive torch.distributed.run: it classifies every option of the whole command
line against its own (prefixes included) before it reads the module, so `--monitor` once stopped every
multi-process job as an ambiguous prefix of its `--monitor-interval`."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from torch.distributed.run import get_args_parser  # noqa: E402

from hpc_ft.backends.hf_runtime import task_train, train  # noqa: E402


@pytest.mark.parametrize("parser", [train.build_parser, task_train.build_parser], ids=["train", "task_train"])
def test_no_option_of_a_node_program_is_a_prefix_of_a_torchrun_option(parser):
    theirs = [s for a in get_args_parser()._actions for s in a.option_strings if s != "--help"]
    ours = [s for a in parser()._actions for s in a.option_strings if s.startswith("--") and s != "--help"]
    clashes = {o: [t for t in theirs if t.startswith(o)] for o in ours}
    assert not {o: t for o, t in clashes.items() if t}


def test_torchrun_leaves_the_monitor_option_to_the_module():
    argv = ["--nproc_per_node=2", "--nnodes=2", "-m", train.__name__, "--monitor-metric", "val_loss"]
    args = get_args_parser().parse_args(argv)
    assert args.training_script == train.__name__ and args.training_script_args == ["--monitor-metric", "val_loss"]
