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
``reference_self_distillation_loss`` materializes everything with plain autograd; tests hold the two equal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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


def _check_options(alpha: float, kl_direction: str, last_state: str, zeta2_form: str
                   ) -> tuple[KLDirection, LastState, Zeta2Form]:
    if not alpha >= 0:
        raise SdlibError(f"alpha must be >= 0, got {alpha}")
    return (parse(KLDirection, kl_direction, "KL direction"), parse(LastState, last_state, "last state"),
            parse(Zeta2Form, zeta2_form, "zeta2 form"))


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


class LensKL(torch.autograd.Function):
    """zeta1 = sum_l w_l mean_tokens KL over all lens layers, with gradients computed in the forward pass.

    Inputs: weights [n_layers], lm_head weight [V, d], bias [V] or None, teacher log-prob function,
    direction, chunk size, compute dtype, the logit transform, then the n_layers normed student states [N, d]
    each. Outputs: zeta1 (scalar, differentiable) and the per-layer mean KL [n_layers] (not differentiable).
    """

    @staticmethod
    def forward(ctx, weights, lm_weight, lm_bias, teacher_logprobs, direction, chunk_size, compute_dtype, transform,
                *states):
        n_layers, n_tokens = len(states), states[0].shape[0]
        need_h = [ctx.needs_input_grad[8 + i] for i in range(n_layers)]
        need_w, need_b = ctx.needs_input_grad[1], lm_bias is not None and ctx.needs_input_grad[2]
        need_any = any(need_h) or need_w or need_b
        w_c = lm_weight.to(compute_dtype)
        acc = torch.float64 if compute_dtype == torch.float64 else torch.float32  # gradient accumulators
        grad_h = [torch.zeros(s.shape, dtype=acc, device=s.device) if need else None
                  for s, need in zip(states, need_h)]
        grad_w = torch.zeros(lm_weight.shape, dtype=acc, device=lm_weight.device) if need_w else None
        grad_b = torch.zeros(lm_bias.shape, dtype=acc, device=lm_bias.device) if need_b else None
        kl_sum = torch.zeros(n_layers, dtype=torch.float64, device=lm_weight.device)
        scale = (weights.to(torch.float64) / n_tokens).tolist()  # python floats: one host sync per call
        vocab = lm_weight.shape[0]
        # [chunk, V] buffers reused for every layer and chunk (three for the forward KL, four for the reverse):
        # no per-layer allocation (page faults on the CPU, allocator churn on the GPU); every pass is in place,
        # the log-softmax included (one fused kernel; torch.logsumexp would allocate a [chunk, V] temporary).
        rows = min(chunk_size, n_tokens)
        z_buf = torch.empty(rows, vocab, dtype=acc, device=lm_weight.device)
        p_buf = torch.empty_like(z_buf)
        t_buf = torch.empty_like(z_buf)  # the row dot products' element-wise products
        logp_buf = torch.empty_like(z_buf) if direction == "reverse" else None
        # the soft-cap's derivative per logit, kept for the gradient (only when the model soft-caps)
        dcap_buf = torch.empty_like(z_buf) if transform.softcap and need_any else None
        for s in range(0, n_tokens, chunk_size):
            e = min(s + chunk_size, n_tokens)
            z, p, t = z_buf[: e - s], p_buf[: e - s], t_buf[: e - s]
            if direction == "forward":
                logp = teacher_logprobs(s, e, z)
                neg_entropy = _rowdot(torch.exp(logp, out=p), logp, t)  # sum p log p per token
            else:
                logp = teacher_logprobs(s, e, logp_buf[: e - s])
            for layer, state in enumerate(states):
                if scale[layer] == 0:  # a layer left out of a sampled estimate: not computed at all
                    continue
                h = state[s:e].to(compute_dtype)
                if compute_dtype == acc:
                    torch.mm(h, w_c.T, out=z)
                else:
                    z.copy_(h @ w_c.T)
                if lm_bias is not None:
                    z.add_(lm_bias)
                transform.apply_(z, None if dcap_buf is None else dcap_buf[: e - s])
                torch.log_softmax(z, dim=-1, out=z)  # z is now log q
                if direction == "forward":  # KL(p || q) = sum p log p - sum p log q; d/dz = q - p
                    kl = neg_entropy - _rowdot(p, z, t)
                    g = z.exp_().sub_(p) if need_any else None
                else:  # KL(q || p) = sum q (log q - log p); d/dz_j = q_j (log q_j - log p_j - KL)
                    diff = torch.sub(z, logp, out=p)
                    q = z.exp_()
                    kl = _rowdot(q, diff, t)
                    g = q.mul_(diff.sub_(kl[:, None])) if need_any else None
                kl_sum[layer] += kl.sum(dtype=torch.float64)
                if g is None:
                    continue
                if dcap_buf is not None:  # back through the soft-cap and the scale to lm_head's output
                    g.mul_(dcap_buf[: e - s])
                if transform.scale != 1.0:
                    g.mul_(transform.scale)
                g_c = g if compute_dtype == acc else g.to(compute_dtype)
                if grad_h[layer] is not None:
                    out = grad_h[layer][s:e]
                    if compute_dtype == acc:
                        torch.mm(g_c, w_c, out=out)
                    else:
                        out.copy_(g_c @ w_c)
                    out.mul_(scale[layer])
                if grad_w is not None:
                    if compute_dtype == acc:
                        grad_w.addmm_(g_c.T, h, alpha=scale[layer])
                    else:
                        grad_w.add_(g_c.T @ h, alpha=scale[layer])
                if grad_b is not None:
                    grad_b.add_(g.sum(0), alpha=scale[layer])
        kl_mean = (kl_sum / n_tokens).to(acc)
        skipped = torch.tensor([v == 0 for v in scale], device=kl_mean.device)
        zeta1 = (weights.to(acc) * kl_mean).sum()
        kl_mean = kl_mean.masked_fill(skipped, float("nan"))
        ctx.grads = (grad_w, grad_b, grad_h, [s.dtype for s in states], lm_weight.dtype)
        ctx.mark_non_differentiable(kl_mean)
        return zeta1, kl_mean

    @staticmethod
    def backward(ctx, grad_zeta1, _grad_kl):
        grad_w, grad_b, grad_h, dtypes, w_dtype = ctx.grads
        del ctx.grads
        scale = grad_zeta1
        gw = None if grad_w is None else (grad_w * scale).to(w_dtype)
        gb = None if grad_b is None else (grad_b * scale).to(w_dtype)
        gh = [None if g is None else (g * scale).to(dt) for g, dt in zip(grad_h, dtypes)]
        return (None, gw, gb, None, None, None, None, None, *gh)


