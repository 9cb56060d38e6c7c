"""Why the last layer jumps: how much of D_L comes from the last block and how much from the final norm's
per-channel weight, and how far D_L must fall for a target S.

In the ``normed`` convention h_L = g * RMSNorm(x_L) (x_L: the last block's output, g: the final norm's weight),
so D_L holds two rotations: the last block's (x_{L-1} -> x_L, the ``pre_norm`` D_L) and the weight's
(x_L -> g * x_L; RMSNorm's scaling does not rotate). When a few channels carry most of the residual stream's
energy (massive activations), the weight on those channels sets the direction of the normed state.

    sdlib study last-layer smollm2-135m-instruct                  # this report and the final-norm edits
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sdlib.cache import Record
from sdlib.data import TextWindows
from sdlib.evaluation.subject import Subject
from sdlib.metrics import layer_movement, monotonicity, movement
from sdlib.parts import decoder_parts
from sdlib.states import forward_states
from sdlib.studies.base import Study
from sdlib.types import LAST_STATES


def max_last_movement(D: list[float] | torch.Tensor, target: float) -> float | None:
    """The largest D_L that gives ``monotonicity(D) >= target`` with D_0..D_{L-1} kept as they are.

    D: [L + 1] movements -> float, or None when no D_L >= 0 reaches the target (the earlier layers alone
    rise too much). With P, T the rises and total variation of D_0..D_{L-1}: a last step d above D_{L-1}
    gives S = 1 - (P + d - D_{L-1}) / (T + d - D_{L-1}), a step below it S = 1 - P / (T + D_{L-1} - d).
    """
    d = torch.as_tensor(D, dtype=torch.float64).flatten()
    diffs = d[1:-1] - d[:-2]
    rises, total, prev = float(diffs.clamp(min=0).sum()), float(diffs.abs().sum()), float(d[-2])
    if target <= 0:
        return float("inf")
    above = ((1 - target) * total - rises) / target  # the largest rise d - D_{L-1} allowed
    if above >= 0:
        return prev + above
    if target >= 1:
        return None
    below = rises / (1 - target) - total  # the smallest fall D_{L-1} - d needed
    return prev - below if prev - below >= 0 else None


def final_norm_rotation(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """D between a pre-norm state and its normed image: movement(x, weight * x).

    x: [..., d]; weight: [d] -> [...]. RMSNorm's division by the root mean square is a positive scale per
    token, so it does not change the angle; only the per-channel weight rotates.
    """
    return movement(x, weight * x)


def channel_energy_share(h: torch.Tensor) -> torch.Tensor:
    """Each channel's share of the squared norm, averaged over tokens: [..., d] -> [d] (sums to 1)."""
    energy = h.double().pow(2).reshape(-1, h.shape[-1]).mean(dim=0)
    return (energy / energy.sum()).float()


@contextmanager
def final_norm_weight(model: nn.Module, gain: torch.Tensor) -> Iterator[None]:
    """Temporarily give the final norm the effective per-channel gain ``gain`` [d] (``DecoderParts.norm_gain``:
    the weight for Llama-style norms, 1 + weight for Gemma's); the original weight is always put back."""
    parts = decoder_parts(model)
    param = parts.norm.weight
    original = param.detach().clone()
    offset = (parts.norm_gain().to(param) - original).round()  # 0 for g = w, 1 for g = 1 + w
    try:
        with torch.no_grad():
            param.copy_(gain.to(param) - offset)
        yield
    finally:
        with torch.no_grad():
            param.copy_(original)


@dataclass
class ChannelEnergy(Record):
    """One channel of x_L: its share of x_L's and of h_L's energy, and its final-norm gain."""

    channel: int
    share_pre_norm: float
    share_normed: float
    weight: float


@dataclass
class NormEdit(Record):
    """The whole model with an edited final-norm gain: S (normed), D_L, D_{L-1} and next-token cross-entropy."""

    final_norm_weight: str
    S_normed: float
    D_L: float
    D_L_minus_1: float
    next_token_ce: float


@dataclass
class LastLayerReport(Record):
    """The last layer's movement decomposed, the bound on D_L for a target S, and edits of the final norm."""

    tokens: int
    D_L: dict[str, float]
    D_L_minus_1: float
    S: dict[str, float]
    norm_rotation: float
    """mean movement(x_L, g * x_L): the final norm's own rotation"""
    block_rotation: float
    """mean movement(x_{L-1}, x_L): the last block's"""
    channels: list[ChannelEnergy]
    """the ``top`` channels by pre-norm energy"""
    top_share_pre_norm: float
    target: float
    max_D_L: dict[str, float | None]
    """the largest D_L reaching ``target`` per convention (None: out of the last layer's reach)"""
    S_if_D_L_equals_D_L_minus_1: dict[str, float]
    S_if_D_L_is_0: dict[str, float]
    edits: list[NormEdit]
    model: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LastLayerReport:
        return cls(**{**{k: data[k] for k in cls.__dataclass_fields__ if k in data},
                      "channels": [ChannelEnergy.from_dict(c) for c in data["channels"]],
                      "edits": [NormEdit.from_dict(e) for e in data["edits"]]})


