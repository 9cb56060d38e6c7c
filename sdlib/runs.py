"""The run-folder layout: where a run's checkpoints live, which of them are complete, what a resume can continue
from, and the lock that keeps one trainer per folder.

    <run>/log.jsonl, run.json, .lock
    <run>/checkpoints/checkpoint-42/ weights, tokenizer, sdlib_config.yaml, metrics.json, README.md,
                                     training_state.json, state/ (optimizer, scheduler, RNG)

A checkpoint is named ``checkpoint-<step>`` as the Hugging Face Trainer names its own; folders named
``step-<6-digit step>`` (sdlib 0.2 and earlier) are read as well, so older runs resume and load unchanged.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sdlib.errors import SdlibError

_STEP_DIR = re.compile(r"^(?:checkpoint|step)-(\d+)$")
PARTIAL_PREFIX = ".tmp-checkpoint-"
STATE_FILE = "training_state.json"
STATE_DIR = "state"
CONFIG_FILE = "sdlib_config.yaml"
LOCK_FILE = ".lock"
STATE_FILES = ("optimizer.bin", "scheduler.bin", "random_states_0.pkl")
"""what ``state/`` must hold for a resume to continue exactly (accelerate skips a missing RNG file silently)"""


@contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold an OS lock on the run folder (``<run>/.lock``, an empty file) while a process trains in it; a second
    process is refused in one line. The kernel releases the lock on any exit, a kill included."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise SdlibError(f"the run folder {run_dir} is a file: choose another --output_dir (or --name)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / LOCK_FILE, "a+")
    except OSError as err:
        raise SdlibError(f"cannot create the run folder {run_dir} ({err.strerror}): choose another --output_dir") \
            from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SdlibError(f"run folder {run_dir} is in use by another process: wait for it to finish (or stop it), "
                         "then rerun; two processes must not train in one folder") from None
    try:
        yield run_dir
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint after ``step`` optimizer steps: ``checkpoint-<step>``."""
    return f"checkpoint-{step}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first (temporary folders of interrupted saves are ignored)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / STATE_FILE).exists() and (child / "config.json").exists():
            found.append((int(match.group(1)), child))
    return sorted(found)


def incomplete_reason(checkpoint: str | os.PathLike) -> str | None:
    """Why a checkpoint cannot be resumed from exactly (a missing or unreadable file), or None when it can."""
    checkpoint = Path(checkpoint)
    missing = [f"{STATE_DIR}/{name}" for name in STATE_FILES if not (checkpoint / STATE_DIR / name).is_file()]
    if not any(checkpoint.glob("*.safetensors")):
        missing.insert(0, "model.safetensors")
    if missing:
        return f"{', '.join(missing)} missing"
    try:
        json.loads((checkpoint / STATE_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"{STATE_FILE} unreadable"
    return None


def resumable_checkpoint(run_dir: str | os.PathLike) -> tuple[Path | None, list[str]]:
    """The newest checkpoint a resume can continue from exactly, and a line for each newer one passed over
    (damaged or incomplete). (None, notes) when the run has none."""
    notes = []
    for _, path in reversed(list_checkpoints(run_dir)):
        reason = incomplete_reason(path)
        if reason is None:
            return path, notes
        notes.append(f"{path.name}: {reason}")
    return None, notes


def remove_partial_saves(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary folders of saves that were killed mid-write (only call with no save running)."""
    root = checkpoints_dir(run_dir)
    partial = sorted(p for pattern in (f"{PARTIAL_PREFIX}*", ".tmp-step-*") for p in root.glob(pattern)) \
        if root.is_dir() else []
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None
