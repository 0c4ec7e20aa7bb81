"""User-facing errors: a short message naming the key or file and a fix; the CLI exits 2 on them."""

from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
    """A mistake in the user's input. The CLI prints the message (no traceback) and exits 2.

    Messages name the key or file, the value, the rule, and a fix, in one to a few lines.
    """

    exit_code = 2


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """Return ' Did you mean X?' for the closest candidate, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""
