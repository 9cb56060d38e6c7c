"""The model under study: what it is called, where it comes from, where its results live, and its two cached
records (the movement measurement and the per-layer evaluation).

Every path that measures or evaluates a whole model goes through a ``Subject``: ``sdlib measure`` and
``sdlib eval``, the registered studies (``Study.run``), the profiles and the grid (one ``Subject`` per model of a
pair) and the GPU study. So a measurement made by one of them is the cached measurement of all the others when the
weights, the settings and the results folder are the same. Models are loaded once per process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from torch import nn

from sdlib.cache import cached, model_fingerprint
from sdlib.evaluation.layers import EvalSettings, LayerScores, evaluate_cached
from sdlib.evaluation.movement import MeasureRecord, MeasureSettings, measure_model
from sdlib.models import default_device, load
from sdlib.paths import results_dir, slug
from sdlib.types import Role


@dataclass
class Subject:
    """One model under study (a record: what it is, and where its cached measurement and evaluation live)."""

    source: str
    """what is loaded: a built-in name, a hub id, a local folder, or a run folder (its latest checkpoint)"""
    name: str = ""
    """the model's name in records (default: ``source``); for a trained run, its base model"""
    label: str = ""
    """its name in tables and legends (default: ``name``)"""
    role: Role | None = None
    """``pretrained`` or ``self_distilled`` in a comparison; None on its own"""
    options: dict[str, Any] = field(default_factory=dict)
    """how it is loaded (``sdlib.models.load`` keywords: dtype, revision, tokenizer, model options)"""
    results: Path | None = None
    """the folder of its records (default: <build>/results/<source>); each kind in a sub-folder of its own"""
    device: str | None = None
    progress: bool = True
    loaded: tuple[nn.Module, Any] | None = field(default=None, repr=False, compare=False)
    """the model and tokenizer, when the caller has them already (else loaded on first use)"""

    def __post_init__(self) -> None:
        self.source = str(self.source)
        self.name = self.name or self.source
        self.label = self.label or self.name

    def load(self) -> tuple[nn.Module, Any]:
        """(model, tokenizer), loaded once per process for the same source, options and device."""
        if self.loaded is None:
            self.loaded = _load(self.source, tuple(sorted(self.options.items())), default_device(self.device))
        return self.loaded

    @property
    def model(self) -> nn.Module:
        return self.load()[0]

    @property
    def tokenizer(self) -> Any:
        return self.load()[1]

    def placed_on(self) -> str:
        """The device its weights are on (loads it)."""
        return str(next(self.model.parameters()).device)

    def fingerprint(self) -> str:
        """sha256 of its weights and tokenizer (what every cache key of its records holds)."""
        return model_fingerprint(*self.load())

    def folder(self, kind: str) -> Path:
        """Where its records of ``kind`` (``measure``, ``eval`` or a study's name) live."""
        return (Path(self.results) if self.results else results_dir() / slug(self.source)) / kind

    def named(self, record: Any) -> Any:
        """``record`` with this subject's ``label`` and ``role``, where it has those fields: what a model is called
        is not part of what was computed, so a record cached under another name reads as this one's."""
        names = {"label": self.label, "role": None if self.role is None else str(self.role)}
        return replace(record, **{k: v for k, v in names.items() if k in getattr(record, "__dataclass_fields__", {})})

    def measurement(self, settings: MeasureSettings = MeasureSettings(), use_cache: bool = True) -> MeasureRecord:
        """The D curve and S in both conventions on ``settings``' windows (a study's settings that extend
        ``MeasureSettings`` are read as the measurement they name), cached by the weights and the settings (the batch
        size and dtype change no number: the dtype is in the weights' fingerprint)."""
        settings = MeasureSettings(**{f.name: getattr(settings, f.name) for f in fields(MeasureSettings)})

        def compute() -> MeasureRecord:
            return measure_model(self.model, self.tokenizer, settings, name=self.name, progress=self.progress)

        key = {"fingerprint": self.fingerprint(),
               **{k: v for k, v in asdict(settings).items() if k not in ("batch_size", "dtype")}}
        record = cached(MeasureRecord, self.folder("measure"), "movement", key, compute, use_cache)
        return self.named(replace(record, model=self.name, source=self.source))

    def layer_scores(self, tasks: Sequence[str], settings: EvalSettings, *, batch_size: int = 8,
                     use_cache: bool = True, out_dir: str | Path | None = None) -> tuple[LayerScores, Path]:
        """Every layer's lens scored on ``tasks`` as lm-eval scores them, each task cached by the weights and the
        settings in ``out_dir`` (default: its ``eval`` folder) -> (the scores, the path of results.csv)."""
        return evaluate_cached(self.source, list(tasks), settings, device=self.placed_on(), batch_size=batch_size,
                               out_dir=out_dir or self.folder("eval"), use_cache=use_cache, progress=self.progress,
                               loaded=self.load())


@lru_cache(maxsize=4)
def _load(source: str, options: tuple, device: str):
    return load(source, device=device, **dict(options))
