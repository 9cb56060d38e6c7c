"""The fold-split study: how much of a model's normed last step is the final norm's gain (a change of
coordinates) and how much is the last block's own turn.

The model is measured as it is and again after ``sdlib.fold.fold_final_norm`` (same outputs; the folded normed
h_L points where the last block's output points). Reported in three readings, each with its bootstrap interval
over the text's documents:

* ``normed``: h_L after the final norm, the original model (the reading the paper's figures match);
* ``pre_norm``: h_L = the last block's raw output x_L (the fold leaves it alone);
* ``folded``: h_L after the folded model's final norm (for an RMSNorm it is the pre-norm reading, measured).

For each: S, D_L, D_L / D_{L-1} and the follow-up paper's jump rate (``metrics.jump_rate``). The final gain's part
of the normed last step is D_L(normed) - D_L(folded); the block's own part is D_L(folded). Beside them: the
largest change of any final logit and the top-1 agreement over the same windows, the largest change of
D_0..D_{L-1}, and final-layer LAMBADA of both models paired over the same passages.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from sdlib.cache import Record
from sdlib.evaluation.layers import EvalSettings, evaluate_layers, load_subset
from sdlib.evaluation.movement import MeasureSettings
from sdlib.evaluation.subject import Subject
from sdlib.fold import fold_final_norm, fold_info
from sdlib.measurement import Measurement, measure_windows
from sdlib.metrics import jump_rate
from sdlib.parts import decoder_parts
from sdlib.provenance import provenance
from sdlib.stats import Interval, accuracy_interval, paired_ratio, paired_S_difference
from sdlib.studies.base import Study

READINGS = ("normed", "pre_norm", "folded")
"""the original model's two last-state conventions, and the folded model's normed h_L"""


@dataclass(frozen=True)
class FoldSplitSettings(MeasureSettings):
    """The measurement's windows (the standard setting by default) and the LAMBADA passages."""

    eval_subset: str = "cpu-short"
    """LAMBADA's passages and max_length come from this subset (configs/eval/<name>.yaml); WikiText is not read"""
    scale: float = 0.0
    """the fold's c (0: the root mean square of the gain)"""


@dataclass
class FoldSplitRecord(Record):
    """One model's last step split into the final gain's part and the block's own part."""

    model: str
    fold: dict[str, Any]
    """``sdlib.fold.FoldInfo`` as a dict (the norm's form, c, untied)"""
    D: dict[str, list[float]]
    """D_0..D_L per reading"""
    S: dict[str, Interval]
    """S per reading with its 95% bootstrap interval over documents"""
    S_folded_vs_normed: Interval
    """S(folded) - S(normed), paired over the same windows"""
    D_last: dict[str, float]
    D_ratio: dict[str, float]
    jump_rate: dict[str, list[float]]
    """zeta_1..zeta_L per reading"""
    gain_part: float
    """D_L(normed) - D_L(folded): the part of the normed last step that is the final gain's coordinates"""
    block_part: float
    """D_L(folded): the last block's own turn, as the folded model's normed reading sees it"""
    max_inner_D_change: float
    """the largest |D_l(folded) - D_l(original)| over l = 0..L-1 (0 up to rounding: the fold touches only the head)"""
    max_logit_diff: float
    """the largest |logit| change over every position of the windows"""
    max_logit: float
    top1_agreement: float
    """the share of positions whose top-1 token is the same"""
    lambada_final: dict[str, Interval]
    """final-layer LAMBADA accuracy of ``original`` and ``folded`` with 95% intervals over passages"""
    lambada_ratio: Interval
    """folded / original, paired over the same passages"""
    lambada_changed: int
    """passages whose outcome differs between the two"""
    lambada_n: int
    setting: str
    info: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)


class LogitComparison:
    """A measurement observer on the folded model: from each batch's x_L it computes the original model's logits
    (its own norm and head) and compares them with the folded model's, ``rows`` positions at a time."""

    def __init__(self, original, folded, rows: int = 512):
        self.original, self.folded, self.rows = decoder_parts(original), decoder_parts(folded), rows
        self.max_diff, self.max_logit, self.agree, self.positions = 0.0, 0.0, 0, 0

    def __call__(self, states, ids, moved) -> None:
        x_last = states.pre_norm_last.flatten(0, -2)
        h_folded = states.normed_last.flatten(0, -2)
        for s in range(0, len(x_last), self.rows):
            before = self.original.head(self.original.norm(x_last[s: s + self.rows])).float()
            after = self.folded.head(h_folded[s: s + self.rows]).float()
            self.max_diff = max(self.max_diff, float((after - before).abs().max()))
            self.max_logit = max(self.max_logit, float(before.abs().max()))
            self.agree += int((after.argmax(-1) == before.argmax(-1)).sum())
            self.positions += len(before)

    def describe(self, where: str) -> str:
        return (f"On {where} ({self.positions} positions) the largest change of any logit was {self.max_diff:.2e} "
                f"(largest |logit| {self.max_logit:.1f}) and the top-1 token agreed at "
                f"{self.agree} of {self.positions} positions.")


