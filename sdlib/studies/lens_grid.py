"""The logit lens of one sentence (paper, Fig. 7) as a registered study: for the positions predicting the last
tokens of a text, the top-1 lens token and its probability at every layer, and the movement D_l of the last few
positions in both conventions. ``sdlib study lens MODEL --text "..."``."""

from __future__ import annotations

import codecs
from dataclasses import dataclass

import torch

from sdlib.cache import Record
from sdlib.errors import SdlibError
from sdlib.evaluation.subject import Subject
from sdlib.lens import lens_top1
from sdlib.metrics import token_movement
from sdlib.states import forward_states
from sdlib.studies.base import Study
from sdlib.types import LAST_STATES, Role

# Paper, Fig. 7's sentence (the default text of the lens and PCA figures and of the quickstart).
FIG7_SENTENCE = ("The curious cat climbed up the tall tree, carefully balancing on each thin branch, until it "
                 "suddenly noticed a small bird sitting quietly at the top.")

_BYTE_DECODER: dict[str, int] | None = None


def readable_token(tokenizer, token_id: int) -> str:
    """A token as the tokenizer would print it; the bytes of a token that is only part of a UTF-8 character
    (byte-level BPE) show as ``⟨e2 80⟩`` instead of a replacement character."""
    text = tokenizer.decode([int(token_id)])
    if "\ufffd" not in text:
        return text
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    global _BYTE_DECODER
    if _BYTE_DECODER is None:
        from tokenizers import pre_tokenizers

        alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=ord)
        _BYTE_DECODER = _gpt2_byte_decoder(alphabet)
    if piece and all(ch in _BYTE_DECODER for ch in piece):
        return _show_bytes(bytes(_BYTE_DECODER[ch] for ch in piece))
    return piece or text  # SentencePiece byte fallback pieces read "<0xE2>" already


def _hex_bytes(err: UnicodeDecodeError) -> tuple[str, int]:
    """A decode error handler: the bytes that are not a whole character as ``⟨e2 80⟩``."""
    return "⟨" + " ".join(f"{b:02x}" for b in err.object[err.start:err.end]) + "⟩", err.end


codecs.register_error("sdlib-hex", _hex_bytes)


def _show_bytes(raw: bytes) -> str:
    """UTF-8 text with each run of bytes that are not a whole character as ``⟨e2 80⟩``."""
    return raw.decode("utf-8", errors="sdlib-hex").replace("⟩⟨", " ")


def _gpt2_byte_decoder(alphabet: list[str]) -> dict[str, int]:
    """GPT-2's byte -> printable character table, inverted (the table byte-level BPE tokenizers use)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


@dataclass
class LensGrid(Record):
    """Top-1 lens token and probability at every layer for the positions predicting the last tokens of a text,
    and the movement D_l (both conventions) of the positions predicting the last ``last`` tokens."""

    label: str
    role: str | None
    inputs: list[str]
    targets: list[str]
    top_tokens: list[list[str]]
    """[L + 1][positions]"""
    top_prob: list[list[float]]
    last: int
    movement_last: dict[str, list[list[float]]]
    """{last_state: [last positions][L + 1]}"""


@torch.no_grad()
def lens_grid_of(model, tok, text: str = FIG7_SENTENCE, label: str = "", role: Role | None = None,
                 n_positions: int = 8, n_last: int = 3) -> LensGrid:

    ids = tok(text, return_tensors="pt")["input_ids"].to(next(model.parameters()).device)
    T = ids.shape[1]
    if T < 2:
        raise SdlibError(f"the text has {T} token(s): at least two are needed for the lens grid")
    n_positions = min(n_positions, T - 1)
    positions = torch.arange(T - 1 - n_positions, T - 1, device=ids.device)  # position p predicts token p + 1
    states = forward_states(model, ids)
    top_ids, top_p = lens_top1(model, states.normed, positions)
    tokens = [readable_token(tok, i) for i in ids[0].tolist()]
    movement = {c: token_movement(states[c])[:, 0, positions[-n_last:]].double().cpu().numpy().T.tolist()
                for c in LAST_STATES}
    return LensGrid(label=label, role=None if role is None else str(role),
                    inputs=[tokens[p] for p in positions.tolist()], targets=[tokens[p + 1] for p in positions.tolist()],
                    top_tokens=[[readable_token(tok, int(i)) for i in row] for row in top_ids.cpu().tolist()],
                    top_prob=top_p.cpu().numpy().tolist(), last=n_last, movement_last=movement)


@dataclass(frozen=True)
class LensSettings:
    text: str = FIG7_SENTENCE
    """the sentence"""
    positions: int = 8
    """how many of its last positions the grid shows"""
    last: int = 3
    """how many of those get their movement curves"""


def _compute(subject: Subject, settings: LensSettings) -> LensGrid:
    return lens_grid_of(subject.model, subject.tokenizer, settings.text, subject.label, subject.role,
                        n_positions=settings.positions, n_last=settings.last)


def describe(grid: LensGrid) -> str:
    """The top-1 lens token at every layer (rows) for each position (columns), as plain text."""
    width = 12
    lines = ["layer " + "".join(f"{t!r:>{width}.{width}}" for t in grid.targets)]
    for layer, row in enumerate(grid.top_tokens):
        lines.append(f"{layer:5d} " + "".join(f"{t!r:>{width}.{width}}" for t in row))
    return "\n".join(lines)


STUDY = Study("lens", "the logit lens of one sentence: top-1 token and probability at every layer (Fig. 7)",
              LensSettings, LensGrid, _compute, describe)
