"""Exit codes of `hpc-ft status`, `status --wait` and `watch`: one per way a run ends (docs/user-guide.md's table).

This table is the one source of truth: the user guide's table is checked against it by a test.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

# (code, the run states that give it, what it means)
EXIT_CODES: Tuple[Tuple[int, Tuple[str, ...], str], ...] = (
    (0, ("COMPLETED", "EARLY_STOPPED"), "the run completed (early-stopped included)"),
    (2, (), "usage error: bad input, or no such run (nothing was done)"),
    (3, ("FAILED",), "the run failed (an error, a GPU out-of-memory, a NCCL failure: `hpc-ft status` says which)"),
    (4, ("CANCELLED",), "the run was cancelled (scancel, `hpc-ft cancel`)"),
    (5, ("TIMEOUT", "DEADLINE"), "the run reached its time limit"),
    (6, ("NODE_FAIL", "BOOT_FAIL"), "a node failed"),
    (7, ("OUT_OF_MEMORY",), "the job ran out of host memory"),
    (8, ("PREEMPTED",), "the job was preempted"),
    (10, ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED"),
     "the run has not ended yet (`status` without --wait)"),
    (11, ("UNKNOWN",), "the run's state cannot be decided (`watch` and `status --wait` end with the reason)"),
)
NOT_ENDED = 10
UNDECIDED = 11
_BY_STATE: Dict[str, int] = {s: code for code, states, _ in EXIT_CODES for s in states}


def exit_code_for(state: Optional[str]) -> int:
    """The exit code of a run in `state`: 0 only for COMPLETED."""
    if not state:
        return UNDECIDED
    return _BY_STATE.get(state, NOT_ENDED if state not in _ENDED_UNLISTED else 3)


# end states Slurm has that the table does not list on their own: a failure
_ENDED_UNLISTED = ("SPECIAL_EXIT", "REVOKED", "STOPPED")
