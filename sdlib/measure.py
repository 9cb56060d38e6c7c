"""Measure a model: the D curve and S in both last-state conventions, on a fixed default text.

Default text (so numbers compare across machines): the raw WikiText-2 test text, tokenized once as one
string with the tokenizer's defaults, its first 32,768 tokens as 64 windows of 512; fp32 on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sdlib.metrics import last_layer_ratio, monotonicity, movement, token_movement
from sdlib.states import HiddenStates, forward_states
from sdlib.types import LAST_STATES

# Called after every batch of a measurement with the batch's states, its token ids and the per-token
# movement of each convention ({last_state: [L + 1, batch, seq] float64}); the atlas hooks in here.
BatchObserver = Callable[[HiddenStates, torch.Tensor, dict[str, torch.Tensor]], None]


@dataclass
class Measurement:
    """D_0..D_L (token means) and S per convention, the per-token median curve and its S, and per-window
    curves for bootstrap intervals."""

    D: dict[str, list[float]]
    S: dict[str, float]
    last_layer_ratio: dict[str, float]
    per_window_D: dict[str, list[list[float]]]
    n_tokens: int
    n_windows: int
    window_len: int
    D_median: dict[str, list[float]] = field(default_factory=dict)
    """the per-token median of D_l at each layer (robust to a few huge tokens such as position 0)"""
    S_median: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in names})


@torch.no_grad()
def measure_windows(model: nn.Module, windows: torch.Tensor, batch_size: int = 8, progress: bool = False,
                    observers: Sequence[BatchObserver] = ()) -> Measurement:
    """Run ``windows`` ([n, T] token ids) through ``model`` and average D over every token."""
    device = next(model.parameters()).device
    sums = dict.fromkeys(LAST_STATES, 0.0)
    per_window: dict[str, list[list[float]]] = {c: [] for c in LAST_STATES}
    per_token: dict[str, list[torch.Tensor]] = {c: [] for c in LAST_STATES}
    count = 0
    batches = range(0, len(windows), batch_size)
    for start in tqdm(batches, desc="measure", unit="batch", disable=not progress):
        ids = windows[start: start + batch_size].to(device)
        states = forward_states(model, ids)
        moved = token_movement_both(states)
        for convention, D_tok in moved.items():
            sums[convention] = sums[convention] + D_tok.sum(dim=(1, 2))
            per_window[convention].extend(D_tok.mean(dim=2).T.tolist())
            per_token[convention].append(D_tok.flatten(1).float().cpu())
        for observe in observers:
            observe(states, ids, moved)
        count += ids.numel()
    D = {c: (sums[c] / count).tolist() for c in LAST_STATES}
    D_median = {c: torch.cat(per_token[c], dim=1).median(dim=1).values.double().tolist() for c in LAST_STATES}
    return Measurement(D=D, S={c: monotonicity(D[c]) for c in LAST_STATES},
                       last_layer_ratio={c: last_layer_ratio(D[c]) for c in LAST_STATES},
                       per_window_D=per_window, n_tokens=count, n_windows=len(windows),
                       window_len=int(windows.shape[1]), D_median=D_median,
                       S_median={c: monotonicity(D_median[c]) for c in LAST_STATES})


def token_movement_both(states: HiddenStates) -> dict[str, torch.Tensor]:
    """Per-token D [L+1, B, T] (float64) in both conventions; they differ only in the last step, so the
    shared steps are computed once."""
    normed = token_movement(states.normed).double()
    last_pre = movement(states.h(states.L - 1), states.pre_norm_last).double()
    return {"normed": normed, "pre_norm": torch.cat([normed[:-1], last_pre[None]])}


def measure_text(model: nn.Module, tokenizer, text: str = "wikitext-test", n_windows: int = 64,
                 window_len: int = 512, batch_size: int = 8, progress: bool = False,
                 observers: Sequence[BatchObserver] = ()) -> Measurement:
    """``measure_windows`` on a named text (``wikitext-test``, ``wikitext-valid``) or a file."""
    from sdlib.data import read_text, text_windows

    body, data_hashes = read_text(text)
    windows = text_windows(tokenizer, body, n_windows, window_len)
    result = measure_windows(model, windows, batch_size=batch_size, progress=progress, observers=observers)
    result.info.update(text=text, data=data_hashes)
    return result


def format_measurement(m: Measurement) -> str:
    """A plain-text table of D per layer in both conventions, then S."""
    lines = [f"{'layer':>5}  {'D normed':>10}  {'D pre_norm':>10}"]
    n = len(m.D["normed"])
    for l in range(n):
        lines.append(f"{l:>5}  {m.D['normed'][l]:>10.5f}  {m.D['pre_norm'][l]:>10.5f}")
    lines.append(f"S normed = {m.S['normed']:.4f}   S pre_norm = {m.S['pre_norm']:.4f}   "
                 f"({m.n_tokens} tokens, {m.n_windows} windows of {m.window_len})")
    if m.S_median:
        lines.append(f"S of the per-token median curve: normed {m.S_median['normed']:.4f}, "
                     f"pre_norm {m.S_median['pre_norm']:.4f}")
    return "\n".join(lines)
