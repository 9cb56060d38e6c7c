"""Capture the hidden states h_{-1}, h_0, ..., h_L of one forward pass in both last-state conventions.

Paper indexing: decoder layers are l = 0..L; h_{-1} is the input to layer 0 (the embedding, after any
embedding scale the model applies) and h_l the output of layer l. transformers' ``hidden_states[i]`` is
h_{i-1}, and its last entry is taken *after* the final norm. The paper does not say which h_L it used, so
both come out of every forward pass (``sdlib.types.LastState``):

* ``normed`` (default): h_L = final_norm(output of layer L), what transformers returns;
* ``pre_norm``: h_L = the raw output of decoder layer L, captured with a forward hook.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from sdlib.errors import SdlibError
from sdlib.parts import decoder_parts
from sdlib.types import LastState, parse


@dataclass(frozen=True)
class HiddenStates:
    """h_{-1}, ..., h_L of one forward pass, each [batch, seq, d], in both last-state conventions.

    ``states.h(l, last_state)`` is h_l for l = -1..L (the paper's numbering); ``states[last_state]`` is the
    whole sequence (h_{-1}, ..., h_L) as a tuple of L + 2 tensors, the form the metrics take. The two
    sequences share every tensor but the last. ``logits`` [batch, seq, vocab] when asked for, else None.
    """

    inner: tuple[torch.Tensor, ...]
    """h_{-1} .. h_{L-1}"""
    normed_last: torch.Tensor
    pre_norm_last: torch.Tensor
    logits: torch.Tensor | None = None

    @property
    def L(self) -> int:
        """The index of the last decoder layer (the model has L + 1 layers)."""
        return len(self.inner) - 1

    def h(self, layer: int, last_state: LastState | str = LastState.NORMED) -> torch.Tensor:
        """h_layer for layer = -1 (embedding) .. L."""
        if not -1 <= layer <= self.L:
            raise SdlibError(f"layer {layer} is out of range: this model has layers -1 (embedding) .. {self.L}")
        if layer < self.L:
            return layer_state(self.inner, layer)
        return self.normed_last if parse(LastState, last_state) == LastState.NORMED else self.pre_norm_last

    def __getitem__(self, last_state: LastState | str) -> tuple[torch.Tensor, ...]:
        return self.inner + (self.h(self.L, last_state),)

    @property
    def normed(self) -> tuple[torch.Tensor, ...]:
        return self[LastState.NORMED]

    @property
    def pre_norm(self) -> tuple[torch.Tensor, ...]:
        return self[LastState.PRE_NORM]


def layer_state(sequence: Sequence[torch.Tensor], layer: int) -> torch.Tensor:
    """h_layer (layer = -1..L, the paper's numbering) from a sequence (h_{-1}, h_0, ..., h_L): the one place the
    offset between the paper's index and the position in the sequence is applied."""
    return sequence[layer + 1]


@contextmanager
def capture_last_layer_output(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Context manager: a dict whose ``"pre_norm"`` entry is set to decoder layer L's raw output on each
    forward pass. The hook is always removed on exit, also after an exception."""
    captured: dict[str, torch.Tensor] = {}

    def hook(module, args, output):
        captured["pre_norm"] = output[0] if isinstance(output, tuple) else output

    handle = decoder_parts(model).layers[-1].register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def forward_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   keep_logits: bool = False) -> HiddenStates:
    """Run ``model`` once and return its ``HiddenStates`` in both conventions.

    Vocabulary logits are computed only for the last position unless ``keep_logits`` (use ``sdlib.lens``
    for any layer's). The call goes through ``model``'s own forward, so wrappers (DDP, accelerate) see it.
    """
    with capture_last_layer_output(model) as captured:
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                    use_cache=False, logits_to_keep=0 if keep_logits else 1)
    states = tuple(out.hidden_states)
    return HiddenStates(inner=states[:-1], normed_last=states[-1], pre_norm_last=captured["pre_norm"],
                        logits=out.logits if keep_logits else None)


def hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  last_state: LastState | str = LastState.NORMED) -> tuple[torch.Tensor, ...]:
    """(h_{-1}, h_0, ..., h_L) for one last-state convention; see ``forward_states``."""
    return forward_states(model, input_ids, attention_mask)[last_state]
