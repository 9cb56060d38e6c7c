"""The paper's hidden-state metrics, as pure functions on tensors.

Indexing follows the paper: ``hidden_states`` is the sequence (h_{-1}, h_0, ..., h_L) of L + 2 tensors of
shape [batch, seq, d] (transformers' ``output_hidden_states`` tuple works as is; see ``sdlib.states`` for
the two conventions of h_L).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sdlib.errors import SdlibError


def movement(h_prev: torch.Tensor, h_next: torch.Tensor) -> torch.Tensor:
    """Definition 1 for single vectors: D = 1 - (1 + cos(h_prev, h_next)) / 2, in [0, 1].

    Shapes: [..., d], [..., d] -> [...]. Computed in float32 (float64 inputs stay float64).
    """
    dtype = torch.float64 if h_prev.dtype == torch.float64 else torch.float32
    cos = F.cosine_similarity(h_prev.to(dtype), h_next.to(dtype), dim=-1, eps=1e-12)
    return (0.5 * (1.0 - cos)).clamp(0.0, 1.0)


def token_movement(hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-token movement D_l for l = 0..L.

    hidden_states: L + 2 tensors [batch, seq, d] -> Tensor [L + 1, batch, seq]; entry l is the step from
    h_{l-1} to h_l (entry 0: embedding -> layer 0).
    """
    if len(hidden_states) < 2:
        raise SdlibError(f"need at least two hidden states (h_-1 and h_0) to measure movement, got {len(hidden_states)}")
    return torch.stack([movement(a, b) for a, b in zip(hidden_states[:-1], hidden_states[1:])])


def layer_movement(hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """D_0..D_L: per-layer movement averaged over all non-padding tokens of the batch.

    hidden_states: L + 2 tensors [batch, seq, d]; attention_mask: [batch, seq] (1 = real token) or None
    (every token counts) -> Tensor [L + 1] (float32). Each token weighs the same, whichever sequence it is in.
    """
    sums, count = movement_sums(hidden_states, attention_mask)
    return (sums / count).float()


def movement_sums(hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, int]:
    """Per-layer sums of token movement over the mask and the token count, for averaging over batches.

    Returns (Tensor [L + 1] float64, int).
    """
    per_token = token_movement(hidden_states)  # [L+1, B, T]
    if attention_mask is None:
        mask = torch.ones(per_token.shape[1:], dtype=torch.bool, device=per_token.device)
    else:
        mask = attention_mask.to(per_token.device).bool()
    count = int(mask.sum())
    if count == 0:
        raise SdlibError("the attention mask selects no tokens: nothing to measure")
    return (per_token.double() * mask).sum(dim=(1, 2)), count


def monotonicity_batched(D: torch.Tensor) -> torch.Tensor:
    """Definition 2 for a batch of curves: S = 1 - sum_{l=1..L} max(0, D_l - D_{l-1}) / sum_{l=1..L} |D_l - D_{l-1}|.

    D: [..., L + 1] movements D_0..D_L -> [...] float64 in [0, 1]. S = 1 when D never rises, 0 when it never
    falls; when the denominator is 0 (D constant, or a single layer) nothing rises, so S = 1. A curve holding
    NaN or an infinity has no S: NaN (a diverged model must never score as perfectly convergent). The only
    implementation of S in sdlib: everything else calls it.
    """
    d = torch.as_tensor(D, dtype=torch.float64)
    diffs = d[..., 1:] - d[..., :-1]
    total = diffs.abs().sum(-1)
    rises = diffs.clamp(min=0).sum(-1)
    S = torch.where(total > 0, 1 - rises / total.clamp_min(1e-300), torch.ones_like(total))
    return S.masked_fill(~torch.isfinite(d).all(-1), float("nan"))


def monotonicity(D: Sequence[float] | torch.Tensor) -> float:
    """S of one curve D_0..D_L ([L + 1]) as a float; see ``monotonicity_batched``."""
    return float(monotonicity_batched(torch.as_tensor(D, dtype=torch.float64).flatten()))


def check_finite(D: Sequence[float] | torch.Tensor, what: str = "the movement curve") -> None:
    """Refuse, in one line naming the first such layer, a curve D_0..D_L holding NaN or an infinity."""
    d = torch.as_tensor(D, dtype=torch.float64).flatten()
    bad = (~torch.isfinite(d)).nonzero().flatten().tolist()
    if bad:
        more = f", and {len(bad) - 1} more layers" if len(bad) > 1 else ""
        raise SdlibError(f"{what} is not finite at layer {bad[0]} (D_{bad[0]} = {float(d[bad[0]])}{more}): the "
                         "model's hidden states overflowed or hold NaN (a diverged checkpoint, or too low a "
                         "precision); nothing is reported")


def last_layer_ratio(D: Sequence[float] | torch.Tensor) -> float:
    """D_L / D_{L-1}: how much bigger the last layer's step is than the one before (paper: 4.14 -> 1.69)."""
    d = torch.as_tensor(D, dtype=torch.float64).flatten()
    return float(d[-1] / d[-2]) if len(d) >= 2 and d[-2] != 0 else float("nan")


def jump_rate(D: Sequence[float] | torch.Tensor) -> list[float]:
    """The follow-up paper's jump rate zeta_l = 100 * sum_{k=l..L} max(0, D_k - D_{k-1}) for l = 1..L: how much the
    movement still rises from layer l on (zeta_1: every rise of the curve; zeta_L: the last step's rise alone).

    D: [L + 1] movements D_0..D_L -> L floats (zeta_1..zeta_L); NaN everywhere for a curve holding NaN.
    """
    d = torch.as_tensor(D, dtype=torch.float64).flatten()
    rises = (d[1:] - d[:-1]).clamp(min=0)
    out = 100 * rises.flip(0).cumsum(0).flip(0)
    if not bool(torch.isfinite(d).all()):
        out = torch.full_like(out, float("nan"))
    return out.tolist()


def soft_non_monotonicity(D: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """1 - S as a differentiable function of the movement curve: [L + 1] -> scalar tensor.

    sum_{l=1..L} relu(D_l - D_{l-1}) / (sum_{l=1..L} |D_l - D_{l-1}| + eps); equals 1 - ``monotonicity(D)``
    wherever D is not constant.
    """
    diffs = D[1:] - D[:-1]
    return diffs.clamp(min=0).sum() / (diffs.abs().sum() + eps)
