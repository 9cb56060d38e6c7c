"""Intervals that hold up: percentile bootstraps over the units a number is averaged over (measurement windows,
LAMBADA passages), paired whenever two models are compared on the same units.

A paired bootstrap resamples the units once per replicate and evaluates both models on the same draw, so the
interval of a difference or a ratio reflects how the two models differ on the same text, not how much each
varies on its own (overlapping separate intervals say little about a difference).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from sdlib.errors import SdlibError
from sdlib.metrics import monotonicity_batched


class Interval(NamedTuple):
    """A number with its 95% bootstrap interval: (value, low, high); a tuple, written to JSON as a list."""

    value: float
    lo: float
    hi: float

    @classmethod
    def of(cls, data: Any) -> Interval:
        """From JSON: a list ``[value, lo, hi]`` (``None`` for a value JSON cannot hold) or ``{value, lo, hi}``."""
        values = (data["value"], data["lo"], data["hi"]) if isinstance(data, dict) else tuple(data)
        return cls(*(float("nan") if v is None else float(v) for v in values))


def bootstrap_windows(per_unit: Sequence[Sequence | torch.Tensor], statistic: Callable[[list[torch.Tensor]], torch.Tensor],
                      n_boot: int = 2000, level: float = 0.95, seed: int = 0, weights: torch.Tensor | None = None
                      ) -> Interval:
    """Paired percentile bootstrap of ``statistic`` over units shared by every array of ``per_unit``.

    per_unit: arrays [n_units, ...] (the same units in the same order); statistic: a function of the list of
    unit-averaged arrays [n_boot, ...] (one per input) -> [n_boot]. Each replicate draws n_units units with
    replacement (the same draw for every array) and averages over them, weighted by ``weights`` [n_units] when
    given (a document's windows). -> (point estimate on all units, low, high).
    """
    arrays = [torch.as_tensor(a, dtype=torch.float64) for a in per_unit]
    n = arrays[0].shape[0]
    if n < 2 or any(a.shape[0] != n for a in arrays):
        raise SdlibError(f"a paired bootstrap needs at least two units, the same number in every array; got "
                         f"{[tuple(a.shape) for a in arrays]}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=g)
    if weights is None:
        replicates = statistic([a[idx].mean(dim=1) for a in arrays])
        point = float(statistic([a.mean(dim=0, keepdim=True) for a in arrays])[0])
    else:
        w = torch.as_tensor(weights, dtype=torch.float64)

        def mean(a, draw):
            wd = w[draw].view(*draw.shape, *[1] * (a.dim() - 1))
            return (a[draw] * wd).sum(dim=-a.dim()) / wd.sum(dim=-a.dim())

        replicates = statistic([mean(a, idx) for a in arrays])
        point = float(statistic([mean(a, torch.arange(n)[None]) for a in arrays])[0])
    lo, hi = torch.quantile(replicates.double(), torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return Interval(point, float(lo), float(hi))


def paired_S_difference(per_window_a, per_window_b, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                        documents: Sequence[int] | None = None) -> Interval:
    """S(b) - S(a) with its paired interval: two models' per-window curves [n_windows, L + 1] on the same windows;
    with ``documents`` (the document of each window) the replicates resample documents (``by_document``)."""
    a, b, weights = by_document([per_window_a, per_window_b], documents)
    return bootstrap_windows([a, b], lambda c: monotonicity_batched(c[1]) - monotonicity_batched(c[0]), n_boot, level,
                             seed, weights)


def by_document(per_window: Sequence, documents: Sequence[int] | None):
    """Per-window arrays [n_windows, ...] as per-document means [n_docs, ...] with the windows per document as
    weights: -> (*arrays, weights or None). Without ``documents``, when every window is its own document, or when
    all come from one, the arrays come back as they are (units = windows)."""
    arrays = [torch.as_tensor(a, dtype=torch.float64) for a in per_window]
    if documents is None or len(set(documents)) in (1, len(documents)):  # one document: its windows are the units
        return (*arrays, None)
    index = torch.as_tensor(list(documents))
    docs, inverse = torch.unique(index, return_inverse=True)
    counts = torch.bincount(inverse, minlength=len(docs)).double()
    means = []
    for a in arrays:
        sums = torch.zeros((len(docs), *a.shape[1:]), dtype=torch.float64).index_add_(0, inverse, a)
        means.append(sums / counts.view(-1, *[1] * (a.dim() - 1)))
    return (*means, counts)


def accuracy_interval(correct, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """Accuracy of 0/1 outcomes [n] with its percentile bootstrap interval over the items."""
    return bootstrap_windows([correct], lambda c: c[0], n_boot, level, seed)


def paired_ratio(correct_a, correct_b, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """acc(b) / acc(a) with its paired interval: two models' 0/1 outcomes [n] on the same items (b's accuracy
    as a fraction of a's, e.g. self-distilled over pretrained)."""
    def ratio(c):
        return torch.where(c[0] > 0, c[1] / c[0].clamp_min(1e-300), torch.full_like(c[0], float("nan")))

    return bootstrap_windows([correct_a, correct_b], ratio, n_boot, level, seed)


def bootstrap_monotonicity(per_window_D: Sequence[Sequence[float]] | torch.Tensor, n_boot: int = 2000,
                           level: float = 0.95, seed: int = 0, documents: Sequence[int] | None = None
                           ) -> tuple[float, float]:
    """Percentile bootstrap interval of S over evaluation windows, or over their documents.

    per_window_D: [n_windows, L + 1] mean movement of each window (``Measurement.per_window_D``); documents: the
    document each window comes from (``Measurement.window_documents``). Each replicate resamples documents (or
    windows) with replacement, averages their curves (weighted by windows) and computes S. -> (low, high).
    """
    curves, weights = by_document([per_window_D], documents)
    return bootstrap_windows([curves], lambda c: monotonicity_batched(c[0]), n_boot, level, seed, weights)[1:]