def compare_outputs(original, folded, windows: torch.Tensor, batch_size: int = 8, progress: bool = False
                    ) -> tuple[LogitComparison, Measurement]:
    """The final logits of ``original`` and ``folded`` compared at every position of ``windows`` ([n, T] token ids)
    in one measurement pass of the folded model (the original's norm and head read the same x_L). -> (the
    comparison, the folded model's measurement)."""
    comparison = LogitComparison(original, folded)
    measured = measure_windows(folded, windows, batch_size, progress=progress, observers=[comparison])
    return comparison, measured


def _lambada(model, tokenizer, settings: EvalSettings, progress: bool) -> np.ndarray:
    """Final-layer 0/1 LAMBADA outcomes [n]."""
    result = evaluate_layers(model, tokenizer, ["lambada_openai"], settings, progress=progress, layers=[-1])
    return result["lambada_openai"].greedy[:, -1].astype(float)


@torch.no_grad()
def fold_split(subject: Subject, settings: FoldSplitSettings) -> FoldSplitRecord:
    model, tokenizer = subject.model, subject.tokenizer
    folded = fold_final_norm(copy.deepcopy(model), scale=settings.scale or None)
    windows, documents, data_hashes = settings.sample(tokenizer)
    original_m = subject.measurement(settings)
    comparison, folded_m = compare_outputs(model, folded, windows, settings.batch_size, subject.progress)
    folded_m.window_documents = documents
    per_reading = {"normed": (original_m, "normed"), "pre_norm": (original_m, "pre_norm"),
                   "folded": (folded_m, "normed")}
    D = {r: m.D[c] for r, (m, c) in per_reading.items()}
    S = {r: Interval(m.S[c], *m.S_interval(c)) for r, (m, c) in per_reading.items()}
    S_change = paired_S_difference(original_m.per_window_D["normed"], folded_m.per_window_D["normed"],
                                   documents=documents)
    subset = load_subset(settings.eval_subset, subject.placed_on())
    eval_settings = replace(subset, limit={t: n for t, n in subset.limit.items() if t == "lambada_openai"},
                            dtype=settings.dtype)
    before = _lambada(model, tokenizer, eval_settings, subject.progress)
    after = _lambada(folded, tokenizer, eval_settings, subject.progress)
    inner = max(abs(a - b) for a, b in zip(D["normed"][:-1], D["folded"][:-1]))
    return FoldSplitRecord(
        model=subject.name, fold=asdict(fold_info(folded)), D=D, S=S, S_folded_vs_normed=S_change,
        D_last={r: d[-1] for r, d in D.items()}, D_ratio={r: d[-1] / d[-2] if d[-2] else float("nan")
                                                          for r, d in D.items()},
        jump_rate={r: jump_rate(d) for r, d in D.items()}, gain_part=D["normed"][-1] - D["folded"][-1],
        block_part=D["folded"][-1], max_inner_D_change=inner, max_logit_diff=comparison.max_diff,
        max_logit=comparison.max_logit, top1_agreement=comparison.agree / max(comparison.positions, 1),
        lambada_final={"original": accuracy_interval(before), "folded": accuracy_interval(after)},
        lambada_ratio=paired_ratio(before, after), lambada_changed=int((before != after).sum()),
        lambada_n=len(before), setting=settings.describe(),
        info={"documents": len(set(documents)), "positions": comparison.positions, "data": data_hashes},
        provenance=provenance(device=next(model.parameters()).device, data=data_hashes, limits=asdict(settings)))


