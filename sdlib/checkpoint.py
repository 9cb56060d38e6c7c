"""Checkpoint folders that describe themselves, written atomically.

``<run>/checkpoints/step-000042/`` holds the ``save_pretrained`` weights (safetensors; plain transformers
loads them) and tokenizer, ``sdlib_config.yaml`` (the config that made it), ``training_state.pt``
(optimizer, scheduler, RNG, step, data position) and ``metrics.json``. It is written under a temporary
name and renamed into place, so a kill during a save never damages the last good checkpoint.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdlib.errors import SdlibError

_STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "training_state.pt"
CONFIG_FILE = "sdlib_config.yaml"


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


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str | os.PathLike, step: int, model, tokenizer, training_state: dict[str, Any],
                    config, metrics: dict[str, Any]) -> Path:
    """Write ``step-<step>`` atomically; returns its path."""
    from sdlib.config import save_config
    from sdlib.provenance import write_json

    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:06d}-", dir=root))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        save_config(config, tmp / CONFIG_FILE)
        write_json(tmp / "metrics.json", metrics)
        torch.save(training_state, tmp / STATE_FILE)
        if final.exists():  # an earlier save of this step: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_training_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    path = Path(checkpoint) / STATE_FILE
    if not path.exists():
        raise SdlibError(f"checkpoint {checkpoint} has no {STATE_FILE}: it cannot be resumed from")
    return torch.load(path, map_location="cpu", weights_only=False)
