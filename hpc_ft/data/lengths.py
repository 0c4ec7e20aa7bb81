"""Token lengths at submit time without torch: the model's tokenizer.json through the `tokenizers` library, else a character count (said so)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence


@dataclass(frozen=True)
class TokenCounter:
    """Counts the tokens of texts; `unit` says what is counted (tokens, or characters as an approximation)."""

    unit: str
    count: Callable[[Sequence[str]], list]
    exact: bool


def token_counter(model_dir: Optional[str]) -> TokenCounter:
    path = Path(model_dir).expanduser() / "tokenizer.json" if model_dir else None
    if path is not None and path.is_file():
        try:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(path))
        except Exception:  # noqa: BLE001 - an unreadable tokenizer falls back to counting characters, said so
            tokenizer = None
        if tokenizer is not None:
            encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)

            def count(texts: Sequence[str]) -> list:
                return [len(e.ids) for e in encode(list(texts), add_special_tokens=False)]

            return TokenCounter(f"tokens ({path})", count, True)
    why = f"no tokenizer.json in {model_dir}" if model_dir else "no model folder"
    return TokenCounter(f"characters, an approximation ({why} yet)", lambda texts: [len(t) for t in texts], False)


@dataclass(frozen=True)
class LengthSummary:
    p50: int
    p95: int
    max: int
    over: int       # rows longer than the limit: they would be cut
    limit: int
    unit: str
    sample: int = 0  # > 0: p50/p95 (and max when none is over the limit) from a sample of this many rows
    rows: int = 0    # the rows summarised (with a sample)
    over_estimated: bool = False  # `over` scaled up from the sample (most rows could have been over the limit)


def summarize(lengths: Sequence[int], limit: int, unit: str) -> LengthSummary:
    ordered = sorted(lengths)
    n = len(ordered)

    def at(q: float) -> int:
        return ordered[min(n - 1, int(q * (n - 1) + 0.5))] if n else 0

    over = n - _count_at_most(ordered, limit)
    return LengthSummary(at(0.5), at(0.95), ordered[-1] if n else 0, over, limit, unit)


def _count_at_most(ordered: list, limit: int) -> int:
    from bisect import bisect_right

    return bisect_right(ordered, limit)
