"""The planner runs on the submit side, which has no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_planner_imports_no_torch_transformers_or_peft():
    code = (
        "import sys, hpc_ft.plan as p; "
        "bad = [m for m in ('torch', 'transformers', 'peft', 'numpy') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