@torch.no_grad()
def last_layer_report(model: nn.Module, windows: torch.Tensor, target: float = 0.85, top: int = 4
                      ) -> LastLayerReport:
    """Decompose the last layer's movement on ``windows`` ([n, T] token ids) and try edits of the final norm:
    the gain as it is, with the top channel's sign flipped, with it zeroed, with every weight made positive,
    and uniform (mean |g|)."""
    states = forward_states(model, windows)
    x_prev, x_last = states["pre_norm"][-2].float(), states["pre_norm"][-1].float()
    h_last = states["normed"][-1].float()
    g = decoder_parts(model).norm_gain()
    share_x, share_h = channel_energy_share(x_last), channel_energy_share(h_last)
    order = share_x.argsort(descending=True)[:top].tolist()
    D = {c: layer_movement(states[c]).tolist() for c in LAST_STATES}
    first = order[0]
    flipped, zeroed = g.clone(), g.clone()
    flipped[first], zeroed[first] = -g[first], 0.0
    edits = {"as trained": g, f"channel {first} sign flipped": flipped, f"channel {first} zeroed": zeroed,
             "|g| (all weights positive)": g.abs(), "uniform (mean |g|)": torch.full_like(g, float(g.abs().mean()))}
    return LastLayerReport(
        tokens=windows.numel(), D_L={c: D[c][-1] for c in LAST_STATES}, D_L_minus_1=D["normed"][-2],
        S={c: monotonicity(D[c]) for c in LAST_STATES}, norm_rotation=float(final_norm_rotation(x_last, g).mean()),
        block_rotation=float(movement(x_prev, x_last).mean()),
        channels=[ChannelEnergy(i, float(share_x[i]), float(share_h[i]), float(g[i])) for i in order],
        top_share_pre_norm=float(share_x[order].sum()), target=target,
        max_D_L={c: max_last_movement(D[c], target) for c in LAST_STATES},
        # the best the last layer alone can do: no jump (D_L = D_{L-1}) or no movement at all (D_L = 0)
        S_if_D_L_equals_D_L_minus_1={c: monotonicity(D[c][:-1] + D[c][-2:-1]) for c in LAST_STATES},
        S_if_D_L_is_0={c: monotonicity(D[c][:-1] + [0.0]) for c in LAST_STATES},
        edits=[_edited(model, windows, name, weight) for name, weight in edits.items()])


def _edited(model: nn.Module, windows: torch.Tensor, name: str, weight: torch.Tensor) -> NormEdit:
    with final_norm_weight(model, weight):
        out = model(input_ids=windows, output_hidden_states=True, use_cache=False)
        D = layer_movement(out.hidden_states)
        ce = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), windows[:, 1:].flatten())
    return NormEdit(final_norm_weight=name, S_normed=monotonicity(D), D_L=float(D[-1]), D_L_minus_1=float(D[-2]),
                    next_token_ce=float(ce))


@dataclass(frozen=True)
class LastLayerSettings(TextWindows):
    """What changes the report (part of its cache key): the text windows, the target S and how many channels."""

    windows: int = 8
    target: float = 0.85
    top: int = 4


def compute_report(subject: Subject, settings: LastLayerSettings) -> LastLayerReport:
    windows = settings.ids(subject.tokenizer).to(subject.placed_on())
    report = last_layer_report(subject.model, windows, settings.target, settings.top)
    report.model = subject.name
    return report


def format_report(report: LastLayerReport) -> str:
    r = report
    lines = [f"D_L: normed {r.D_L['normed']:.3f}, pre_norm {r.D_L['pre_norm']:.3f} (D_L-1 {r.D_L_minus_1:.3f}); the "
             f"final norm's weight alone rotates by D = {r.norm_rotation:.3f}",
             f"top {len(r.channels)} channels hold {r.top_share_pre_norm:.0%} of x_L's energy:"]
    lines += [f"  channel {c.channel}: {c.share_pre_norm:.1%} of x_L, {c.share_normed:.1%} of h_L, "
              f"weight {c.weight:+.3f}" for c in r.channels]
    for conv, bound in r.max_D_L.items():
        need = "more than the last layer can give" if bound is None else f"D_L <= {bound:.4f}"
        lines.append(f"S >= {r.target} ({conv}, now {r.S[conv]:.3f}) needs {need}: with D_L = D_L-1 "
                     f"S = {r.S_if_D_L_equals_D_L_minus_1[conv]:.3f}, with D_L = 0 S = {r.S_if_D_L_is_0[conv]:.3f}")
    lines.append(f"{'final-norm weight':30s} {'S normed':>8s} {'D_L':>6s} {'next-token CE':>13s}")
    lines += [f"{e.final_norm_weight:30s} {e.S_normed:8.3f} {e.D_L:6.3f} {e.next_token_ce:13.3f}" for e in r.edits]
    return "\n".join(lines)


STUDY = Study("last-layer", "why the last layer jumps: the last block's and the final norm's share of D_L, the D_L a "
              "target S needs, and edits of the final norm's gain", LastLayerSettings, LastLayerReport,
              compute_report, format_report)
