"""Layer pruning and early exit: the paper's stated future work, measured.

* Early exit after layer k: the model keeps decoder layers 0..k and applies its final norm + lm_head to h_k,
  which is exactly the logit lens of layer k, so its quality is the per-layer evaluation's; its speed is
  measured here by greedy decoding through a truncated copy (``keep_layers``).
* Deleting n decoder layers chosen by ``choose_layers``: ``"movement"`` removes the n layers with the lowest
  movement D_l among 0..L-1 (the last layer stays). ShortGPT's Block Influence is 1 - cos(h_{l-1}, h_l) =
  2 D_l, so this is ShortGPT's rule; ``"last"`` removes the n layers just before the final one.

Pruned models are ordinary transformers models: ``save_pretrained`` writes them and plain transformers loads them.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import torch
from torch import nn

from sdlib.errors import SdlibError
from sdlib.parts import decoder_parts

STRATEGIES = ("movement", "last")


def keep_layers(model: nn.Module, keep: Sequence[int]) -> nn.Module:
    """A deep copy of ``model`` with only decoder layers ``keep`` (in order); config and cache indices follow."""
    num = decoder_parts(model).num_layers
    keep = sorted(set(int(i) for i in keep))
    if not keep or keep[0] < 0 or keep[-1] >= num:
        raise SdlibError(f"layers to keep must be a non-empty subset of 0..{num - 1}, got {keep}")
    pruned = copy.deepcopy(model)
    parts = decoder_parts(pruned)
    layers = nn.ModuleList([parts.layers[i] for i in keep])
    setattr(parts.layers_holder, parts.layers_name, layers)
    for new_index, layer in enumerate(layers):
        for module in layer.modules():  # attention (self_attn, attention, ...): the KV cache is indexed by position
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = pruned.config
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in keep]
    return pruned


def choose_layers(D: Sequence[float], n: int, strategy: str) -> list[int]:
    """The n decoder layers to remove. D: D_0..D_L (``sdlib.evaluation.movement``). The last layer L is never removed."""
    last = len(D) - 1
    if strategy not in STRATEGIES:
        raise SdlibError(f"unknown pruning strategy {strategy!r}: use {', '.join(STRATEGIES)}")
    if not 0 <= n <= last:
        raise SdlibError(f"can remove 0..{last} of layers 0..{last - 1}, not {n}")
    if strategy == "last":
        return list(range(last - n, last))
    order = sorted(range(last), key=lambda l: (D[l], l))  # lowest movement first; ties: earlier layer
    return sorted(order[:n])


def prune(model: nn.Module, D: Sequence[float], n: int, strategy: str) -> tuple[nn.Module, list[int]]:
    """(copy of ``model`` without the chosen n layers, the removed layer indices)."""
    removed = choose_layers(D, n, strategy)
    keep = [l for l in range(decoder_parts(model).num_layers) if l not in removed]
    return keep_layers(model, keep), removed


@torch.no_grad()
def generation_speed(model: nn.Module, tokenizer, prompt: str = "The history of the city begins",
                     new_tokens: int = 32, repeats: int = 2) -> float:
    """Greedy decoding speed (new tokens/s, KV cache on, best of ``repeats`` after a warm-up)."""
    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    model.generate(ids, **{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(ids, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return new_tokens / best
