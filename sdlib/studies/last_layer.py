"""Why the last layer jumps: how much of D_L comes from the last block and how much from the final norm's
per-channel weight, and how far D_L must fall for a target S.

In the ``normed`` convention h_L = g * RMSNorm(x_L) (x_L: the last block's output, g: the final norm's weight),
so D_L holds two rotations: the last block's (x_{L-1} -> x_L, the ``pre_norm`` D_L) and the weight's
(x_L -> g * x_L; RMSNorm's scaling does not rotate). When a few channels carry most of the residual stream's
energy (massive activations), the weight on those channels sets the direction of the normed state.

    sdlib analyze smollm2-135m --edits                    # the atlas, then this report and the final-norm edits
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sdlib.metrics import layer_movement, monotonicity, movement
from sdlib.parts import decoder_parts
from sdlib.states import forward_states
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


@torch.no_grad()
def last_layer_report(model: nn.Module, windows: torch.Tensor, target: float = 0.85, top: int = 4
                      ) -> dict[str, Any]:
    """Decompose the last layer's movement on ``windows`` ([n, T] token ids) and try edits of the final norm.

    -> dict: ``D_L`` per convention, ``norm_rotation`` (mean movement(x_L, g * x_L)), ``channels`` (the ``top``
    channels by pre-norm energy: index, share of x_L's and of h_L's energy, weight), ``max_D_L`` (the largest
    D_L reaching ``target`` per convention), and ``edits``: for the final-norm weight as it is, with the top
    channel's sign flipped, with it zeroed, with every weight made positive, and uniform (mean |g|), the S
    (normed), D_L, D_{L-1} and next-token cross-entropy of the whole model.
    """
    states = forward_states(model, windows)
    x_prev, x_last = states["pre_norm"][-2].float(), states["pre_norm"][-1].float()
    h_last = states["normed"][-1].float()
    g = decoder_parts(model).norm_gain()
    share_x, share_h = channel_energy_share(x_last), channel_energy_share(h_last)
    order = share_x.argsort(descending=True)[:top].tolist()
    D = {c: layer_movement(states[c]).tolist() for c in LAST_STATES}
    report: dict[str, Any] = {
        "tokens": windows.numel(),
        "D_L": {c: D[c][-1] for c in LAST_STATES}, "D_L_minus_1": D["normed"][-2],
        "S": {c: monotonicity(D[c]) for c in LAST_STATES},
        "norm_rotation": float(final_norm_rotation(x_last, g).mean()),
        "block_rotation": float(movement(x_prev, x_last).mean()),
        "channels": [{"channel": i, "share_pre_norm": float(share_x[i]), "share_normed": float(share_h[i]),
                      "weight": float(g[i])} for i in order],
        "top_share_pre_norm": float(share_x[order].sum()),
        "target": target, "max_D_L": {c: max_last_movement(D[c], target) for c in LAST_STATES},
        # the best the last layer alone can do: no jump (D_L = D_{L-1}) or no movement at all (D_L = 0)
        "S_if_D_L_equals_D_L_minus_1": {c: monotonicity(D[c][:-1] + D[c][-2:-1]) for c in LAST_STATES},
        "S_if_D_L_is_0": {c: monotonicity(D[c][:-1] + [0.0]) for c in LAST_STATES},
    }
    first = order[0]
    flipped, zeroed = g.clone(), g.clone()
    flipped[first], zeroed[first] = -g[first], 0.0
    edits = {"as trained": g, f"channel {first} sign flipped": flipped, f"channel {first} zeroed": zeroed,
             "|g| (all weights positive)": g.abs(), "uniform (mean |g|)": torch.full_like(g, float(g.abs().mean()))}
    report["edits"] = []
    for name, weight in edits.items():
        with final_norm_weight(model, weight):
            out = model(input_ids=windows, output_hidden_states=True, use_cache=False)
            D_edit = layer_movement(out.hidden_states)
            ce = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), windows[:, 1:].flatten())
        report["edits"].append({"final_norm_weight": name, "S_normed": monotonicity(D_edit),
                                "D_L": float(D_edit[-1]), "D_L_minus_1": float(D_edit[-2]),
                                "next_token_ce": float(ce)})
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"D_L: normed {report['D_L']['normed']:.3f}, pre_norm {report['D_L']['pre_norm']:.3f} "
             f"(D_L-1 {report['D_L_minus_1']:.3f}); the final norm's weight alone rotates by "
             f"D = {report['norm_rotation']:.3f}",
             f"top {len(report['channels'])} channels hold {report['top_share_pre_norm']:.0%} of x_L's energy:"]
    lines += [f"  channel {c['channel']}: {c['share_pre_norm']:.1%} of x_L, {c['share_normed']:.1%} of h_L, "
              f"weight {c['weight']:+.3f}" for c in report["channels"]]
    for conv, bound in report["max_D_L"].items():
        need = "more than the last layer can give" if bound is None else f"D_L <= {bound:.4f}"
        lines.append(f"S >= {report['target']} ({conv}, now {report['S'][conv]:.3f}) needs {need}: with D_L = D_L-1 "
                     f"S = {report['S_if_D_L_equals_D_L_minus_1'][conv]:.3f}, with D_L = 0 "
                     f"S = {report['S_if_D_L_is_0'][conv]:.3f}")
    lines.append(f"{'final-norm weight':30s} {'S normed':>8s} {'D_L':>6s} {'next-token CE':>13s}")
    lines += [f"{e['final_norm_weight']:30s} {e['S_normed']:8.3f} {e['D_L']:6.3f} {e['next_token_ce']:13.3f}"
              for e in report["edits"]]
    return "\n".join(lines)
