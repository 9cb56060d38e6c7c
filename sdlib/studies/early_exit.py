"""Early exit and layer deletion measured (the paper's stated future work): quality and greedy-decoding speed of
one model after exiting at every layer and after removing n layers by each rule of ``sdlib.pruning``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sdlib.cache import Record
from sdlib.evaluation.layers import EvalSettings, evaluate_layers
from sdlib.evaluation.movement import MeasureSettings
from sdlib.evaluation.subject import Subject
from sdlib.parts import decoder_parts
from sdlib.provenance import provenance
from sdlib.pruning import STRATEGIES, generation_speed, keep_layers, prune
from sdlib.stats import Interval, accuracy_interval
from sdlib.studies.base import Study


@dataclass
class PrunedModel(Record):
    """One cut: early exit after layer ``kept - 1`` or ``layers_removed`` layers deleted by ``method``."""

    method: str
    """``early_exit``, or a strategy of ``sdlib.pruning`` (``movement``, ``last``)"""
    layers_removed: int
    kept: int
    removed: list[int]
    lambada_acc: float
    wikitext_word_ppl: float
    tokens_per_s: float | None
    """measured greedy decoding speed with ``kept`` layers (None where not timed)"""
    lambada_lo: float | None = None
    lambada_hi: float | None = None
    """the accuracy's 95% bootstrap interval over the passages (None in records made before it was kept)"""

    def lambada(self) -> Interval:
        return Interval.of((self.lambada_acc, self.lambada_lo, self.lambada_hi))


@dataclass
class PruningStudy(Record):
    """Quality and speed of one model after every cut."""

    label: str
    role: str
    rows: list[PrunedModel]
    full_tokens_per_s: float
    settings: dict[str, Any]
    movement_D: list[float]
    provenance: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    """the base model's name (the same for a model and the runs trained from it: what colours a figure by)"""

    def full(self) -> PrunedModel:
        return next(r for r in self.rows if r.method == "early_exit" and r.layers_removed == 0)

    def of(self, method: str) -> list[PrunedModel]:
        """The cuts of ``method`` by layers removed (the other methods start from the full model)."""
        rows = sorted((r for r in self.rows if r.method == method), key=lambda r: r.layers_removed)
        return rows if method == "early_exit" else [self.full(), *rows]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningStudy:
        return cls(**{**{k: data[k] for k in cls.__dataclass_fields__ if k in data},
                      "rows": [PrunedModel.from_dict(r) for r in data["rows"]]})


@dataclass(frozen=True)
class EarlyExitSettings(MeasureSettings):
    """The measurement whose D the ``movement`` rule reads (the standard one by default), the documents that
    score every cut, and the cuts."""

    lambada_openai: int = 100
    """LAMBADA passages scored per cut"""
    wikitext: int = 1
    """WikiText pages scored per cut"""
    max_length: int = 512
    removals: tuple[int, ...] = (1, 2, 4)
    """how many layers each rule removes (each below the model's layer count)"""
    new_tokens: int = 32
    """tokens decoded greedily to time each cut"""


def early_exit(subject: Subject, settings: EarlyExitSettings) -> PruningStudy:
    """Quality and greedy-decoding speed after early exit at every layer and after removing n layers by each
    strategy of ``sdlib.pruning``."""

    D = subject.measurement(settings).D["normed"]
    tasks = ["lambada_openai", "wikitext"]
    scoring = EvalSettings(subset="pruning", limit={t: getattr(settings, t) for t in tasks},
                           max_length=settings.max_length)

    def cut(method, n_removed, kept, removed, results, column, speed) -> PrunedModel:
        lambada = results["lambada_openai"]
        _, lo, hi = accuracy_interval(lambada.greedy[:, column].astype(float))
        return PrunedModel(method, n_removed, kept, removed, float(lambada.metrics["acc"][column]),
                           float(results["wikitext"].metrics["word_perplexity"][column]), speed, lo, hi)

    model, tok = subject.load()
    n_layers = decoder_parts(model).num_layers
    removals = [n for n in settings.removals if 0 < n < n_layers]
    speeds = {n_layers: generation_speed(model, tok, new_tokens=settings.new_tokens)}
    for n in removals:
        speeds[n_layers - n] = generation_speed(keep_layers(model, range(n_layers - n)), tok,
                                                new_tokens=settings.new_tokens)
    per_layer = evaluate_layers(model, tok, tasks, scoring, progress=False)  # early exit = the lens
    rows = [cut("early_exit", n_layers - 1 - k, k + 1, [], per_layer, k, speeds.get(k + 1)) for k in range(n_layers)]
    for strategy in STRATEGIES:
        for n in removals:
            pruned, removed = prune(model, D, n, strategy)
            scored = evaluate_layers(pruned, tok, tasks, scoring, progress=False, layers=[-1])
            rows.append(cut(strategy, n, n_layers - n, removed, scored, 0, speeds[n_layers - n]))
    return PruningStudy(label=subject.label, role=str(subject.role), rows=rows, full_tokens_per_s=speeds[n_layers],
                        settings=asdict(settings), movement_D=D,
                        provenance=provenance(device=subject.placed_on(), limits=asdict(settings)), model=subject.name)


def layers_removable(study: PruningStudy, method: str, fraction: float = 0.95) -> tuple[int, float | None]:
    """Most layers ``method`` removes while LAMBADA accuracy stays >= ``fraction`` of the full model's, and the
    measured decoding speed-up at that point: -> (n, speed-up)."""
    full = study.full()
    ok = [r for r in study.rows if r.method == method and r.lambada_acc >= fraction * full.lambada_acc]
    if not ok:
        return 0, 1.0
    best = max(ok, key=lambda r: r.layers_removed)
    return best.layers_removed, (best.tokens_per_s / full.tokens_per_s) if best.tokens_per_s else None


def summary(studies: list[PruningStudy], fraction: float = 0.95) -> dict[str, dict[str, dict[str, Any]]]:
    """Per model and method: how many layers go while LAMBADA stays >= ``fraction`` of the full model's, and the
    measured decoding speed-up there."""
    return {s.label: {m: dict(zip(("layers_removable_at_95pct", "speedup"), layers_removable(s, m, fraction)))
                      for m in ("early_exit", "movement", "last")} for s in studies}


def describe(study: PruningStudy) -> str:
    """Per cut: the method, layers removed, LAMBADA accuracy, WikiText word perplexity and decoding speed."""
    lines = [f"{study.label}: {'method':12s} {'removed':>7s} {'LAMBADA':>8s} {'WikiText ppl':>13s} {'tokens/s':>9s}"]
    for r in study.rows:
        speed = f"{r.tokens_per_s:9.1f}" if r.tokens_per_s else f"{'':9s}"
        lines.append(f"{'':{len(study.label) + 1}s} {r.method:12s} {r.layers_removed:7d} {r.lambada_acc:8.3f} "
                     f"{r.wikitext_word_ppl:13.4g} {speed}")
    return "\n".join(lines)


STUDY = Study("early-exit", "quality and decoding speed after early exit at every layer and after removing layers "
              "(by lowest D, or the last ones)", EarlyExitSettings, PruningStudy, early_exit, describe)
