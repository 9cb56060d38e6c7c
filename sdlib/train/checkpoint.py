"""Checkpoint folders that describe themselves, written atomically.

``<run>/checkpoints/step-000042/`` holds the ``save_pretrained`` weights (safetensors; plain transformers
loads them) and tokenizer, ``sdlib_config.yaml`` (the config that made it), ``metrics.json``, a model card
(``README.md``), ``training_state.json`` (step, data position, skipped steps: plain JSON) and ``state/``:
accelerate's optimizer, scheduler and RNG files (``save_accelerator_state``), read back with
``weights_only=True`` and accelerate's short allow-list of numpy types, so a state file cannot run code. The
folder is written under a temporary name and renamed into place, so a kill during a save never damages the
last good checkpoint.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sdlib.errors import SdlibError
from sdlib.provenance import fsync_tree

_STEP_DIR = re.compile(r"^step-(\d+)$")
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
    partial = sorted(root.glob(".tmp-step-*")) if root.is_dir() else []
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(run_dir: str | os.PathLike, step: int, model, tokenizer, optimizer, scheduler,
                    training_state: dict[str, Any], config, metrics: dict[str, Any], card: str,
                    state_dict: dict[str, Any] | None = None) -> Path:
    """Write ``step-<step>`` atomically (main process only). -> its path."""
    from accelerate.checkpointing import save_accelerator_state

    from sdlib.provenance import write_json
    from sdlib.train.config import save_config

    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:06d}-", dir=root))
    try:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        save_config(config, tmp / CONFIG_FILE)
        write_json(tmp / "metrics.json", metrics)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        (tmp / STATE_DIR).mkdir()
        # every process starts from the same seed, so the main process's RNG stands for all (index 0)
        save_accelerator_state(str(tmp / STATE_DIR), [], [optimizer], [scheduler], [], 0, step, None,
                               safe_serialization=True)
        write_json(tmp / STATE_FILE, training_state)
        fsync_tree(tmp)  # every byte on disk before the rename makes the checkpoint count
        if final.exists():  # an earlier save of this step: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_tree(root, files=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_training_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's ``training_state.json`` (step, data position, skipped steps, config)."""
    path = Path(checkpoint) / STATE_FILE
    if not path.exists():
        if (Path(checkpoint) / "training_state.pt").exists():
            raise SdlibError(f"checkpoint {checkpoint} was written by an older sdlib (training_state.pt): it loads as a "
                             "model, but its run cannot be resumed; start a new run from it")
        raise SdlibError(f"checkpoint {checkpoint} has no {STATE_FILE}: it cannot be resumed from")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SdlibError(f"{path} is not valid JSON ({err.msg}): the checkpoint is damaged; resume from an earlier "
                         "one") from None


def restore_training_state(checkpoint: str | os.PathLike, optimizer, scheduler) -> None:
    """Restore the optimizer, the scheduler and the RNG from the checkpoint's ``state/``. Each file is read with
    ``weights_only=True`` (accelerate's allow-list of numpy types); one holding anything else is refused."""
    from accelerate.checkpointing import load_accelerator_state
    from accelerate.utils import load as safe_load

    folder = Path(checkpoint) / STATE_DIR
    for file in sorted(folder.glob("*")):  # accelerate skips an unreadable RNG file silently: check each first
        try:
            safe_load(file, map_location="cpu")
        except Exception:  # noqa: BLE001 (torch raises several types for a refused or damaged file)
            raise SdlibError(f"checkpoint {checkpoint}: {STATE_DIR}/{file.name} holds something other than tensors "
                             "and plain values (or is damaged); loading it could run code, so it is refused: resume "
                             "only from checkpoints you made, or start a new run from its weights") from None
    load_accelerator_state(str(folder), [], [optimizer], [scheduler], [], 0, None, map_location="cpu")
