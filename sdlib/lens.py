"""The logit lens: q_l = softmax(head(final_norm(h_l))) for l < L; at l = L the model's own output.

``head`` is lm_head followed by whatever the model applies to its output (soft-cap, scale; see
``sdlib.parts.DecoderParts``). States come as the tuple (h_{-1}, h_0, ..., h_L) of ``sdlib.states`` in
either last-state convention: with ``normed`` h_L is already normalized, so only the head is applied to it;
with ``pre_norm`` the final norm is applied as for every other layer. Either way the lens at L equals the
model's logits.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from sdlib.errors import SdlibError
from sdlib.parts import decoder_parts
from sdlib.states import layer_state
from sdlib.types import LastState, parse


def lens_logits(model: nn.Module, hidden_states: Sequence[torch.Tensor], layer: int,
                last_state: LastState | str = LastState.NORMED, positions: torch.Tensor | slice | None = None
                ) -> torch.Tensor:
    """Logit-lens logits of decoder layer ``layer`` (0..L; -1 is the embedding).

    hidden_states: L + 2 tensors [batch, seq, d]; positions: an index into the seq axis (None = all)
    -> Tensor [batch, len(positions), vocab] in the model's dtype.
    """
    last_state = parse(LastState, last_state, "last state")
    last = len(hidden_states) - 2  # L
    if not -1 <= layer <= last:
        raise SdlibError(f"layer {layer} is out of range: this model has layers -1 (embedding) .. {last}")
    h = layer_state(hidden_states, layer)
    if positions is not None:
        h = h[:, positions]
    return lens_head(model, h, already_normed=(layer == last and last_state == LastState.NORMED))


def lens_head(model: nn.Module, h: torch.Tensor, already_normed: bool = False) -> torch.Tensor:
    """head(final_norm(h)) (head(h) when h is already normed): h [..., d] -> logits [..., vocab]."""
    parts = decoder_parts(model)
    return parts.head(h if already_normed else parts.norm(h))


def iter_lens_logits(model: nn.Module, hidden_states: Sequence[torch.Tensor],
                     last_state: LastState | str = LastState.NORMED, positions: torch.Tensor | slice | None = None,
                     layers: Sequence[int] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(layer, logits)`` one layer at a time, so all layers' logits never exist at once."""
    last = len(hidden_states) - 2
    for layer in layers if layers is not None else range(0, last + 1):
        yield layer, lens_logits(model, hidden_states, layer, last_state, positions)


@torch.no_grad()
def lens_top1(model: nn.Module, hidden_states: Sequence[torch.Tensor], positions: torch.Tensor | slice,
              last_state: LastState | str = LastState.NORMED, batch_index: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 token id and its probability at every layer 0..L for the given positions of one sequence.

    -> (ids Tensor [L + 1, P] long, probs Tensor [L + 1, P] float32).
    """
    ids, probs = [], []
    for _, logits in iter_lens_logits(model, hidden_states, last_state, positions):
        p = torch.softmax(logits[batch_index].float(), dim=-1)
        top = p.max(dim=-1)
        ids.append(top.indices)
        probs.append(top.values)
    return torch.stack(ids), torch.stack(probs)
