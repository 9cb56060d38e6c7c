"""The plain self-distillation loss, written from the paper's definitions with nothing shared with
``sdlib.loss`` but its settings and result types: every layer's logits materialized, fp32 (or fp64)
log-softmax, plain autograd. Tests and benchmarks hold ``sdlib.loss.self_distillation_loss`` equal to it.

    zeta  = zeta1 + alpha * zeta2
    zeta1 = sum_{l=0..L} w_l KL(q_teacher || q_l)                 (or KL(q_l || q_teacher): ``reverse``)
    zeta2 = sum_{l=1..L} w_l mean ||h_l - h_{l-1}||^2 / ||h_{l-1}||^2       (``relative_step``)
          = sum_{l=1..L} w_l mean (1 - (1 + cos(h_{l-1}, h_l)) / 2)          (``cosine``)
          = sum relu(D_l - D_{l-1}) / sum |D_l - D_{l-1}| of the mean D curve  (``monotonicity``)
    w_l   = exp(k l) / sum_{i=0..L} exp(k i)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sdlib.errors import SdlibError
from sdlib.loss import LossParts, LossSettings, TeacherHead
from sdlib.types import KLDirection, LastState, Zeta2Form


def _tokens(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[..., d] -> [N, d]: the tokens the mask keeps."""
    h = h.reshape(-1, h.shape[-1])
    return h if mask is None else h[mask.reshape(-1).bool()]


def _weights(num_layers: int, k: float) -> torch.Tensor:
    return torch.softmax(k * torch.arange(num_layers, dtype=torch.float64), dim=0)


def _movement(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return 1 - (1 + F.cosine_similarity(a.to(dtype), b.to(dtype), dim=-1)) / 2


def reference_self_distillation_loss(pre_norm_states: Sequence[torch.Tensor], final_norm: nn.Module,
                                     lm_head: nn.Linear, teacher: TeacherHead | torch.Tensor,
                                     settings: LossSettings | None = None, *,
                                     attention_mask: torch.Tensor | None = None,
                                     logit_transform=lambda z: z, **overrides) -> LossParts:
    """pre_norm_states: L + 2 tensors [B, T, d] (h_-1 = embeddings, h_0..h_L raw layer outputs); teacher: its
    head and last hidden state, or its logits [B, T, V] -> ``LossParts`` (zeta1 always exact)."""
    s = LossSettings.of(settings, overrides)
    if s.lens_samples:
        raise SdlibError("the reference loss computes zeta1 exactly: use lens_samples 0 with it")
    if attention_mask is not None and not bool(attention_mask.bool().any()):
        raise SdlibError("the attention mask selects no tokens: the loss is undefined")
    h = [_tokens(x, attention_mask) for x in pre_norm_states]  # h_-1 .. h_L
    n_layers = len(h) - 1  # L + 1 lens layers
    w = _weights(n_layers, s.k)
    acc = torch.float64 if lm_head.weight.dtype == torch.float64 else torch.float32
    normed = [final_norm(x) for x in h[1:]]  # the lens input of layers 0..L

    if s.zeta1:
        if isinstance(teacher, TeacherHead):
            t_logits = teacher.transform(F.linear(_tokens(teacher.hidden, attention_mask), teacher.weight,
                                                  teacher.bias))
        else:
            t_logits = _tokens(teacher, attention_mask)
        logp = torch.log_softmax(t_logits.detach().to(acc), dim=-1)
        kl = []
        for x in normed:
            logq = torch.log_softmax(logit_transform(lm_head(x)).to(acc), dim=-1)
            a, b = (logp, logq) if s.kl_direction == KLDirection.FORWARD else (logq, logp)
            kl.append((a.exp() * (a - b)).sum(-1).mean())
        kl = torch.stack(kl)
        zeta1 = (w.to(kl) * kl).sum()
    else:
        kl = torch.full((n_layers,), float("nan"), dtype=torch.float32)
        zeta1 = torch.zeros((), dtype=torch.float32)

    states = h[1:-1] + [normed[-1] if s.last_state == LastState.NORMED else h[-1]]  # h_0 .. h_L
    pairs = list(zip(states[:-1], states[1:]))
    if s.zeta2_form == Zeta2Form.RELATIVE_STEP:
        terms = torch.stack([((b.to(acc) - a.to(acc)).pow(2).sum(-1) / a.to(acc).pow(2).sum(-1)).mean()
                             for a, b in pairs])
    else:
        terms = torch.stack([_movement(a, b, acc).mean() for a, b in pairs])
    if s.zeta2_form == Zeta2Form.MONOTONICITY:
        D = torch.cat([_movement(h[0], h[1], acc).mean().reshape(1), terms])  # D_0 .. D_L
        rises = D[1:] - D[:-1]
        zeta2 = rises.clamp(min=0).sum() / (rises.abs().sum() + 1e-12)
    else:
        zeta2 = (w[1:].to(terms) * terms).sum()
    return LossParts(total=zeta1 + s.alpha * zeta2, zeta1=zeta1.detach(), zeta2=zeta2.detach(),
                     kl_per_layer=kl.detach(), zeta2_per_layer=terms.detach())
