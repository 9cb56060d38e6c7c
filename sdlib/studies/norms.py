"""How the hidden-state norm grows with depth: the median ||h_l|| per layer (zeta2 divides by it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdlib.cache import Record
from sdlib.data import TextWindows
from sdlib.evaluation.subject import Subject
from sdlib.states import forward_states
from sdlib.studies.base import Study


@dataclass(frozen=True)
class NormSettings(TextWindows):  # which text, how many windows of how many tokens
    windows: int = 8
    window_len: int = 256


@dataclass
class NormRecord(Record):
    model: str
    median_norm: list[float]
    """per state h_-1 .. h_L (raw layer outputs)"""


def compute(subject: Subject, settings: NormSettings) -> NormRecord:
    ids = settings.ids(subject.tokenizer).to(subject.placed_on())
    with torch.no_grad():
        states = forward_states(subject.model, ids).pre_norm
    return NormRecord(subject.name, [float(h.double().norm(dim=-1).median()) for h in states])


def describe(record: NormRecord) -> str:
    return "\n".join(f"h_{l - 1:<3} median norm {n:.4g}" for l, n in enumerate(record.median_norm))


STUDY = Study("norms", "the median hidden-state norm per layer", NormSettings, NormRecord, compute, describe)
