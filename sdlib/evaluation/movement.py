"""Measure a model: the D curve and S in both last-state conventions, on a fixed default text.

Default (one setting for every S sdlib reports, so numbers compare across models and machines): the raw
WikiText-2 test text, tokenized once as one string with the tokenizer's defaults, 64 windows of 512 tokens spread
evenly over the whole split (``sdlib.data.spread_windows``); intervals resample its articles; fp32 on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from sdlib.data import TextWindows
from sdlib.errors import SdlibError
from sdlib.measurement import BatchObserver, Measurement, measure_windows
from sdlib.models import max_sequence_length
from sdlib.paths import slug
from sdlib.provenance import provenance


def measure_text(model: nn.Module, tokenizer, where: TextWindows = TextWindows(), batch_size: int = 8,
                 progress: bool = False, observers: Sequence[BatchObserver] = ()) -> Measurement:
    """``measure_windows`` on the windows ``where`` names (a text, how many windows of how many tokens, where)."""

    positions = max_sequence_length(model)
    if where.window_len > positions:
        raise SdlibError(f"a window of {where.window_len} tokens is longer than the model's {positions} positions: "
                         f"use --window-len {positions} or less")
    windows, documents, data_hashes = where.sample(tokenizer)
    result = measure_windows(model, windows, batch_size=batch_size, progress=progress, observers=observers)
    result.window_documents = documents
    result.info.update(text=where.text, data=data_hashes, setting=where.describe(),
                       documents=len(set(documents)))
    return result


@dataclass(frozen=True)
class MeasureSettings(TextWindows):
    """What changes a measurement's numbers (part of its cache key and its provenance): the text windows, and
    these."""

    batch_size: int = 8
    dtype: str = "float32"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise SdlibError("the batch size must be >= 1")

    def file_name(self) -> str:
        """``wikitext-test-64x512-spread-float32.json``: one file per setting, so measuring again with other windows
        keeps the first measurement (the batch size changes no number and is left out)."""
        return slug(f"{Path(self.text).name}-{self.windows}x{self.window_len}-{self.placement}-{self.dtype}") + ".json"


@dataclass
class MeasureRecord(Measurement):
    """A ``Measurement`` of one model with what it is (``model``, ``source``, ``label``, ``role``) and how it was
    made (``provenance``): what ``sdlib measure`` writes and the movement figures draw."""

    model: str = ""
    source: str = ""
    label: str = ""
    role: str | None = None
    """``pretrained`` or ``self_distilled`` in a comparison (``sdlib.types.Role``), None on its own"""
    provenance: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The numbers a figure shows (no per-window or per-token arrays)."""
        return {"label": self.label, "role": self.role, "S": self.S, "S_median_curve": self.S_median, "D": self.D,
                "last_layer_ratio": self.last_layer_ratio, "n_tokens": self.n_tokens}


def measure_model(model: nn.Module, tokenizer, settings: MeasureSettings = MeasureSettings(), *, name: str,
                  source: str | None = None, label: str | None = None, role=None, progress: bool = False,
                  observers: Sequence[BatchObserver] = ()) -> MeasureRecord:
    """Measure a loaded model on ``settings.text``; -> its record with provenance (the one place it is built)."""

    m = measure_text(model, tokenizer, settings, settings.batch_size,
                     progress=progress, observers=observers)
    return MeasureRecord(**{k: getattr(m, k) for k in Measurement.__dataclass_fields__}, model=name,
                         source=source or name, label=label or name, role=None if role is None else str(role),
                         provenance=provenance(device=next(model.parameters()).device, data=m.info.get("data"),
                                               limits=asdict(settings)))


def format_measurement(m: Measurement) -> str:
    """A plain-text table of D per layer in both conventions, then S."""
    lines = [f"{'layer':>5}  {'D normed':>10}  {'D pre_norm':>10}"]
    n = len(m.D["normed"])
    for l in range(n):
        lines.append(f"{l:>5}  {m.D['normed'][l]:>10.5f}  {m.D['pre_norm'][l]:>10.5f}")
    intervals = {c: m.S_interval(c) if m.n_windows > 1 else (float("nan"),) * 2 for c in ("normed", "pre_norm")}
    lines.append("   ".join(f"S {c} = {m.S[c]:.4f} [{lo:.4f}, {hi:.4f}]" for c, (lo, hi) in intervals.items())
                 + f"   ({m.n_tokens} tokens, {m.n_windows} windows of {m.window_len})")
    unit = f"its {m.info['documents']} articles" if m.info.get("documents", 0) > 1 else "the windows"
    lines.append(f"95% bootstrap intervals over {unit}; measured on {m.info.get('setting', 'the given windows')}")
    if m.S_median:
        lines.append(f"S of the per-token median curve: normed {m.S_median['normed']:.4f}, "
                     f"pre_norm {m.S_median['pre_norm']:.4f}")
    return "\n".join(lines)
