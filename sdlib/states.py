"""Capture the hidden states h_{-1}, h_0, ..., h_L in either last-state convention.

Paper indexing: decoder layers are l = 0..L; h_{-1} is the input embedding and h_l the output of layer
l. transformers' ``hidden_states[i]`` is h_{i-1}, and its last entry h_L is taken *after* the final norm.
The paper does not say which h_L it used, so both are available everywhere:

* ``normed`` (default): h_L = final_norm(output of layer L), what transformers returns;
* ``pre_norm``: h_L = the raw output of decoder layer L, captured with a forward hook.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from sdlib.errors import SdlibError
from sdlib.models import layer_access

Convention = Literal["normed", "pre_norm"]
CONVENTIONS: tuple[Convention, ...] = ("normed", "pre_norm")


def check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise SdlibError(f"unknown last-state convention {convention!r}: use one of {', '.join(CONVENTIONS)}")


@contextmanager
def capture_last_layer_output(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Context manager: a dict whose ``"pre_norm"`` entry is set to decoder layer L's raw output on each
    forward pass. The hook is always removed on exit, also after an exception."""
    captured: dict[str, torch.Tensor] = {}

    def hook(module, args, output):
        captured["pre_norm"] = output[0] if isinstance(output, tuple) else output

    handle = layer_access(model).layers[-1].register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def forward_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                   ) -> dict[str, tuple[torch.Tensor, ...]]:
    """Run the backbone once and return both conventions' state sequences.

    Returns ``{"normed": (h_{-1}, ..., h_L normed), "pre_norm": (h_{-1}, ..., h_L raw)}``, each a tuple of
    L + 2 tensors of shape [batch, seq, d]; the two tuples share every tensor but the last. No logits are
    vocabulary logits are computed but the last position's (use ``sdlib.lens`` for those). The call goes
    through ``model``'s own forward, so wrappers (DDP, accelerate) see it.
    """
    with capture_last_layer_output(model) as captured:
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                    use_cache=False, logits_to_keep=1)
    normed = tuple(out.hidden_states)
    return {"normed": normed, "pre_norm": normed[:-1] + (captured["pre_norm"],)}


def hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  convention: Convention = "normed") -> tuple[torch.Tensor, ...]:
    """(h_{-1}, h_0, ..., h_L) for one convention; see ``forward_states``."""
    check_convention(convention)
    return forward_states(model, input_ids, attention_mask)[convention]
