"""Bench: `hpc-ft train --dry-run` wall time against the floor `python -c "import hydra, jinja2, submitit"`.

Both are measured in this run, interleaved, as whole processes (what a user waits for). Prints the
medians and the ratios; the target is ratio <= 1.5. hpc-ft memoises Hydra's composition on disk
(keyed on the overrides and every config file's size and mtime): "warm" is a repeated command, "cold"
a first one with an empty cache (a fresh XDG_CACHE_HOME each time). Both are printed. A cold command whose
overrides only set values is composed on the default composition that hpc-ft keeps beside the package
(hpc_ft/compose/__pycache__, like bytecode; written by the first composition ever, here the warm-up), so
"cold" skips Hydra's defaults tree but never Hydra's reading of anything that is not a plain value.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

REPEATS = int(os.environ.get("BENCH_REPEATS", "15"))


def wall(argv, env, cwd) -> float:
    t = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, HPC_FT_REGISTRY=os.path.join(tmp, "reg.sqlite"))
        floor_argv = [sys.executable, "-c", "import hydra, jinja2, submitit"]
        ours_argv = [sys.executable, "-m", "hpc_ft.cli", "train", f"work_dir={tmp}", "--dry-run"]
        ref_argv = [sys.executable, "-m", "hpc_ft.cli", "train", "experiment=nig_elyza_ptuning", f"work_dir={tmp}",
                    "--dry-run"]
        for argv in (floor_argv, ours_argv, ref_argv):  # warm the page cache
            wall(argv, env, tmp)
        floor, ours, ref, cold = [], [], [], []
        for i in range(REPEATS):
            floor.append(wall(floor_argv, env, tmp))
            ours.append(wall(ours_argv, env, tmp))
            ref.append(wall(ref_argv, env, tmp))
            cold.append(wall(ours_argv, dict(env, XDG_CACHE_HOME=os.path.join(tmp, f"cache{i}")), tmp))
    f, o, r = statistics.median(floor), statistics.median(ours), statistics.median(ref)
    c = statistics.median(cold)
    print(f"floor  python -c 'import hydra, jinja2, submitit'   median {f * 1000:7.1f} ms  (n={REPEATS})")
    print(f"ours   hpc-ft train --dry-run (hf, local)            median {o * 1000:7.1f} ms  ratio {o / f:.2f}")
    print(f"ours   hpc-ft train experiment=nig_elyza_ptuning -n  median {r * 1000:7.1f} ms  ratio {r / f:.2f}")
    print(f"ours   hpc-ft train --dry-run, cold compose cache    median {c * 1000:7.1f} ms  ratio {c / f:.2f}")
    print(f"target: ratio <= 1.50 -> warm {'met' if max(o, r) / f <= 1.5 else 'NOT met'}, "
          f"cold {'met' if c / f <= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
