"""Fold the final norm's per-channel gain into the output head: a change of coordinates, not of the computation.

The final norm computes h_L = g * n(x_L) (n: x / rms(x) for an RMSNorm, (x - mean) / std for a LayerNorm; Gemma's
norm applies 1 + w, so g = 1 + w there) and the head reads W h_L. The logits depend on W diag(g) only, so

    W' = W diag(g) / c,    g' = c    (one scalar c, by default the root mean square of g)

gives the same logits and the same logit-lens prediction at every layer (every lens goes through the same norm
and head), while the folded model's normed h_L = c * x_L / rms(x_L) points where the last block's raw output x_L
points: its normed D_L is the original model's pre-norm D_L. A LayerNorm's bias b folds exactly as b' = c b / g
(refused when a channel's gain is 0). A tied head is untied first (the embedding is left as it is).

``fold_final_norm(model)`` does this in place on any decoder ``sdlib.parts`` resolves, checks on a forward pass
that no logit moved (restoring the model and refusing, in one line, when one did), and returns the same
transformers model: ``save_pretrained`` writes it as a normal Hugging Face folder, and its config says what was
done (``config.sdlib_final_norm_fold``).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from sdlib.errors import SdlibError
from sdlib.parts import decoder_parts, norm_eps, unwrap
from sdlib.provenance import fsync_tree

FOLD_KEY = "sdlib_final_norm_fold"
"""the config attribute a folded model carries (what was folded, the scale, the check's largest logit change)"""


@dataclass(frozen=True)
class NormForm:
    """What a final norm computes, read off the module: h = (offset + weight) * n(x) (+ bias), with n the RMS
    normalisation (``centred`` False) or the LayerNorm one (``centred`` True)."""

    centred: bool
    offset: float
    bias: bool

    def describe(self) -> str:
        kind = "LayerNorm" if self.centred else "RMSNorm"
        gain = "1 + weight" if self.offset else "weight"
        return f"{kind}, gain {gain}" + (", with a bias" if self.bias else "")


@dataclass(frozen=True)
class FoldInfo:
    """What ``fold_final_norm`` did (saved in the folded model's config)."""

    norm: str
    """the final norm's form (``NormForm.describe``)"""
    scale: float
    """c: the folded norm's gain in every channel"""
    untied: bool
    """the head was tied to the embedding and is now a weight of its own"""
    check_max_logit_diff: float
    """the largest logit change on the check's forward pass (a few tokens; ``sdlib fold`` reports the standard
    windows)"""


@torch.no_grad()
def norm_form(norm: nn.Module) -> NormForm:
    """Which ``NormForm`` ``norm`` computes, found by running it on a probe and matching each candidate to
    rel 1e-4; anything else is one ``SdlibError`` (sdlib does not guess at a norm it cannot fold)."""
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        raise SdlibError(f"the final norm {type(norm).__name__} has no per-channel weight: there is no gain to fold")
    bias = getattr(norm, "bias", None)
    bias = bias if isinstance(bias, torch.Tensor) else None
    d = weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(4, d, generator=generator, dtype=torch.float64) * 3 + 0.5)
    out = norm(x.to(weight.dtype)).double()
    w = weight.double().cpu()
    b = bias.double().cpu() if bias is not None else torch.zeros(d, dtype=torch.float64)
    eps = norm_eps(norm, 1e-6)
    normalised = {False: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps),
                  True: (x - x.mean(-1, keepdim=True)) * torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + eps)}
    tolerance = 1e-4 if weight.dtype in (torch.float32, torch.float64) else 2e-2
    for centred in (False, True):
        for offset in (0.0, 1.0):
            predicted = (offset + w) * normalised[centred] + b
            err = float((predicted - out.cpu()).abs().max() / max(1.0, float(out.abs().max())))
            if err <= tolerance:
                return NormForm(centred=centred, offset=offset, bias=bias is not None)
    raise SdlibError(f"the final norm {type(norm).__name__} computes neither g * x / rms(x) nor a LayerNorm (with a "
                     "weight, or 1 + weight): sdlib cannot fold its gain into the head")


def _tied(model: nn.Module, lm_head: nn.Linear) -> bool:
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embed, "weight", None)
    return isinstance(weight, torch.Tensor) and (weight is lm_head.weight
                                                 or weight.data_ptr() == lm_head.weight.data_ptr())


def _untie(model: nn.Module, parts) -> None:
    """Give lm_head a weight of its own (a copy) and say so in the config, so saving and loading keep it apart."""
    parts.lm_head.weight = nn.Parameter(parts.lm_head.weight.detach().clone(),
                                        requires_grad=parts.lm_head.weight.requires_grad)
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.tie_word_embeddings = False
    if hasattr(model, "get_expanded_tied_weights_keys"):
        model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)


def _check_ids(vocab: int, device: torch.device) -> torch.Tensor:
    return ((torch.arange(32, device=device) * 7919 + 11) % vocab)[None]


