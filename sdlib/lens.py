"""The logit lens: q_l = softmax(lm_head(final_norm(h_l))) for l < L; at l = L the model's own output.

States come as the tuple (h_{-1}, h_0, ..., h_L) of ``sdlib.states`` in either convention: with
``normed`` h_L is already normalized, so only lm_head is applied to it; with ``pre_norm`` the final norm is
applied as for every other layer. Either way the lens at L equals the model's logits.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from sdlib.errors import SdlibError
from sdlib.models import layer_access
from sdlib.states import Convention, check_convention


def lens_logits(model: nn.Module, hidden_states: Sequence[torch.Tensor], layer: int,
                convention: Convention = "normed", positions: torch.Tensor | slice | None = None
                ) -> torch.Tensor:
    """Logit-lens logits of decoder layer ``layer`` (0..L; -1 is the embedding).

    hidden_states: L + 2 tensors [batch, seq, d]; positions: an index into the seq axis (None = all)
    -> Tensor [batch, len(positions), vocab] in the model's dtype.
    """
    check_convention(convention)
    last = len(hidden_states) - 2  # L
    if not -1 <= layer <= last:
        raise SdlibError(f"layer {layer} is out of range: this model has layers -1 (embedding) .. {last}")
    h = hidden_states[layer + 1]
    if positions is not None:
        h = h[:, positions]
    return lens_head(model, h, already_normed=(layer == last and convention == "normed"))


def lens_head(model: nn.Module, h: torch.Tensor, already_normed: bool = False) -> torch.Tensor:
    """lm_head(final_norm(h)) (lm_head(h) when h is already normed): h [..., d] -> logits [..., vocab]."""
    access = layer_access(model)
    return access.lm_head(h if already_normed else access.norm(h))


def iter_lens_logits(model: nn.Module, hidden_states: Sequence[torch.Tensor], convention: Convention = "normed",
                     positions: torch.Tensor | slice | None = None, layers: Sequence[int] | None = None
                     ) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(layer, logits)`` one layer at a time, so all layers' logits never exist at once."""
    last = len(hidden_states) - 2
    for layer in layers if layers is not None else range(0, last + 1):
        yield layer, lens_logits(model, hidden_states, layer, convention, positions)


@torch.no_grad()
def lens_top1(model: nn.Module, hidden_states: Sequence[torch.Tensor], positions: torch.Tensor | slice,
              convention: Convention = "normed", batch_index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 token id and its probability at every layer 0..L for the given positions of one sequence.

    -> (ids Tensor [L + 1, P] long, probs Tensor [L + 1, P] float32).
    """
    ids, probs = [], []
    for _, logits in iter_lens_logits(model, hidden_states, convention, positions):
        p = torch.softmax(logits[batch_index].float(), dim=-1)
        top = p.max(dim=-1)
        ids.append(top.indices)
        probs.append(top.values)
    return torch.stack(ids), torch.stack(probs)
