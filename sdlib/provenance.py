"""What produced a result: every JSON/CSV sdlib writes carries this record.

Also the atomic writers: a file is written to a temporary name in the same folder and renamed into
place, so a kill never leaves a half-written result behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache, lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from sdlib.paths import project_root

_PACKAGES = ("sdlib", "torch", "transformers", "accelerate", "datasets", "lm_eval", "numpy")


@cache
def git_commit() -> str:
    """The checkout's commit, with ``+dirty`` when tracked files differ from it; ``unknown`` outside git.

    ``figures/`` is left out of the check: it holds what the code writes (a run that regenerates the committed
    figures would otherwise mark its own later outputs dirty), not what produces it."""
    root = project_root()
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)figures"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            continue
    return versions


def device_name(device: Any = None) -> str:
    """A human description of the device, e.g. ``cuda: NVIDIA H200`` or ``cpu: 2 cores (x86_64)``."""
    import torch

    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    return f"cpu: {os.cpu_count()} cores ({platform.machine()}), {torch.get_num_threads()} torch threads"


@lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    st = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def provenance(*, seed: int | None = None, device: Any = None, data: dict[str, str] | None = None,
               limits: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The record stored with every result: commit, versions, device, seed, data hashes, limits."""
    record = {
        "git_commit": git_commit(),
        "versions": package_versions(),
        "device": device_name(device),
        "seed": seed,
        "data": data or {},
        "limits": limits or {},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    record.update(extra)
    return record


def fsync_tree(path: str | os.PathLike, files: bool = True) -> None:
    """Flush a file, or a folder with everything in it (only the folder's own entry when ``files`` is False), to
    disk."""
    path = Path(path)
    targets = [*path.rglob("*"), path] if path.is_dir() and files else [path]
    for target in targets:
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds (the file and
    then its folder are flushed to disk around the rename, so a power cut leaves the old or the new file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result should read like any other file
    try:
        yield Path(tmp)
        fsync_tree(tmp)
        os.replace(tmp, path)
        fsync_tree(path.parent, files=False)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def json_text(obj: Any) -> str:
    """``obj`` as the indented JSON ``write_json`` writes (tensors and arrays via ``tolist``, paths as strings)."""
    return json.dumps(obj, indent=2, default=_json_default) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (``json_text``), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json_text(obj))
    return Path(path)


RUN_STAMP = ("git_commit", "created", "computed_at", "device")
"""the provenance keys that say when, where and at which commits a file was written and computed, not what it holds
(a figure redrawn from its JSON with the same numbers is the same figure, whichever commit or machine drew it)"""


def same_but_run_stamp(path: str | os.PathLike, obj: Any) -> bool:
    """True when the JSON at ``path`` holds ``obj`` but for its provenance's ``RUN_STAMP`` (rewriting it would
    change nothing a reader sees)."""

    def without_stamp(data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("provenance"), dict):
            return {**data, "provenance": {k: v for k, v in data["provenance"].items() if k not in RUN_STAMP}}
        return data

    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return json.dumps(without_stamp(old), sort_keys=True) == json.dumps(
        without_stamp(json.loads(json_text(obj))), sort_keys=True)


def nan_to_none(obj: Any) -> Any:
    """``obj`` with every float NaN (a missing value) or infinity replaced by None, through dicts, lists and
    tuples: what JSON can hold."""
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
