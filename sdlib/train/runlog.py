"""The training log (``<run>/log.jsonl``): one JSON object per line, one record type per kind of line, one reader.

Every optimizer step writes a ``StepRecord`` (or a ``SkipRecord`` when a non-finite step is skipped), every
measurement on held-out text an ``EvalRecord``, and a run stopped by ``max_minutes`` a ``StopRecord``. Lines a
kill cut short are skipped by the reader; on resume the lines after the checkpoint's step are dropped.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

LOG_FILE = "log.jsonl"


@dataclass
class StepRecord:
    step: int
    tokens: int
    epochs: float | None
    """passes over the training data so far (None while a stream's length is unknown)"""
    loss: float
    zeta1: float
    zeta2: float
    kl_per_layer: list[float | None]
    """mean KL of layers 0..L (None: a layer left out of a sampled zeta1)"""
    zeta2_per_layer: list[float]
    """the zeta2 form's per-layer terms, l = 1..L"""
    lr: float
    grad_norm: float
    skipped_steps: int
    tokens_per_s: float
    seconds: float
    kind: str = field(default="step", init=False)


@dataclass
class EvalRecord:
    step: int
    D: dict[str, list[float]]
    S: dict[str, float]
    tokens: int
    """held-out tokens measured"""
    kind: str = field(default="eval", init=False)


@dataclass
class SkipRecord:
    step: int
    reason: str
    skipped_steps: int
    tokens: int
    kind: str = field(default="skip", init=False)


@dataclass
class StopRecord:
    step: int
    reason: str
    kind: str = field(default="stop", init=False)


Record = StepRecord | EvalRecord | SkipRecord | StopRecord
KINDS: dict[str, type] = {"step": StepRecord, "eval": EvalRecord, "skip": SkipRecord, "stop": StopRecord}


def to_line(record: Record) -> str:
    values = asdict(record)
    return json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()})


def from_dict(data: dict[str, Any]) -> Record:
    cls = KINDS[data["kind"]]
    return cls(**{f.name: data[f.name] for f in fields(cls) if f.init})


def read_log(path: str | Path, up_to_step: int | None = None) -> list[Record]:
    """The records of a log, in order; lines cut by a kill are skipped; with ``up_to_step`` only steps <= it."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = from_dict(json.loads(line))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut by a kill (or not one of ours)
        if up_to_step is None or record.step <= up_to_step:
            records.append(record)
    return records


def steps(records: list[Record]) -> list[StepRecord]:
    return [r for r in records if isinstance(r, StepRecord)]


def evals(records: list[Record]) -> list[EvalRecord]:
    return [r for r in records if isinstance(r, EvalRecord)]


class RunLog:
    """Appends records to a run's log (on the main process only; others pass ``enabled=False``)."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path, self.enabled = Path(run_dir) / LOG_FILE, enabled

    def truncate(self, up_to_step: int) -> None:
        """Keep only the records of steps <= ``up_to_step`` (a resumed run rewrites what came after)."""
        if self.enabled:
            kept = read_log(self.path, up_to_step)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("".join(to_line(r) + "\n" for r in kept))

    def append(self, record: Record) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(to_line(record) + "\n")
