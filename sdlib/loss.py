"""The self-distillation loss (paper Section 3), exactly as defined there.

    zeta  = zeta1 + alpha * zeta2
    zeta1 = sum_{l=0..L} w_l KL(q_teacher || q_l)                 mean over tokens
    zeta2 = sum_{l=1..L} w_l ||h_l - h_{l-1}||^2 / ||h_{l-1}||^2   mean over tokens (no embedding step)
    w_l   = exp(k l) / sum_{i=0..L} exp(k i)

q_l is the logit lens of layer l (final norm + lm_head; at l = L the model's own output) and q_teacher
the output distribution of the frozen pretrained model. zeta2's h_L follows the chosen last-state
convention (``normed`` by default, or ``pre_norm``). The KL is forward, KL(teacher || student), by
default; ``kl_direction="reverse"`` gives KL(student || teacher).

zeta1 never holds every layer's logits: ``LensKL`` walks token chunks (outer) and layers (inner),
computes each chunk's KL and its gradient with respect to the normed states and lm_head at once, and
keeps only the gradients, so the extra memory is O(chunk x vocab) plus one lm_head-sized buffer.
``references/loss.py`` writes the loss out plainly (every layer's logits, plain autograd); tests hold the two
equal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import nn

from sdlib.errors import SdlibError
from sdlib.metrics import movement, soft_non_monotonicity
from sdlib.parts import IDENTITY, LogitTransform
from sdlib.types import KLDirection, LastState, Zeta2Form, parse


def layer_weights(num_layers: int, k: float) -> torch.Tensor:
    """w_l = exp(k l) / sum_{i=0..L} exp(k i) for l = 0..L.

    num_layers = L + 1 -> Tensor [L + 1] float64, summing to 1 (increasing in l for k > 0, uniform for k = 0);
    callers cast it to the dtype they compute in.
    """
    if num_layers < 1:
        raise SdlibError(f"num_layers must be at least 1, got {num_layers}")
    return torch.softmax(k * torch.arange(num_layers, dtype=torch.float64), dim=0)


def with_last_weight(weights: torch.Tensor, last_weight: float) -> torch.Tensor:
    """The layer weights with the last one set to ``last_weight`` and the others scaled to share 1 - last_weight:
    [L + 1] -> [L + 1], summing to 1 (``last_weight`` 0: ``weights`` unchanged)."""
    if not last_weight:
        return weights
    out = weights * ((1.0 - last_weight) / weights[:-1].sum())
    out[-1] = last_weight
    return out


@dataclass
class TeacherHead:
    """The teacher's output distribution, produced chunk by chunk from its final (normed) hidden states.

    hidden: [tokens, d] (or [batch, seq, d]); weight: [vocab, d]; bias: [vocab] or None.
    """

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None = None
    transform: LogitTransform = IDENTITY


@dataclass
class LossParts:
    """zeta and its parts. ``total`` carries the gradient; the rest are detached, for logging."""

    total: torch.Tensor
    zeta1: torch.Tensor
    zeta2: torch.Tensor
    kl_per_layer: torch.Tensor  # [L + 1]: mean-over-tokens KL of layers 0..L
    zeta2_per_layer: torch.Tensor  # [L]: the zeta2 form's per-layer terms, l = 1..L
    computed_layers: torch.Tensor | None = None  # [L + 1] bool: lens layers in a sampled zeta1 (None = all)

    def sampled_out(self, layer: int) -> bool:
        """True when ``layer`` was left out of a sampled zeta1 estimate (its KL entry is NaN by design)."""
        return self.computed_layers is not None and not bool(self.computed_layers[layer])


@dataclass(frozen=True)
class LossSettings:
    """What zeta is: the paper's two knobs, the readings it leaves open, and how zeta1 is computed. The
    training config holds one (``TrainConfig.loss``); words are parsed into their enums and checked here."""

    alpha: float = 1.0
    """weight of zeta2"""
    k: float = 0.25
    """w_l = softmax(k l)"""
    kl_direction: KLDirection = KLDirection.FORWARD
    """``forward``: KL(teacher || lens_l); ``reverse``: KL(lens_l || teacher)"""
    last_state: LastState = LastState.NORMED
    """zeta2's h_L: after the final norm (``normed``) or decoder layer L's raw output (``pre_norm``)"""
    zeta2_form: Zeta2Form = Zeta2Form.RELATIVE_STEP
    """``relative_step`` (the paper), ``cosine`` or ``monotonicity`` (see ``zeta2_terms``)"""
    zeta1: bool = True
    """False leaves the lens KL out (zeta = alpha zeta2; no lens is computed, ``kl_per_layer`` is NaN)"""
    lens_samples: int = 0
    """0: every lens layer (exact zeta1); m > 0: an unbiased estimate from m layers drawn with replacement with
    probability w_l (``sample_lens_weights``); the others are not computed and their KL entries are NaN"""
    chunk_size: int = 1024
    """tokens per chunk of the lens (memory O(chunk x vocab)); it does not change the value"""
    last_weight: float = 0.0
    """0: zeta1 weighs layer l by w_l (the paper); in (0, 1): the final layer's KL weighs ``last_weight`` and the
    others share the rest in proportion to w_l (``with_last_weight``; beyond the paper). zeta2 keeps w_l."""

    def __post_init__(self):
        for name, enum, what in (("kl_direction", KLDirection, "KL direction"), ("last_state", LastState, "last state"),
                                 ("zeta2_form", Zeta2Form, "zeta2 form")):
            object.__setattr__(self, name, parse(enum, getattr(self, name), what))
        if not (self.alpha >= 0 and math.isfinite(self.alpha)):
            raise SdlibError(f"alpha must be a finite number >= 0, got {self.alpha}")
        if not math.isfinite(self.k):
            raise SdlibError(f"k must be finite, got {self.k}")
        if self.chunk_size < 1:
            raise SdlibError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.lens_samples < 0:
            raise SdlibError(f"lens_samples must be >= 0 (0 = every lens layer), got {self.lens_samples}")
        if not 0 <= self.last_weight < 1:
            raise SdlibError(f"last_weight must be in [0, 1) (0 = the paper's weights), got {self.last_weight}")

    @classmethod
    def of(cls, settings: LossSettings | None, overrides: dict[str, Any]) -> LossSettings:
        """``settings`` (default: the defaults) with ``overrides`` over it; an unknown name is one clear error."""
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise SdlibError(f"unknown loss setting(s) {', '.join(unknown)}: use "
                             f"{', '.join(f.name for f in fields(cls))}")
        return replace(settings or cls(), **overrides)


def _flat(h: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    h = h.reshape(-1, h.shape[-1])
    return h if valid is None else h[valid]


def _valid_tokens(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    if attention_mask is None:
        return None
    valid = attention_mask.reshape(-1).bool()
    if not bool(valid.any()):
        raise SdlibError("the attention mask selects no tokens: the loss is undefined")
    return None if bool(valid.all()) else valid


def _teacher_logprobs_fn(teacher: TeacherHead | torch.Tensor, valid: torch.Tensor | None,
                         compute_dtype: torch.dtype) -> Callable[[int, int, torch.Tensor], torch.Tensor]:
    """(start, end, out) -> teacher log-probs of the flattened valid tokens start..end, written into ``out``
    [end - start, vocab] (float32, or float64 when computing in float64) and returned."""
    if isinstance(teacher, TeacherHead):
        hidden = _flat(teacher.hidden.detach(), valid)
        weight = teacher.weight.detach().to(compute_dtype)
        bias = None if teacher.bias is None else teacher.bias.detach()
        transform = teacher.transform

        def from_head(s: int, e: int, out: torch.Tensor) -> torch.Tensor:
            h = hidden[s:e].to(compute_dtype)
            if out.dtype == compute_dtype:
                torch.mm(h, weight.T, out=out)
            else:
                out.copy_(h @ weight.T)
            if bias is not None:
                out.add_(bias)
            transform.apply_(out)
            return torch.log_softmax(out, dim=-1, out=out)

        return from_head
    flat = _flat(teacher.detach(), valid)

    def from_logits(s: int, e: int, out: torch.Tensor) -> torch.Tensor:  # accepts logits or log-probs
        out.copy_(flat[s:e])
        return torch.log_softmax(out, dim=-1, out=out)

    return from_logits


def _rowdot(a: torch.Tensor, b: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """sum_j a_ij b_ij per row, [n, V] x [n, V] -> [n], the products written into ``scratch`` [n, V] (reused:
    no allocation). Two passes; on a 2-core CPU ~3x faster than a batched [1, V] x [V, 1] matrix product."""
    return torch.mul(a, b, out=scratch).sum(dim=-1)


@dataclass(frozen=True)
class LensOptions:
    """How ``LensKL`` computes: the teacher's log-probs per chunk, the KL direction, the chunk size, the matmul
    dtype and the model's logit transform (the autograd function's one non-tensor input)."""

    teacher_logprobs: Callable[[int, int, torch.Tensor], torch.Tensor]
    direction: KLDirection
    chunk_size: int
    compute_dtype: torch.dtype
    transform: LogitTransform


class _Buffers:
    """The [rows, V] buffers every layer and chunk reuses: no per-layer allocation (page faults on the CPU,
    allocator churn on the GPU). ``z``: the lens logits, then log q, then the gradient; ``p``: the teacher's
    probabilities (forward KL) or log q - log p (reverse); ``t``: the row dot products' products; ``logp``: the
    teacher's log-probs (reverse only); ``dcap``: the soft-cap's derivative (only when the model soft-caps)."""

    def __init__(self, rows: int, vocab: int, dtype: torch.dtype, device, reverse: bool, softcap: bool):
        self.z = torch.empty(rows, vocab, dtype=dtype, device=device)
        self.p, self.t = torch.empty_like(self.z), torch.empty_like(self.z)
        self.logp = torch.empty_like(self.z) if reverse else None
        self.dcap = torch.empty_like(self.z) if softcap else None

    def rows(self, n: int) -> tuple[torch.Tensor, ...]:
        """The first ``n`` rows of z, p, t, logp, dcap (None where absent)."""
        return tuple(None if b is None else b[:n] for b in (self.z, self.p, self.t, self.logp, self.dcap))


class _LensGrads:
    """The gradient accumulators of ``LensKL``: one per normed state that needs it [N, d], lm_head's weight
    [V, d] and bias [V]. Each layer's logit gradient g [rows, V] is folded in with the layer's weight / N."""

    def __init__(self, states, lm_weight, lm_bias, need_h, need_w: bool, need_b: bool, dtype: torch.dtype):
        self.h = [torch.zeros(s.shape, dtype=dtype, device=s.device) if need else None for s, need in zip(states, need_h)]
        self.w = torch.zeros(lm_weight.shape, dtype=dtype, device=lm_weight.device) if need_w else None
        self.b = torch.zeros(lm_bias.shape, dtype=dtype, device=lm_bias.device) if need_b else None

    @property
    def needed(self) -> bool:
        return self.w is not None or self.b is not None or any(g is not None for g in self.h)

    def add(self, layer: int, s: int, e: int, g: torch.Tensor, h: torch.Tensor, w_c: torch.Tensor, scale: float):
        """dL/dh_layer[s:e] = scale g W, dL/dW += scale g^T h, dL/db += scale sum g (in place)."""
        same = g.dtype == w_c.dtype
        g_c = g if same else g.to(w_c.dtype)
        if self.h[layer] is not None:
            out = self.h[layer][s:e]
            if same:
                torch.mm(g_c, w_c, out=out)
            else:
                out.copy_(g_c @ w_c)
            out.mul_(scale)
        if self.w is not None:
            if same:
                self.w.addmm_(g_c.T, h, alpha=scale)
            else:
                self.w.add_(g_c.T @ h, alpha=scale)
        if self.b is not None:
            self.b.add_(g.sum(0), alpha=scale)


def _lens_logprobs(h: torch.Tensor, w_c: torch.Tensor, bias, transform: LogitTransform, z: torch.Tensor,
                   dcap: torch.Tensor | None) -> torch.Tensor:
    """log q = log_softmax(transform(h W^T + b)) written into z [rows, V] (in place after the matmul); the
    soft-cap's derivative into ``dcap`` when given."""
    if h.dtype == z.dtype:
        torch.mm(h, w_c.T, out=z)
    else:
        z.copy_(h @ w_c.T)
    if bias is not None:
        z.add_(bias)
    transform.apply_(z, dcap)
    return torch.log_softmax(z, dim=-1, out=z)  # one fused kernel; logsumexp would allocate a [rows, V] temporary


