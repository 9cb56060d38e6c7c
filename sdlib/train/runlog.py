"""The training log (``<run>/log.jsonl``): one JSON object per line, one record type per kind of line, one reader.

Every optimizer step writes a ``StepRecord`` (or a ``SkipRecord`` when a non-finite step is skipped), every
measurement on held-out text an ``EvalRecord``, and a run stopped by ``max_minutes`` a ``StopRecord``. A last line
a kill cut short is skipped by the reader (any other bad line is an error); on resume the lines after the
checkpoint's step are dropped, in a rewrite that replaces the file atomically.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from sdlib.errors import SdlibError
from sdlib.measurement import LastStepStats
from sdlib.provenance import atomic_path, nan_to_none

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
    last_step: LastStepStats | None = None
    """how the last step is made (norms, the massive channel's share, the output's entropy and KL to the teacher,
    zeta2's last term); None in older logs"""
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
    return json.dumps(nan_to_none(asdict(record)))


def from_dict(data: dict[str, Any]) -> Record:
    cls = KINDS[data["kind"]]
    values = {f.name: data[f.name] for f in fields(cls) if f.init and f.name in data}
    if isinstance(values.get("last_step"), dict):
        values["last_step"] = LastStepStats.from_dict(values["last_step"])
    return cls(**values)


def read_log(path: str | Path, up_to_step: int | None = None) -> list[Record]:
    """The records of a log, in order, with ``up_to_step`` only steps <= it. An unterminated last line (a kill
    cut it short) is skipped; any other line that is not a record is an error naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG_FILE
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    lines.pop()  # "" when the file ends with a newline, else the line a kill cut short
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = from_dict(json.loads(line))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise SdlibError(f"{path}, line {number}: not a training-log record; the log is damaged (restore it, or "
                             "delete the run folder and train again)") from None
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
            with atomic_path(self.path) as tmp:  # a kill here leaves the old log whole
                tmp.write_text("".join(to_line(r) + "\n" for r in kept), encoding="utf-8")

    def append(self, record: Record) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(to_line(record) + "\n")
