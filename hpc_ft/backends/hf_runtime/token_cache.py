"""Tokenized splits cached per data checksum, so a requeued or resumed job does not tokenize its data again.

The key is a SHA-256 over the data file's bytes, the tokenizer's files, the encoding code (sft_data.py's
source) and the settings that shape encoding; a change to any of them is a new key (a miss), never a
stale hit. Entries are numpy archives (token ids, labels, row offsets, counts) in the run's output folder.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Callable

CACHE_DIR = "tokenized"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json")


def _file_digest(path: Path, digest) -> None:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def cache_key(data_files, model_dir: str | Path, settings: dict, encoder: Callable) -> str:
    """Hex key: the data files' bytes, the tokenizer's files, the encoder's module source, the settings."""
    digest = hashlib.sha256()
    for data_file in ([data_files] if isinstance(data_files, (str, Path)) else data_files):
        digest.update(str(Path(data_file).name).encode())
        _file_digest(Path(data_file), digest)
    for name in TOKENIZER_FILES:
        path = Path(model_dir) / name
        if path.is_file():
            digest.update(name.encode())
            _file_digest(path, digest)
    digest.update(inspect.getsource(inspect.getmodule(encoder)).encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


def save_split(path: Path, split) -> None:
    import numpy as np

    lengths = np.array([len(e["input_ids"]) for e in split.examples], dtype=np.int64)
    ids = np.array([t for e in split.examples for t in e["input_ids"]], dtype=np.int64)
    labels = np.array([t for e in split.examples for t in e["labels"]], dtype=np.int64)
    extra = {k: v for k, v in vars(split).items() if k != "examples"}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + f".{os.getpid()}.partial.npz")
    np.savez(partial, ids=ids, labels=labels, lengths=lengths, extra=np.array(json.dumps(extra)))
    os.replace(partial, path)  # a reader never sees half a file


def load_split(path: Path, split_type):
    import numpy as np

    with np.load(path) as archive:
        ids, labels, lengths = archive["ids"].tolist(), archive["labels"].tolist(), archive["lengths"]
        extra = json.loads(str(archive["extra"]))
    examples, start = [], 0
    for n in lengths.tolist():
        examples.append({"input_ids": ids[start:start + n], "labels": labels[start:start + n]})
        start += n
    return split_type(examples=examples, **extra)


def cached_splits(cache_root: str | Path, data_files: list, model_dir: str | Path, settings: dict,
                  load: Callable[[], tuple], encoder: Callable, split_type: type) -> tuple[object, object, bool]:
    """(train, valid, whether both came from the cache). `load()` -> (train, valid) runs only on a miss."""
    key = cache_key(data_files, model_dir, settings, encoder)
    paths = [Path(cache_root) / CACHE_DIR / f"{name}-{key}.npz" for name in ("train", "valid")]
    if all(p.is_file() for p in paths):
        try:
            train, valid = (load_split(p, split_type) for p in paths)
            return train, valid, True
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable (e.g. disk full when it was written): tokenize again and rewrite it
    train, valid = load()
    save_split(paths[0], train)
    save_split(paths[1], valid)
    return train, valid, False