def _kl_and_logit_grad(logq: torch.Tensor, p: torch.Tensor, t: torch.Tensor, logp: torch.Tensor | None,
                       neg_entropy: torch.Tensor | None, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token KL [rows] and its gradient with respect to the logits [rows, V] (in logq's buffer, or None).

    Forward (``logp`` None): KL(p || q) = sum p log p - sum p log q, d/dz = q - p, with p the teacher's
    probabilities and ``neg_entropy`` = sum p log p. Reverse: KL(q || p) = sum q (log q - log p),
    d/dz_j = q_j (log q_j - log p_j - KL); ``p`` is then free and takes log q - log p."""
    if logp is None:
        kl = neg_entropy - _rowdot(p, logq, t)
        return kl, (logq.exp_().sub_(p) if need_grad else None)
    diff = torch.sub(logq, logp, out=p)
    q = logq.exp_()
    kl = _rowdot(q, diff, t)
    return kl, (q.mul_(diff.sub_(kl[:, None])) if need_grad else None)


class LensKL(torch.autograd.Function):
    """zeta1 = sum_l w_l mean_tokens KL over all lens layers, with gradients computed in the forward pass.

    Inputs (``SLOTS``, then the states): weights [n_layers], lm_head weight [V, d], bias [V] or None,
    ``LensOptions``, then the n_layers normed student states [N, d] each. Outputs: zeta1 (scalar,
    differentiable) and the per-layer mean KL [n_layers] (not differentiable). Token chunks are the outer loop,
    layers the inner one, so the teacher's log-probs of a chunk are computed once.
    """

    SLOTS = ("weights", "lm_weight", "lm_bias", "options")

    @staticmethod
    def forward(ctx, weights, lm_weight, lm_bias, options: LensOptions, *states):
        need = dict(zip(LensKL.SLOTS, ctx.needs_input_grad))
        n_layers, n_tokens = len(states), states[0].shape[0]
        w_c = lm_weight.to(options.compute_dtype)
        acc = torch.float64 if options.compute_dtype == torch.float64 else torch.float32
        grads = _LensGrads(states, lm_weight, lm_bias, ctx.needs_input_grad[len(LensKL.SLOTS):], need["lm_weight"],
                           lm_bias is not None and need["lm_bias"], acc)
        reverse = options.direction == KLDirection.REVERSE
        buffers = _Buffers(min(options.chunk_size, n_tokens), lm_weight.shape[0], acc, lm_weight.device, reverse,
                           bool(options.transform.softcap) and grads.needed)
        kl_sum = torch.zeros(n_layers, dtype=torch.float64, device=lm_weight.device)
        scale = (weights.to(torch.float64) / n_tokens).tolist()  # python floats: one host sync per call
        for s in range(0, n_tokens, options.chunk_size):
            e = min(s + options.chunk_size, n_tokens)
            z, p, t, logp, dcap = buffers.rows(e - s)
            neg_entropy = None
            if reverse:
                options.teacher_logprobs(s, e, logp)
            else:
                teacher = options.teacher_logprobs(s, e, z)
                neg_entropy = _rowdot(torch.exp(teacher, out=p), teacher, t)  # sum p log p per token
            for layer, state in enumerate(states):
                if scale[layer] == 0:  # a layer left out of a sampled estimate: not computed at all
                    continue
                h = state[s:e].to(options.compute_dtype)
                logq = _lens_logprobs(h, w_c, lm_bias, options.transform, z, dcap)
                kl, g = _kl_and_logit_grad(logq, p, t, logp, neg_entropy, grads.needed)
                kl_sum[layer] += kl.sum(dtype=torch.float64)
                if g is None:
                    continue
                if dcap is not None:  # back through the soft-cap and the scale to lm_head's output
                    g.mul_(dcap)
                if options.transform.scale != 1.0:
                    g.mul_(options.transform.scale)
                grads.add(layer, s, e, g, h, w_c, scale[layer])
        kl_mean = (kl_sum / n_tokens).to(acc)
        zeta1 = (weights.to(acc) * kl_mean).sum()
        kl_mean = kl_mean.masked_fill(torch.tensor([v == 0 for v in scale], device=kl_mean.device), float("nan"))
        ctx.grads, ctx.dtypes = grads, ([s.dtype for s in states], lm_weight.dtype)
        ctx.mark_non_differentiable(kl_mean)
        return zeta1, kl_mean

    @staticmethod
    def backward(ctx, grad_zeta1, _grad_kl):
        grads, (state_dtypes, w_dtype) = ctx.grads, ctx.dtypes
        del ctx.grads
        gw = None if grads.w is None else (grads.w * grad_zeta1).to(w_dtype)
        gb = None if grads.b is None else (grads.b * grad_zeta1).to(w_dtype)
        gh = [None if g is None else (g * grad_zeta1).to(dt) for g, dt in zip(grads.h, state_dtypes)]
        slots = {"weights": None, "lm_weight": gw, "lm_bias": gb, "options": None}
        return (*(slots[name] for name in LensKL.SLOTS), *gh)


def self_distillation_loss(pre_norm_states: Sequence[torch.Tensor], final_norm: nn.Module, lm_head: nn.Linear,
                           teacher: TeacherHead | torch.Tensor, settings: LossSettings | None = None, *,
                           attention_mask: torch.Tensor | None = None, compute_dtype: torch.dtype | None = None,
                           generator: torch.Generator | None = None, logit_transform: LogitTransform = IDENTITY,
                           **overrides) -> LossParts:
    """zeta for one batch (see the module doc), chunked: O(chunk x vocab) extra memory.

    pre_norm_states: (h_{-1}, h_0, ..., h_L) as L + 2 tensors [batch, seq, d], with h_L the *raw* output
        of decoder layer L (``sdlib.states.forward_states(...)["pre_norm"]``); the final norm is applied here.
    teacher: a ``TeacherHead`` (teacher's final normed states + its lm_head) or precomputed teacher logits
        or log-probs [batch, seq, vocab].
    settings: what zeta is (``LossSettings``; default: the paper's alpha 1, k 0.25); ``overrides`` change any of
        its fields for this call (``alpha=0.0``, ``lens_samples=4``, ...).
    attention_mask: [batch, seq], 1 = token counts in the means; None = all tokens.
    compute_dtype: matmul dtype of the lens (default: lm_head's dtype, or the autocast dtype when active).
    generator: the CPU generator that draws a sampled zeta1's layers (default: the global one).
    logit_transform: what the model applies to lm_head's output (``sdlib.parts.DecoderParts.transform``).
    """
    settings = LossSettings.of(settings, overrides)
    valid = _valid_tokens(attention_mask)
    flat = [_flat(h, valid) for h in pre_norm_states]
    normed = [final_norm(h) for h in flat[1:]]  # lens inputs of layers 0..L
    num_layers = len(normed)  # L + 1
    weights = layer_weights(num_layers, settings.k).to(flat[0].device, torch.float64 if flat[0].dtype == torch.float64
                                                       else torch.float32)
    if not settings.zeta1:
        return _loss_parts(*_no_zeta1(weights), flat, normed[-1], weights, settings,
                           torch.zeros(num_layers, dtype=torch.bool))
    if compute_dtype is None:
        device_type = flat[0].device.type
        compute_dtype = (torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type)
                         else lm_head.weight.dtype)
    options = LensOptions(_teacher_logprobs_fn(teacher, valid, compute_dtype), settings.kl_direction,
                          settings.chunk_size, compute_dtype, logit_transform)
    sampled = settings.lens_samples > 0
    kl_weights = with_last_weight(weights, settings.last_weight)
    lens_weights = sample_lens_weights(kl_weights, settings.lens_samples, generator) if sampled else kl_weights
    zeta1, kl_per_layer = LensKL.apply(lens_weights, lm_head.weight, lm_head.bias, options, *normed)
    return _loss_parts(zeta1, kl_per_layer, flat, normed[-1], weights, settings,
                       (lens_weights > 0).cpu() if sampled else None)


def _no_zeta1(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """zeta1 = 0 and an all-NaN per-layer KL [L + 1]: the loss without its lens term."""
    return weights.new_zeros(()), torch.full_like(weights, float("nan"))


def sample_lens_weights(weights: torch.Tensor, m: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Importance-sampled layer weights for an unbiased zeta1: [L + 1] -> [L + 1].

    Draw m layers with replacement with probability pi_l = w_l; layer l drawn c_l times gets weight c_l / m.
    Then sum_l (c_l / m) KL_l = (1/m) sum_draws w_l KL_l / pi_l, whose expectation is sum_l w_l KL_l = zeta1.
    Uses the CPU generator (the global one by default, so a resumed run draws the same layers).
    """
    if m < 1:
        raise SdlibError(f"lens_samples must be >= 1 to subsample (0 = all layers), got {m}")
    probs = weights.detach().to("cpu", torch.float64)
    draws = torch.multinomial(probs, m, replacement=True, generator=generator)
    counts = torch.bincount(draws, minlength=len(probs)).to(weights.dtype)
    return (counts / m).to(weights.device)


def _loss_parts(zeta1: torch.Tensor, kl_per_layer: torch.Tensor, flat: Sequence[torch.Tensor],
                normed_last: torch.Tensor, weights: torch.Tensor, settings: LossSettings,
                computed_layers: torch.Tensor | None = None) -> LossParts:
    """Add alpha * zeta2 to zeta1 and package the parts ."""
    zeta2, per_layer = zeta2_terms(flat, normed_last, weights, settings.last_state, settings.zeta2_form)
    return LossParts(total=zeta1 + settings.alpha * zeta2, zeta1=zeta1.detach(), zeta2=zeta2.detach(),
                     kl_per_layer=kl_per_layer.detach(), zeta2_per_layer=per_layer.detach(),
                     computed_layers=computed_layers)


def relative_step(h_prev: torch.Tensor, h_next: torch.Tensor) -> torch.Tensor:
    """||h_next - h_prev||^2 / ||h_prev||^2 per token: [..., d], [..., d] -> [...] (float32, or float64)."""
    dtype = torch.float64 if h_prev.dtype == torch.float64 else torch.float32
    prev, nxt = h_prev.to(dtype), h_next.to(dtype)
    return (nxt - prev).pow(2).sum(-1) / prev.pow(2).sum(-1).clamp_min(1e-12)


def zeta2_terms(flat: Sequence[torch.Tensor], normed_last: torch.Tensor, weights: torch.Tensor, last_state: str,
                form: str = "relative_step") -> tuple[torch.Tensor, torch.Tensor]:
    """zeta2 and its per-layer terms [L] (flat = [h_{-1}, h_0, ..., h_L pre-norm], each [N, d]; h_L per
    ``last_state``), for the three forms:

    * ``relative_step`` (the paper): sum_{l=1..L} w_l mean ||h_l - h_{l-1}||^2 / ||h_{l-1}||^2;
    * ``cosine``: sum_{l=1..L} w_l mean D_l, D = 1 - (1 + cos) / 2: penalises direction changes, what D
      and S measure, and not norm growth;
    * ``monotonicity``: 1 - S_soft of the batch's curve D_0..D_L (``metrics.soft_non_monotonicity``): zero
      when the movement never rises, whatever its size. Per-layer terms: D_1..D_L.
    """

    states = list(flat[1:])  # h_0 .. h_L
    if last_state == "normed":
        states[-1] = normed_last
    if len(states) < 2:
        zero = states[0].new_zeros((), dtype=torch.float32)
        return zero, zero.new_zeros(0)
    if form == "relative_step":
        terms = torch.stack([relative_step(a, b).mean() for a, b in zip(states[:-1], states[1:])])
        return (weights[1:] * terms).sum(), terms
    D = torch.stack([movement(a, b).mean() for a, b in zip([flat[0], *states[:-1]], states)])  # D_0..D_L
    if form == "cosine":
        return (weights[1:] * D[1:]).sum(), D[1:]
    return soft_non_monotonicity(D), D[1:]