def describe(r: FoldSplitRecord) -> str:
    lines = [f"{r.model}: final norm {r.fold['norm']}, folded with c = {r.fold['scale']:.4g}"
             + (" (head untied)" if r.fold["untied"] else ""),
             f"measured on {r.setting}",
             f"{'reading':>9}  {'S [95%]':>26}  {'D_L':>7}  {'D_L/D_L-1':>9}  {'zeta_1':>7}  {'zeta_L':>7}"]
    for reading in READINGS:
        s, lo, hi = r.S[reading]
        lines.append(f"{reading:>9}  {s:.4f} [{lo:.4f}, {hi:.4f}]  {r.D_last[reading]:7.4f}  "
                     f"{r.D_ratio[reading]:9.2f}  {r.jump_rate[reading][0]:7.3f}  {r.jump_rate[reading][-1]:7.3f}")
    share = r.gain_part / r.D_last["normed"] if r.D_last["normed"] else float("nan")
    change = r.S_folded_vs_normed
    lines += [f"normed last step D_L = {r.D_last['normed']:.4f}: the final gain's part {r.gain_part:.4f} ({share:.0%}), "
              f"the block's own {r.block_part:.4f}",
              f"S folded - S normed = {change[0]:+.4f} [{change[1]:+.4f}, {change[2]:+.4f}] (paired)",
              f"outputs: largest logit change {r.max_logit_diff:.2e} (largest |logit| {r.max_logit:.1f}), top-1 agreement "
              f"{r.top1_agreement:.6f} over {r.info.get('positions', 0)} positions; largest change of D_0..D_L-1 "
              f"{r.max_inner_D_change:.1e}",
              f"LAMBADA final layer, {r.lambada_n} passages: original {r.lambada_final['original'][0]:.4f}, folded "
              f"{r.lambada_final['folded'][0]:.4f}; {r.lambada_changed} passage(s) changed; folded / original "
              f"{r.lambada_ratio[0]:.4f} [{r.lambada_ratio[1]:.4f}, {r.lambada_ratio[2]:.4f}]"]
    return "\n".join(lines)


STUDY = Study("fold-split", "the normed last step split into the final gain's part and the last block's own part "
              "(fold the gain into the head, measure both)", FoldSplitSettings, FoldSplitRecord, fold_split, describe)


def markdown_table(records) -> str:
    """The fold-split records as one Markdown table, a column per model (what RESULTS.md shows; a test holds the
    committed table to the committed records)."""
    def s(r, reading):
        v, lo, hi = r.S[reading]
        return f"{v:.4f} [{lo:.4f}, {hi:.4f}]"

    rows = [("S normed [95%]", lambda r: s(r, "normed")),
            ("S pre_norm [95%]", lambda r: s(r, "pre_norm")),
            ("S folded (normed, after the fold) [95%]", lambda r: s(r, "folded")),
            ("S folded - S normed, paired", lambda r: "{:+.4f} [{:+.4f}, {:+.4f}]".format(*r.S_folded_vs_normed)),
            ("D_L normed", lambda r: f"{r.D_last['normed']:.4f}"),
            ("... the final gain's part", lambda r: f"{r.gain_part:.4f} ({r.gain_part / r.D_last['normed']:.0%})"),
            ("... the last block's own (D_L folded)", lambda r: f"{r.block_part:.4f}"),
            ("D_L / D_L-1: normed; folded", lambda r: f"{r.D_ratio['normed']:.2f}; {r.D_ratio['folded']:.2f}"),
            ("jump rate zeta_L (100 x the last rise): normed; folded",
             lambda r: f"{r.jump_rate['normed'][-1]:.2f}; {r.jump_rate['folded'][-1]:.2f}"),
            ("jump rate zeta_1 (100 x every rise): normed; folded",
             lambda r: f"{r.jump_rate['normed'][0]:.2f}; {r.jump_rate['folded'][0]:.2f}"),
            ("fold: c; head untied", lambda r: f"{r.fold['scale']:.4g}; {'yes' if r.fold['untied'] else 'no'}"),
            ("largest final-logit change (largest \\|logit\\|)", lambda r: f"{r.max_logit_diff:.1e} ({r.max_logit:.1f})"),
            ("top-1 agreement over the windows' positions",
             lambda r: f"{r.top1_agreement:.6f} of {r.info.get('positions', 0):,}"),
            ("LAMBADA final layer: original; folded", lambda r: "{:.3f}; {:.3f}".format(
                r.lambada_final["original"][0], r.lambada_final["folded"][0])),
            ("LAMBADA passages whose outcome changed", lambda r: f"{r.lambada_changed} of {r.lambada_n}")]
    lines = ["| | " + " | ".join(r.model for r in records) + " |", "|---" * (len(records) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(value(r) for r in records) + " |" for name, value in rows]
    return "\n".join(lines)