def fold_tolerance(dtype: torch.dtype) -> float:
    """The largest logit change, relative to the largest |logit|, that still counts as no change: rounding of the
    folded head in ``dtype`` (fp32: 1e-5)."""
    return 1e-5 if dtype in (torch.float32, torch.float64) else 8 * torch.finfo(dtype).eps


@torch.no_grad()
def fold_final_norm(model: nn.Module, scale: float | None = None) -> nn.Module:
    """Fold the final norm's gain into the head of ``model`` in place (see the module doc) and return it.

    ``scale`` is c, the folded norm's gain in every channel (default: the root mean square of g, so the normed
    state keeps its typical length). The fold is computed in float64 and rounded once to the head's dtype; a
    fold whose logits differ from the original's by more than ``fold_tolerance`` on a 32-token check is undone
    and refused. What was done is in ``model.config.sdlib_final_norm_fold`` (a ``FoldInfo`` as a dict).
    """
    model = unwrap(model)
    parts = decoder_parts(model)
    norm, head = parts.norm, parts.lm_head
    form = norm_form(norm)
    gain = norm.weight.detach().double() + form.offset
    c = float(gain.pow(2).mean().sqrt()) if scale is None else float(scale)
    if not (c > 0 and math.isfinite(c)):
        raise SdlibError(f"the fold's scale must be a finite number > 0, got {c}")
    if form.bias and bool((gain == 0).any()):
        raise SdlibError("the final LayerNorm has a channel with gain 0 and a bias: its bias cannot be folded exactly; "
                         "nothing was changed")
    device = head.weight.device
    ids = _check_ids(head.weight.shape[0], device)
    before = model(input_ids=ids, use_cache=False).logits.double()

    saved = {"norm": norm.weight.detach().clone(), "head": head.weight, "head_data": head.weight.detach().clone(),
             "bias": norm.bias.detach().clone() if form.bias else None,
             "tie": [(c_, c_.tie_word_embeddings) for c_ in (model.config, model.config.get_text_config())],
             "tied_keys": getattr(model, "all_tied_weights_keys", None)}
    untied = _tied(model, head)
    try:
        if untied:
            _untie(model, parts)
        new_head = head.weight.detach().double() * (gain / c)[None, :]
        head.weight.copy_(new_head.to(head.weight.dtype))
        if form.bias:
            norm.bias.copy_((c * norm.bias.double() / gain).to(norm.bias.dtype))
        norm.weight.fill_(c - form.offset)
        after = model(input_ids=ids, use_cache=False).logits.double()
        diff = float((after - before).abs().max())
        scale_ = max(1.0, float(before.abs().max()))
        if not diff <= fold_tolerance(head.weight.dtype) * scale_:
            raise SdlibError(f"folding the final norm's gain would change the logits by up to {diff:.3g} (largest "
                             f"|logit| {scale_:.3g}): refused, the model is left as it was")
    except BaseException:
        norm.weight.copy_(saved["norm"])
        if saved["bias"] is not None:
            norm.bias.copy_(saved["bias"])
        head.weight = saved["head"]
        head.weight.data.copy_(saved["head_data"])
        for config, value in saved["tie"]:
            config.tie_word_embeddings = value
        if saved["tied_keys"] is not None:
            model.all_tied_weights_keys = saved["tied_keys"]
        raise
    info = FoldInfo(norm=form.describe(), scale=c, untied=untied, check_max_logit_diff=diff)
    setattr(model.config, FOLD_KEY, asdict(info))
    return model


def fold_info(model: nn.Module) -> FoldInfo | None:
    """What fold was applied to ``model`` (read from its config), or None for an unfolded model."""
    raw = getattr(unwrap(model).config, FOLD_KEY, None)
    return FoldInfo(**raw) if isinstance(raw, dict) else None


def card_text(source: str, info: FoldInfo, checks: str) -> str:
    """The folded folder's README.md: what was done, and that outputs are unchanged (with the check's numbers)."""
    return f"""---
tags: [sdlib, final-norm-fold]
---
# {Path(source).name or source}, final norm folded into the head

This is `{source}` with its final norm's per-channel gain g folded into the output head by
`sdlib fold` (`sdlib.fold.fold_final_norm`): W' = W diag(g) / c and g' = c in every channel (c = {info.scale:.6g};
final norm: {info.norm}{"; the head, tied to the embedding before, is now a weight of its own" if info.untied else ""}).

**Outputs are unchanged**: the logits depend on W diag(g) only, so every output and every layer's logit-lens
prediction is the original model's, up to rounding. {checks}

What changes is a coordinate: the normed last hidden state now points where the last block's raw output points,
so this model's normed D_L is the original model's pre-norm D_L (for an RMSNorm).
"""


def save_folded(model: nn.Module, tokenizer, output_dir: str | os.PathLike, card: str) -> Path:
    """Write the folded ``model`` (safetensors), its tokenizer and ``card`` as README.md into ``output_dir``, which
    must not exist yet or be empty: written beside it and renamed into place, so a failure leaves nothing half
    written. -> the folder."""
    out = Path(output_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SdlibError(f"{out} already exists and is not an empty folder: choose a new --output_dir")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        fsync_tree(tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