def self_distillation_loss(pre_norm_states: Sequence[torch.Tensor], final_norm: nn.Module, lm_head: nn.Linear,
                           teacher: TeacherHead | torch.Tensor, *, alpha: float = 1.0, k: float = 0.25,
                           attention_mask: torch.Tensor | None = None, last_state: LastState | str = "normed",
                           kl_direction: KLDirection | str = "forward", chunk_size: int = 1024,
                           compute_dtype: torch.dtype | None = None, zeta2_form: Zeta2Form | str = "relative_step",
                           lens_samples: int = 0, generator: torch.Generator | None = None,
                           logit_transform: LogitTransform = IDENTITY, zeta1: bool = True) -> LossParts:
    """zeta for one batch (see the module doc), chunked: O(chunk x vocab) extra memory.

    pre_norm_states: (h_{-1}, h_0, ..., h_L) as L + 2 tensors [batch, seq, d], with h_L the *raw* output
        of decoder layer L (``sdlib.states.forward_states(...)["pre_norm"]``); the final norm is applied here.
    teacher: a ``TeacherHead`` (teacher's final normed states + its lm_head) or precomputed teacher logits
        or log-probs [batch, seq, vocab].
    attention_mask: [batch, seq], 1 = token counts in the means; None = all tokens.
    compute_dtype: matmul dtype of the lens (default: lm_head's dtype, or the autocast dtype when active).
    zeta2_form: ``relative_step`` (the paper), ``cosine`` or ``monotonicity`` (see ``zeta2_terms``).
    lens_samples: 0 = every layer (exact zeta1); m > 0 = an unbiased estimate from m layers drawn with
        replacement with probability w_l (``sample_lens_weights``); the others are not computed and their
        ``kl_per_layer`` entries are NaN.
    logit_transform: what the model applies to lm_head's output (``sdlib.parts.DecoderParts.transform``).
    zeta1: False leaves the lens KL out (zeta = alpha * zeta2; no lens is computed, ``kl_per_layer`` is NaN).
    """
    kl_direction, last_state, zeta2_form = _check_options(alpha, kl_direction, last_state, zeta2_form)
    if chunk_size < 1:
        raise SdlibError(f"chunk_size must be >= 1, got {chunk_size}")
    num_layers = len(pre_norm_states) - 1  # L + 1
    valid = _valid_tokens(attention_mask)
    flat = [_flat(h, valid) for h in pre_norm_states]
    normed = [final_norm(h) for h in flat[1:]]  # lens inputs of layers 0..L
    weights = layer_weights(num_layers, k).to(flat[0].device, torch.float64 if flat[0].dtype == torch.float64
                                              else torch.float32)
    if compute_dtype is None:
        device_type = flat[0].device.type
        compute_dtype = (torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type)
                         else lm_head.weight.dtype)
    if not zeta1:
        return _loss_parts(*_no_zeta1(weights), flat, normed[-1], weights, alpha, last_state, zeta2_form,
                           torch.zeros(num_layers, dtype=torch.bool))
    teacher_fn = _teacher_logprobs_fn(teacher, valid, compute_dtype)
    lens_weights = weights if not lens_samples else sample_lens_weights(weights, lens_samples, generator)
    zeta1, kl_per_layer = LensKL.apply(lens_weights, lm_head.weight, lm_head.bias, teacher_fn, kl_direction,
                                       chunk_size, compute_dtype, logit_transform, *normed)
    return _loss_parts(zeta1, kl_per_layer, flat, normed[-1], weights, alpha, last_state, zeta2_form,
                       None if not lens_samples else (lens_weights > 0).cpu())


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
                normed_last: torch.Tensor, weights: torch.Tensor, alpha: float, last_state: str,
                zeta2_form: str = "relative_step", computed_layers: torch.Tensor | None = None) -> LossParts:
    """Add alpha * zeta2 to zeta1 and package the parts (shared by the chunked and the reference loss)."""
    zeta2, per_layer = zeta2_terms(flat, normed_last, weights, last_state, zeta2_form)
    return LossParts(total=zeta1 + alpha * zeta2, zeta1=zeta1.detach(), zeta2=zeta2.detach(),
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


def reference_self_distillation_loss(pre_norm_states: Sequence[torch.Tensor], final_norm: nn.Module,
                                     lm_head: nn.Linear, teacher: TeacherHead | torch.Tensor, *, alpha: float = 1.0,
                                     k: float = 0.25, attention_mask: torch.Tensor | None = None,
                                     last_state: LastState | str = "normed", kl_direction: KLDirection | str = "forward",
                                     chunk_size: int | None = None, compute_dtype: torch.dtype | None = None,
                                     zeta2_form: Zeta2Form | str = "relative_step", lens_samples: int = 0,
                                     generator: torch.Generator | None = None,
                                     logit_transform: LogitTransform = IDENTITY, zeta1: bool = True) -> LossParts:
    """The plain version of ``self_distillation_loss``: every layer's logits materialized, fp32 log-softmax,
    autograd keeps everything. For tests and benchmarks only; same arguments (``chunk_size``,
    ``compute_dtype``, ``lens_samples`` and ``generator`` are accepted and ignored: zeta1 is always exact) and
    result."""
    kl_direction, last_state, zeta2_form = _check_options(alpha, kl_direction, last_state, zeta2_form)
    num_layers = len(pre_norm_states) - 1
    valid = _valid_tokens(attention_mask)
    flat = [_flat(h, valid) for h in pre_norm_states]
    if isinstance(teacher, TeacherHead):
        t_logits = teacher.transform(F.linear(_flat(teacher.hidden, valid), teacher.weight, teacher.bias))
    else:
        t_logits = _flat(teacher, valid)
    acc = torch.float64 if lm_head.weight.dtype == torch.float64 else torch.float32
    logp = torch.log_softmax(t_logits.detach().to(acc), dim=-1)
    normed = [final_norm(h) for h in flat[1:]]
    if not zeta1:
        weights = layer_weights(num_layers, k).to(flat[0].device, torch.float32)
        return _loss_parts(*_no_zeta1(weights), flat, normed[-1], weights, alpha, last_state, zeta2_form,
                           torch.zeros(num_layers, dtype=torch.bool))
    all_logq = torch.stack([torch.log_softmax(logit_transform(lm_head(h)).to(acc), dim=-1) for h in normed])  # [L+1, N, V]
    if kl_direction == "forward":
        kl = (logp.exp() * (logp - all_logq)).sum(-1).mean(-1)
    else:
        kl = (all_logq.exp() * (all_logq - logp)).sum(-1).mean(-1)
    weights = layer_weights(num_layers, k).to(kl)
    return _loss_parts((weights * kl).sum(), kl, flat, normed[-1], weights, alpha, last_state, zeta2_form)
