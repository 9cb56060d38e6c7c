"""The parts of any common Hugging Face decoder that the metrics, lens and loss need, found by one resolver.

``decoder_parts(model)`` finds, for any decoder-only causal LM of transformers, the embedding, the decoder
layers, the final norm, the output head and whatever the model applies to the head's output (``LogitTransform``:
Gemma 2's final logit soft-capping, Cohere's and Granite's logit scales). Model quirks live here and nowhere
else; everything above asks this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sdlib.errors import SdlibError


@dataclass(frozen=True)
class LogitTransform:
    """What a model applies to lm_head's output z before the softmax: z -> cap * tanh(scale * z / cap)
    (``softcap`` None: z -> scale * z). Gemma 2 soft-caps, Cohere and Granite scale; most models do neither."""

    scale: float = 1.0
    softcap: float | None = None

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            z = z * self.scale
        if self.softcap:
            z = self.softcap * torch.tanh(z / self.softcap)
        return z

    def apply_(self, z: torch.Tensor, derivative: torch.Tensor | None = None) -> torch.Tensor:
        """In place on z [n, V]; with ``derivative`` (same shape) also write dz_out/dz_in / scale into it."""
        if self.scale != 1.0:
            z.mul_(self.scale)
        if self.softcap:
            z.div_(self.softcap).tanh_()
            if derivative is not None:
                torch.mul(z, z, out=derivative).neg_().add_(1.0)  # d(cap tanh(u / cap))/du = 1 - tanh^2
            z.mul_(self.softcap)
        return z


IDENTITY = LogitTransform()


# Where the resolver looks, in order, on the backbone (``model.base_model``).
LAYER_NAMES = ("layers", "h", "blocks", "layer", "decoder_layers")
NORM_NAMES = ("norm", "final_layer_norm", "final_layernorm", "ln_f", "norm_f", "final_norm")


@dataclass(frozen=True)
class DecoderParts:
    """The parts of a decoder-only causal LM that the metrics, lens and loss need.

    ``num_layers`` is L + 1 (decoder layers are numbered 0..L). ``head(h)`` maps a final-normed state
    [..., d] to the model's logits [..., vocab]: lm_head, then ``transform`` (scale, soft-cap).
    """

    model: nn.Module
    backbone: nn.Module
    embed: nn.Module
    layers: nn.ModuleList
    layers_holder: nn.Module
    """the module holding ``layers`` as attribute ``layers_name`` (the backbone, or its decoder)"""
    layers_name: str
    norm: nn.Module
    lm_head: nn.Linear
    transform: LogitTransform

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def head(self, h_normed: torch.Tensor) -> torch.Tensor:
        """lm_head + the model's logit transform: [..., d] -> [..., vocab]."""
        return self.transform(self.lm_head(h_normed))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The model's trainable parameters by part, each exactly once: ``embeddings`` (with lm_head when the
        two are tied), ``blocks`` (decoder layers 0..L-1), ``last_block`` (layer L), ``final_norm``,
        ``lm_head`` (when untied) and ``other`` (anything else, e.g. a learned position embedding)."""
        seen: set[int] = set()

        def take(modules: list[nn.Module]) -> list[nn.Parameter]:
            out = []
            for module in modules:
                for p in module.parameters():
                    if id(p) not in seen and p.requires_grad:
                        seen.add(id(p))
                        out.append(p)
            return out

        groups = {"embeddings": take([self.embed]), "blocks": take(list(self.layers[:-1])),
                  "last_block": take([self.layers[-1]]), "final_norm": take([self.norm]),
                  "lm_head": take([self.lm_head])}
        groups["other"] = take([self.model])
        return {name: params for name, params in groups.items() if params}

    def norm_gain(self) -> torch.Tensor:
        """The final norm's effective per-channel gain g [d] for an RMSNorm (h = g * x / rms(x)): the weight
        itself for Llama-style norms, 1 + weight for Gemma's. Read off the module (its output for a constant
        input), so any parametrisation is handled."""
        weight = getattr(self.norm, "weight", None)
        if weight is None:
            raise SdlibError(f"the final norm {type(self.norm).__name__} has no weight")
        with torch.no_grad():
            ones = torch.ones(1, weight.shape[-1], dtype=weight.dtype, device=weight.device)
            eps = norm_eps(self.norm, 0.0)
            return (self.norm(ones)[0].float() * (1.0 + eps) ** 0.5).detach()


def norm_eps(norm: nn.Module, default: float) -> float:
    """The epsilon a norm adds under its root (``eps`` for torch's and most norms, ``variance_epsilon`` for Llama's),
    or ``default`` when it names none."""
    for name in ("eps", "variance_epsilon"):
        value = getattr(norm, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return default


def decoder_parts(model: nn.Module) -> DecoderParts:
    """Resolve the parts of a transformers decoder-only causal LM (see ``DecoderParts``); anything it cannot
    place is one ``SdlibError`` naming what it looked for."""
    model = unwrap(model)
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", type(model).__name__)
    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(lm_head, nn.Linear):
        raise SdlibError(f"cannot find the output head of {kind!r}: looked for get_output_embeddings() returning an "
                         f"nn.Linear (lm_head, embed_out), got {type(lm_head).__name__}")
    backbone = getattr(model, "base_model", None)
    if backbone is None or backbone is model:
        raise SdlibError(f"cannot find the decoder backbone of {kind!r}: looked for model.base_model "
                         f"(base_model_prefix {getattr(model, 'base_model_prefix', '')!r}) distinct from the model")
    n = getattr(config, "num_hidden_layers", None)
    # the layers and the final norm sit on the backbone, or on its ``decoder`` (OPT)
    holders = [backbone] + [m for m in (getattr(backbone, "decoder", None),) if isinstance(m, nn.Module)]
    found = [(holder, name) for holder in holders for name in LAYER_NAMES
             if isinstance(getattr(holder, name, None), nn.ModuleList) and (n is None or len(getattr(holder, name)) == n)]
    if not found:
        raise SdlibError(f"cannot find the decoder layers of {kind!r}: looked for an nn.ModuleList of "
                         f"num_hidden_layers={n} layers named {', '.join(LAYER_NAMES)} on {type(backbone).__name__} "
                         "(or its .decoder)")
    holder, layers_name = found[0]
    norm_name = next((name for name in NORM_NAMES if isinstance(getattr(holder, name, None), nn.Module)), None)
    if norm_name is None:
        raise SdlibError(f"cannot find the final norm of {kind!r}: looked for {', '.join(NORM_NAMES)} on "
                         f"{type(holder).__name__}")
    embed = backbone.get_input_embeddings()
    return DecoderParts(model=model, backbone=backbone, embed=embed, layers=getattr(holder, layers_name),
                        layers_holder=holder, layers_name=layers_name, norm=getattr(holder, norm_name),
                        lm_head=lm_head, transform=logit_transform(config))


def logit_transform(config: Any) -> LogitTransform:
    """What a model applies to lm_head's output, read from its config: Gemma 2's ``final_logit_softcapping``
    (cap * tanh(z / cap)), Cohere's ``logit_scale`` (z * s) and Granite's ``logits_scaling`` (z / s)."""
    scale = float(getattr(config, "logit_scale", None) or 1.0)
    if getattr(config, "logits_scaling", None):
        scale /= float(config.logits_scaling)
    cap = getattr(config, "final_logit_softcapping", None)
    return LogitTransform(scale=scale, softcap=float(cap) if cap else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / accelerate / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner
