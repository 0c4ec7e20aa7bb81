"""`hpc-ft demo` end to end on the embedded default: a real learning signal, stopped early by itself."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.hf


def test_demo_learns_stops_early_and_beats_the_untuned_base(tmp_path):
    env = dict(os.environ, HPC_FT_REGISTRY=str(tmp_path / "registry.sqlite"))
    proc = subprocess.run([sys.executable, "-m", "hpc_ft.cli", "demo"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = proc.stdout[proc.stdout.index("== hpc-ft demo report =="):]
    first, best = map(float, re.search(r"val loss\s+([\d.]+) at step \d+ -> best ([\d.]+)", report).groups())
    assert best < first, report
    st = json.loads(subprocess.run([sys.executable, "-m", "hpc_ft.cli", "status", "--json"], capture_output=True,
                                   text=True, env=env, cwd=tmp_path).stdout)
    assert st["state"] == "COMPLETED" and st["end_cause"] == "EARLY_STOPPED" and st["early_stopped"], report
    assert st["step"] < st["max_steps"], report
    assert st["accuracy"] - st["base_accuracy"] >= 0.20, report
    assert os.path.isdir(st["best_checkpoint"])
    preds = (tmp_path / "results").glob("tiny_llama_lora/*/predictions/test_predictions.jsonl")
    rows = [json.loads(x) for p in preds for x in p.read_text().splitlines()]
    assert len(rows) == 200 and {"input", "pred", "label"} <= set(rows[0])
