"""Checkpoint folders that describe themselves, written atomically.

``<run>/checkpoints/checkpoint-42/`` holds the ``save_pretrained`` weights (safetensors; plain transformers
loads them) and tokenizer, ``sdlib_config.yaml`` (the config that made it), ``metrics.json``, a model card
(``README.md``), ``training_state.json`` (step, data position, skipped steps: plain JSON) and ``state/``:
accelerate's optimizer, scheduler and RNG files (``save_accelerator_state``), read back with
``weights_only=True`` and accelerate's short allow-list of numpy types, so a state file cannot run code. The
folder is written under a temporary name and renamed into place, so a kill during a save never damages the
last good checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sdlib.errors import SdlibError, first_line
from sdlib.provenance import fsync_tree, write_json
from sdlib.runs import (
    CONFIG_FILE,
    PARTIAL_PREFIX,
    STATE_DIR,
    STATE_FILE,
    checkpoint_name,
    checkpoints_dir,
    latest_checkpoint,
)
from sdlib.train.config import save_config


def save_checkpoint(run_dir: str | os.PathLike, step: int, model, tokenizer, optimizer, scheduler,
                    training_state: dict[str, Any], config, metrics: dict[str, Any], card: str,
                    state_dict: dict[str, Any] | None = None) -> Path:
    """Write ``checkpoint-<step>`` atomically (main process only). -> its path. A failed write (full disk, file-size
    limit, permissions) is one line naming the folder; the last good checkpoint is kept."""
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{step}-", dir=root))
    try:
        _write(tmp, model, tokenizer, optimizer, scheduler, training_state, config, metrics, card, state_dict, step)
        if final.exists():  # an earlier save of this step: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_tree(root, files=False)
    except Exception as err:
        if not _is_write_failure(err):
            raise
        kept = latest_checkpoint(run_dir)
        raise SdlibError(f"could not write checkpoint {step} under {root} ({first_line(err)}): "
                         f"{f'the last good checkpoint, {kept.name}, is kept' if kept else 'no checkpoint yet'}; "
                         "free disk space (or raise the file-size limit) and rerun with --resume") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _is_write_failure(err: BaseException) -> bool:
    """A full disk, a file-size limit or a permission error, as the writers report it (OSError; safetensors'
    "I/O error"; torch's "unexpected pos" / "file write failed")."""
    text = str(err)
    return isinstance(err, OSError) or any(m in text for m in (
        "I/O error", "unexpected pos", "file write failed", "No space left", "File too large"))


def _write(tmp: Path, model, tokenizer, optimizer, scheduler, training_state, config, metrics, card, state_dict,
           step: int) -> None:
    """Everything a checkpoint holds, into ``tmp``, flushed to disk."""
    from accelerate.checkpointing import save_accelerator_state
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Writing model shards" bar at every save is noise under the training bar
    try:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
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
