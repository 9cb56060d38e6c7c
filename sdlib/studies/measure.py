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

from sdlib.cache import Record
from sdlib.metrics import last_layer_ratio, monotonicity, movement, token_movement
from sdlib.states import HiddenStates, forward_states
from sdlib.types import LAST_STATES

# Called after every batch of a measurement with the batch's states, its token ids and the per-token
# movement of each convention ({last_state: [L + 1, batch, seq] float64}); the atlas hooks in here.
BatchObserver = Callable[[HiddenStates, torch.Tensor, dict[str, torch.Tensor]], None]


@dataclass
class Measurement(Record):
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


@dataclass(frozen=True)
class MeasureSettings:
    """What changes a measurement's numbers (part of its cache key and its provenance)."""

    text: str = "wikitext-test"
    windows: int = 64
    window_len: int = 512
    batch_size: int = 8
    dtype: str = "float32"

    def __post_init__(self) -> None:
        from sdlib.errors import SdlibError

        if self.windows < 1 or self.window_len < 2 or self.batch_size < 1:
            raise SdlibError("windows and batch size must be >= 1 and the window length >= 2")


@dataclass
class MeasureRecord(Measurement):
    """A ``Measurement`` of one model with what it is (``model``, ``source``, ``label``, ``role``) and how it was
    made (``provenance``): what ``sdlib measure`` writes and the movement figures draw."""

    model: str = ""
    source: str = ""
    label: str = ""
    role: str | None = None
    """``pretrained`` or ``self_distilled`` in a comparison (``sdlib.types.Role``), None on its own"""
    provenance: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The numbers a figure shows (no per-window or per-token arrays)."""
        return {"label": self.label, "role": self.role, "S": self.S, "S_median_curve": self.S_median, "D": self.D,
                "last_layer_ratio": self.last_layer_ratio, "n_tokens": self.n_tokens}


def measure_model(model: nn.Module, tokenizer, settings: MeasureSettings = MeasureSettings(), *, name: str,
                  source: str | None = None, label: str | None = None, role=None, progress: bool = False,
                  observers: Sequence[BatchObserver] = ()) -> MeasureRecord:
    """Measure a loaded model on ``settings.text``; -> its record with provenance (the one place it is built)."""

    from sdlib.provenance import provenance

    m = measure_text(model, tokenizer, settings.text, settings.windows, settings.window_len, settings.batch_size,
                     progress=progress, observers=observers)
    return MeasureRecord(**{k: getattr(m, k) for k in Measurement.__dataclass_fields__}, model=name,
                         source=source or name, label=label or name, role=None if role is None else str(role),
                         provenance=provenance(device=next(model.parameters()).device, data=m.info.get("data"),
                                               limits=asdict(settings)))


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
