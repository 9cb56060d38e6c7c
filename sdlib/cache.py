"""Results cached by content: the key holds the model's fingerprint (its weights and tokenizer) and every
setting that changes the numbers, so a retrained checkpoint never reuses a stale result. Files are
written atomically: an interrupted computation leaves no partial cache file. An entry is used only when it
parses and its stored key equals the key asked for; anything else is recomputed, so the cache is always
safe to delete or damage."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from sdlib.provenance import write_json

R = TypeVar("R")


def model_fingerprint(model: nn.Module, tokenizer) -> str:
    """sha256 of every parameter's bytes (in state-dict order) and of the tokenizer.

    Remembered on the model until any tensor changes in place (torch's version counters), so repeated calls
    on an unchanged model cost nothing.
    """
    # a tensor replaced (``p.data = ...``, ``model.to(bfloat16)``) has a new storage: the memo key holds each
    # tensor's storage address, dtype and version counter, so an in-place edit or a swap both miss it
    versions = tuple((t.data_ptr(), t.dtype, t._version) for t in model.state_dict().values())
    memo = model.__dict__.get("_sdlib_fingerprint")
    if memo is not None and memo[0] == (versions, id(tokenizer)):
        return memo[1]
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))).encode())
    model.__dict__["_sdlib_fingerprint"] = ((versions, id(tokenizer)), h.hexdigest())
    return h.hexdigest()


def cache_path(folder: str | Path, name: str, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return Path(folder) / "cache" / f"{name}-{digest}.json"


def cached(cls: type[R], folder: str | Path, name: str, key: dict[str, Any], compute: Callable[[], R],
           use_cache: bool = True) -> R:
    """A typed record (``cls`` with ``to_dict``/``from_dict``) for ``key`` under ``folder/cache``: read and rebuilt
    when present, else computed and written; either way the same object comes back."""
    return cls.from_dict(cached_record(folder, name, key, lambda: compute().to_dict(), use_cache))


def cached_record(folder: str | Path, name: str, key: dict[str, Any], compute: Callable[[], dict[str, Any]],
                  use_cache: bool = True) -> dict[str, Any]:
    """The JSON record for ``key`` under ``folder/cache``: read when present, else computed and written."""

    path = cache_path(folder, name, key)
    if use_cache and path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            stored = None  # damaged (or not ours): recomputed below
        if isinstance(stored, dict) and stored.get("cache_key") == json.loads(json.dumps(key, default=str)):
            return stored
    write_json(path, {**compute(), "cache_key": key})
    return json.loads(path.read_text())  # the same plain JSON a later cache hit returns


class Record:
    """A dataclass that round-trips through JSON: ``to_dict`` (plain values) and ``from_dict`` (extra keys, such
    as a cache key, ignored). Records with nested records override ``from_dict``."""

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        from dataclasses import fields

        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})  # type: ignore[arg-type]
