"""The measurement core: the D curve and S of a model on token windows, in both last-state conventions, with
hooks (observers) for anything else a pass over the same states should collect.

It sits below training (the recipe measures held-out text with it) and below the studies (``sdlib.evaluation.movement``
adds the default text, settings and the cached record).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sdlib.cache import Record
from sdlib.errors import SdlibError
from sdlib.loss import relative_step
from sdlib.metrics import check_finite, last_layer_ratio, monotonicity, movement, token_movement
from sdlib.states import HiddenStates, forward_states
from sdlib.stats import Interval, bootstrap_monotonicity, paired_S_difference
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
    """what was measured: ``text``, ``setting`` (a sentence for readers), ``data`` (the text's hash)"""
    window_documents: list[int] = field(default_factory=list)
    """the document of the text each window starts in (intervals resample documents); empty: windows"""

    def S_interval(self, convention: str, level: float = 0.95) -> tuple[float, float]:
        """S's percentile bootstrap interval, resampling the text's documents (or the windows when there is one)."""
        return bootstrap_monotonicity(self.per_window_D[convention], level=level,
                                      documents=self.window_documents or None)

    def S_change_from(self, base: Measurement, convention: str) -> Interval:
        """S minus ``base``'s S on the same windows, with its paired interval (resampling documents)."""
        if base.window_documents != self.window_documents or base.n_windows != self.n_windows:
            raise SdlibError("the two measurements read different windows: a paired change needs the same ones")
        return paired_S_difference(base.per_window_D[convention], self.per_window_D[convention],
                                   documents=self.window_documents or None)


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
    for c in LAST_STATES:
        check_finite(D[c], f"D ({c} h_L)")
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




@dataclass
class LastStepStats:
    """How a model makes its last step, on held-out windows: whether it lowers zeta2's last term by turning h_L
    toward h_{L-1} (what lowers D_L) or by changing lengths (what does not).

    Norms and channel shares are medians over tokens without position 0 (often an attention sink with a huge
    norm); the output distribution's entropy and KL are means over every token, as in the loss.
    """

    norm_h_prev: float
    """||h_{L-1}||"""
    norm_x_last: float
    """||x_L||, decoder layer L's raw output (the pre_norm h_L)"""
    norm_h_last: float
    """||h_L|| after the final norm (the normed h_L)"""
    channel: int
    """the massive channel: the one most often largest in |x_L| (fixed at the run's first measurement)"""
    channel_share_h_prev: float
    """that channel's share of ||h_{L-1}||^2"""
    channel_share_x_last: float
    """that channel's share of ||x_L||^2"""
    entropy_last: float
    """entropy of the model's output distribution, nats"""
    kl_last: float | None
    """KL(teacher || model) at the final layer, nats (None without a teacher)"""
    zeta2_last: dict[str, float]
    """zeta2's last-layer term ||h_L - h_{L-1}||^2 / ||h_{L-1}||^2 per last-state convention"""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LastStepStats:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


class LastStepObserver:
    """A ``BatchObserver`` that collects ``LastStepStats`` during a measurement pass.

    head: the model's normed state -> logits ([..., d] -> [..., V]). teacher_hidden: the frozen teacher's final
    normed states of the same windows, [n_windows, T, d], with its own ``teacher_head`` (None: no KL). channel:
    the massive channel to follow (None: found in this pass). ``rows`` bounds the [rows, V] logit buffers.
    """

    def __init__(self, head: Callable[[torch.Tensor], torch.Tensor], teacher_hidden: torch.Tensor | None = None,
                 teacher_head: Callable[[torch.Tensor], torch.Tensor] | None = None, channel: int | None = None,
                 rows: int = 256):
        self.head, self.teacher_hidden, self.teacher_head, self.channel, self.rows = (
            head, teacher_hidden, teacher_head, channel, rows)
        self.seen = 0  # windows so far (the offset into teacher_hidden)
        self.norms: dict[str, list[torch.Tensor]] = {"h_prev": [], "x_last": [], "h_last": []}
        self.energy: dict[str, list[torch.Tensor]] = {"h_prev": [], "x_last": []}  # per-token channel energy / total
        self.top: list[torch.Tensor] = []
        self.positions: list[torch.Tensor] = []
        self.entropy, self.kl, self.tokens = 0.0, 0.0, 0
        self.zeta2 = dict.fromkeys(LAST_STATES, 0.0)

    def __call__(self, states: HiddenStates, ids: torch.Tensor, moved: dict[str, torch.Tensor]) -> None:
        x_prev, x_last, h_last = states.h(states.L - 1), states.pre_norm_last, states.normed_last
        for name, h in (("h_prev", x_prev), ("x_last", x_last), ("h_last", h_last)):
            self.norms[name].append(h.double().norm(dim=-1).flatten().cpu())
        for name, h in (("h_prev", x_prev), ("x_last", x_last)):
            e = h.double().pow(2)
            self.energy[name].append((e / e.sum(-1, keepdim=True).clamp_min(1e-300)).flatten(0, -2).cpu())
        self.top.append(x_last.abs().argmax(-1).flatten().cpu())
        self.positions.append(torch.arange(ids.shape[1]).expand(ids.shape[0], -1).flatten())
        for convention, last in (("normed", h_last), ("pre_norm", x_last)):
            self.zeta2[convention] += float(relative_step(x_prev, last).double().sum())
        flat = h_last.flatten(0, -2)
        teacher = None
        if self.teacher_hidden is not None:
            teacher = self.teacher_hidden[self.seen: self.seen + ids.shape[0]].to(flat.device).flatten(0, -2)
        for s in range(0, len(flat), self.rows):
            logq = torch.log_softmax(self.head(flat[s: s + self.rows]).float(), dim=-1)
            self.entropy -= float((logq.exp() * logq).sum(dtype=torch.float64))
            if teacher is not None and self.teacher_head is not None:
                logp = torch.log_softmax(self.teacher_head(teacher[s: s + self.rows]).float(), dim=-1)
                self.kl += float((logp.exp() * (logp - logq)).sum(dtype=torch.float64))
        self.seen += ids.shape[0]
        self.tokens += ids.numel()

    def summary(self) -> LastStepStats:
        pos = torch.cat(self.positions)
        rest = pos > 0 if bool((pos > 0).any()) else torch.ones_like(pos, dtype=torch.bool)
        top = torch.cat(self.top)[rest]
        channel = int(torch.mode(top).values) if self.channel is None else self.channel
        norm = {k: float(torch.cat(v)[rest].median()) for k, v in self.norms.items()}
        share = {k: float(torch.cat(v)[rest][:, channel].median()) for k, v in self.energy.items()}
        n = max(self.tokens, 1)
        has_teacher = self.teacher_hidden is not None and self.teacher_head is not None
        return LastStepStats(norm_h_prev=norm["h_prev"], norm_x_last=norm["x_last"], norm_h_last=norm["h_last"],
                             channel=channel, channel_share_h_prev=share["h_prev"],
                             channel_share_x_last=share["x_last"], entropy_last=self.entropy / n,
                             kl_last=self.kl / n if has_teacher else None,
                             zeta2_last={c: v / n for c, v in self.zeta2.items()})
