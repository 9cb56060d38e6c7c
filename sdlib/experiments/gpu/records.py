"""What the GPU study returns: each model's scores, the paired data behind its intervals, each stage's result
and the study as a whole (``study.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdlib.cache import Record
from sdlib.errors import SdlibError
from sdlib.evaluation.layers import LayerEvaluation
from sdlib.experiments.throughput import StepTiming
from sdlib.stats import Interval, paired_ratio, paired_S_difference
from sdlib.types import LAST_STATES

STAGES = ("throughput", "baseline", "recipe", "cosine")
TRAINING_STAGES = ("recipe", "cosine")
PAPER_TOKENS = 10_000_000


@dataclass
class ModelScores(Record):
    """One model measured and evaluated: S and D in both conventions (and of the per-token median curve), and its
    per-layer evaluation (LAMBADA accuracy with its 95% interval, WikiText word perplexity)."""

    S: dict[str, float]
    S_median_curve: dict[str, float]
    D: dict[str, list[float]]
    D_median: dict[str, list[float]]
    last_layer_ratio: dict[str, float]
    tokens: int
    evaluation: LayerEvaluation
    model: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelScores:
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**{**values, "evaluation": LayerEvaluation.from_dict(data["evaluation"])})


@dataclass
class PairedData(Record):
    """What paired statistics need (kept in the records, out of the summary): the per-window D curves and the
    per-passage LAMBADA outcomes [n_docs, L + 1]."""

    per_window_D: dict[str, list[list[float]]]
    greedy: list[list[bool]]
    window_documents: list[int] = field(default_factory=list)


@dataclass
class StageResult(Record):
    """One stage: whether it finished (or why not) and its numbers. ``throughput`` fills ``timings``, ``baseline``
    ``scores``, a training stage the run's fields, ``before`` / ``after`` and the ``paired`` statistics."""

    done: bool
    seconds: float = 0.0
    reason: str | None = None
    error: str | None = None
    model: str | None = None
    timings: list[StepTiming] = field(default_factory=list)
    scores: ModelScores | None = None
    config: dict[str, Any] | None = None
    """the training config as run (its batch sized to the time)"""
    steps: int = 0
    planned_steps: int = 0
    sequences_per_step: int = 0
    tokens: int = 0
    fraction_of_paper_tokens: float = 0.0
    epochs_of_data: float | None = None
    zeta1: str = ""
    train_seconds: float = 0.0
    tokens_per_s: list[float] = field(default_factory=list)
    S_over_training: list[dict[str, float]] = field(default_factory=list)
    loss: list[dict[str, float]] = field(default_factory=list)
    stopped: str | None = None
    run_dir: str = ""
    before: ModelScores | None = None
    after: ModelScores | None = None
    paired: dict[str, Interval] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageResult:
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        values["timings"] = [StepTiming.from_dict(t) for t in data.get("timings") or []]
        for name in ("scores", "before", "after"):
            values[name] = ModelScores.from_dict(data[name]) if data.get(name) else None
        values["paired"] = {k: Interval.of(v) for k, v in (data.get("paired") or {}).items()}
        return cls(**values)


@dataclass
class GpuStudy(Record):
    """The study's record (``study.json``): the machine and its packages, and each stage's result."""

    environment: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, StageResult] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GpuStudy:
        return cls(dict(data.get("environment") or {}),
                   {k: StageResult.from_dict(v) for k, v in (data.get("stages") or {}).items()})

    def finished(self, name: str) -> bool:
        return name in self.stages and self.stages[name].done


def paired_statistics(before: PairedData, after: PairedData) -> dict[str, Interval]:
    """The change of S per convention (paired over windows) and the ratio of final-layer LAMBADA accuracy (paired
    over passages), each with its 95% interval."""
    stats = {f"S_{c}_difference": paired_S_difference(before.per_window_D[c], after.per_window_D[c],
                                                      documents=before.window_documents or None)
             for c in LAST_STATES}
    b, a = np.asarray(before.greedy, dtype=float), np.asarray(after.greedy, dtype=float)
    stats["lambada_final_ratio"] = paired_ratio(b[:, -1], a[:, -1])
    return stats


def load_study(path: str | Path) -> GpuStudy:
    """A study record (``study.json``); one clear error when there is none yet."""

    path = Path(path)
    if not path.is_file():
        raise SdlibError(f"no GPU study results at {path} yet: run `sdlib gpu-study run` on a GPU machine and "
                         "`sdlib gpu-study import` the folder it wrote")
    return GpuStudy.from_dict(json.loads(path.read_text()))
