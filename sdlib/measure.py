"""Measure a model: the D curve and S in both last-state conventions, on a fixed default text.

Default text (so numbers compare across machines): the raw WikiText-2 test text, tokenized once as one
string with the tokenizer's defaults, its first 32,768 tokens as 64 windows of 512; fp32 on CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sdlib.metrics import last_layer_ratio, monotonicity, movement, token_movement
from sdlib.states import CONVENTIONS, forward_states


@dataclass
class Measurement:
    """D_0..D_L (token means) and S per convention, with per-window curves for bootstrap intervals."""

    D: dict[str, list[float]]
    S: dict[str, float]
    last_layer_ratio: dict[str, float]
    per_window_D: dict[str, list[list[float]]]
    n_tokens: int
    n_windows: int
    window_len: int
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def measure_windows(model: nn.Module, windows: torch.Tensor, batch_size: int = 8, progress: bool = False
                    ) -> Measurement:
    """Run ``windows`` ([n, T] token ids) through ``model`` and average D over every token."""
    device = next(model.parameters()).device
    sums = dict.fromkeys(CONVENTIONS, 0.0)
    per_window: dict[str, list[list[float]]] = {c: [] for c in CONVENTIONS}
    count = 0
    batches = range(0, len(windows), batch_size)
    for start in tqdm(batches, desc="measure", unit="batch", disable=not progress):
        ids = windows[start: start + batch_size].to(device)
        for convention, per_token in _token_movement_both(forward_states(model, ids)).items():
            sums[convention] = sums[convention] + per_token.sum(dim=(1, 2))
            per_window[convention].extend(per_token.mean(dim=2).T.tolist())
        count += ids.numel()
    D = {c: (sums[c] / count).tolist() for c in CONVENTIONS}
    return Measurement(D=D, S={c: monotonicity(D[c]) for c in CONVENTIONS},
                       last_layer_ratio={c: last_layer_ratio(D[c]) for c in CONVENTIONS},
                       per_window_D=per_window, n_tokens=count, n_windows=len(windows),
                       window_len=int(windows.shape[1]))


def _token_movement_both(states: dict[str, tuple[torch.Tensor, ...]]) -> dict[str, torch.Tensor]:
    """Per-token D [L+1, B, T] (float64) in both conventions; they differ only in the last step, so the
    shared steps are computed once."""
    normed = token_movement(states["normed"]).double()
    pre = states["pre_norm"]
    return {"normed": normed, "pre_norm": torch.cat([normed[:-1], movement(pre[-2], pre[-1]).double()[None]])}


def measure_text(model: nn.Module, tokenizer, text: str = "wikitext-test", n_windows: int = 64,
                 window_len: int = 512, batch_size: int = 8, progress: bool = False) -> Measurement:
    """``measure_windows`` on a named text (``wikitext-test``, ``wikitext-valid``) or a file."""
    from sdlib.data import read_text, text_windows

    body, data_hashes = read_text(text)
    windows = text_windows(tokenizer, body, n_windows, window_len)
    result = measure_windows(model, windows, batch_size=batch_size, progress=progress)
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
    return "\n".join(lines)
