"""The convergence atlas: how a model's hidden states move, why its last step is large, and whether the
paper's zeta2 can act on S before any training (beyond the paper).

For one model, on the default measurement text:

* the D curve and S in both last-state conventions, D_L / D_{L-1}, and the per-token median curve's S;
* the last step split per token into the last block's rotation (movement(h_{L-1}, x_L), the ``pre_norm``
  D_L) and the final norm's own rotation (movement(x_L, final_norm(x_L)); RMSNorm's 1/rms does not rotate, so
  this is its per-channel gain's rotation), with the ``normed`` D_L beside, as means and medians over tokens
  with and without position 0 (often an attention sink with a huge norm). ``norm_share`` is, per token,
  theta_norm / (theta_block + theta_norm) with theta = arccos(cos) the angle of each rotation;
* the per-token norms ||h_{L-1}||, ||x_L|| and ||h_L|| (normed): the paper's zeta2 term at L,
  ||h_L - h_{L-1}||^2 / ||h_{L-1}||^2, has a gradient on h_L of size ~ 2 / ||h_{L-1}|| when ||h_L|| << ||h_{L-1}||;
* per layer, the per-token share of ||h_l||^2 held by its largest channel (massive activations);
* per-layer LAMBADA accuracy and WikiText word perplexity (lm-eval's scoring; ``sdlib.evaluation``);
* at initialisation of the paper's recipe (student = teacher): zeta1 and alpha * zeta2 per layer and the
  gradient norm of each per parameter group, with the cosine between the two gradients, in both conventions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import nn

from sdlib.cache import Record
from sdlib.data import PackedSequences, training_documents
from sdlib.evaluation.layers import LayerEvaluation, load_subset
from sdlib.evaluation.movement import MeasureSettings, measure_text
from sdlib.evaluation.subject import Subject
from sdlib.loss import LossSettings, TeacherHead, layer_weights, self_distillation_loss
from sdlib.measurement import Measurement
from sdlib.metrics import movement
from sdlib.parts import decoder_parts
from sdlib.provenance import nan_to_none, provenance
from sdlib.states import HiddenStates, forward_states
from sdlib.studies.base import Study
from sdlib.types import LAST_STATES

ATLAS_RECORD_VERSION = 2
"""part of the cache key: raised when the record gains a field (2: ``state_norms``)"""


@dataclass(frozen=True)
class AtlasSettings(MeasureSettings):
    """What changes an atlas's numbers (part of its cache key): the measurement's settings and these."""

    batch_size: int = 4
    eval_subset: str = "cpu-short"
    """the per-layer evaluation's subset (configs/eval/<name>.yaml): cpu-short (500 LAMBADA passages, 2 WikiText
    pages), the CPU profiles' subset, so the atlas's numbers for a pretrained model are theirs; WikiText at every
    layer is most of an atlas's cost on a CPU, and cpu-subset has four times the pages"""
    init_sequences: int = 2
    """training sequences (FineWeb-Edu) for the at-initialisation gradients"""
    init_seq_len: int = 256
    alpha: float = 1.0
    k: float = 0.25
    data: str = "fineweb-edu"


@dataclass
class TokenStats:
    """A per-token quantity summarised: over all tokens, without position 0, and at position 0 alone."""

    mean: float
    median: float
    mean_no_sink: float
    median_no_sink: float
    sink: float

    @classmethod
    def of(cls, values: torch.Tensor, positions: torch.Tensor) -> TokenStats:
        values, rest = values.double(), values[positions > 0].double()
        first = values[positions == 0]
        return cls(mean=float(values.mean()), median=float(values.median()), mean_no_sink=float(rest.mean()),
                   median_no_sink=float(rest.median()), sink=float(first.mean()) if len(first) else math.nan)


@dataclass
class ChannelShare(Record):
    """x_L's largest channel: its median share of ||x_L||^2 (position 0 excluded), the 4 largest channels'
    together, and its share at position 0."""

    share_median_no_sink: float
    top4_share_median_no_sink: float
    share_sink: float


@dataclass
class TopChannel(Record):
    """Massive activations: per state h_-1..h_L (normed h_L last) the largest channel's share of ||h||^2, and x_L's
    largest channel."""

    layers: list[int]
    """-1..L"""
    share_median_no_sink: list[float]
    share_sink: list[float]
    top4_share_median_no_sink: list[float]
    """the 4 largest channels' share together"""
    pre_norm_last: ChannelShare
    """the same for x_L (the last block's raw output)"""
    channel: int
    """the channel most often largest in x_L (position 0 excluded)"""
    gain: float
    """its final-norm gain"""
    channel_fraction: float
    """the share of tokens in which it is the largest"""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TopChannel:
        return cls(**{**data, "pre_norm_last": ChannelShare.from_dict(data["pre_norm_last"])})


@dataclass
class InitGradients(Record):
    """zeta1 and alpha * zeta2 at initialisation (student = teacher) and the norms of their gradients per parameter
    group; mappings are keyed by last-state convention, loss term (``zeta1``, ``zeta2_<convention>``) and group."""

    tokens: int
    zeta1: float
    kl_per_layer: list[float]
    layer_weights: list[float]
    weighted_kl_per_layer: list[float]
    alpha: float
    alpha_zeta2: dict[str, float]
    alpha_zeta2_per_layer: dict[str, list[float]]
    grad_norms: dict[str, dict[str, float]]
    cosine: dict[str, dict[str, float]]
    """cos(grad zeta1, grad zeta2) per convention and group"""
    groups: dict[str, int]
    """parameters per group"""
    tied_embeddings: bool
    data: dict[str, Any]


@dataclass
class AtlasRecord(Record):
    model: str
    num_layers: int
    """L + 1"""
    measurement: Measurement
    last_step: dict[str, TokenStats]
    """``block`` (pre-norm D_L), ``norm`` (the final norm's rotation), ``normed`` (normed D_L)"""
    norm_share: TokenStats
    top_channel: TopChannel
    evaluation: LayerEvaluation
    init: InitGradients
    settings: dict[str, Any]
    state_norms: dict[str, TokenStats]
    """per-token norms: ``h_prev`` ||h_{L-1}||, ``x_last`` ||x_L|| (pre-norm), ``h_last`` ||h_L|| (normed)"""
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def D_L(self) -> dict[str, float]:
        return {c: self.measurement.D[c][-1] for c in LAST_STATES}

    @cached_property
    def S_interval(self) -> dict[str, tuple[float, float]]:
        """The 95% percentile bootstrap interval of S over the measurement's documents, per convention."""

        return {c: self.measurement.S_interval(c) for c in LAST_STATES}

    def summary(self) -> dict[str, Any]:
        """The headline numbers (what the atlas figure's JSON and RESULTS.md show); undefined values are None."""
        m, z = self.measurement, self.init
        return nan_to_none({
            "num_layers": self.num_layers, "tokens": m.n_tokens, "S": m.S,
            "S_interval": {c: list(v) for c, v in self.S_interval.items()}, "S_median_curve": m.S_median,
            "D_L": self.D_L, "D_L_over_D_L_minus_1": m.last_layer_ratio, "D": m.D,
            "last_step": {k: asdict(v) for k, v in self.last_step.items()}, "norm_share": asdict(self.norm_share),
            "top_channel": self.top_channel.to_dict(), "evaluation": self.evaluation.to_dict(),
            "state_norms": {k: asdict(v) for k, v in self.state_norms.items()},
            "init": {k: getattr(z, k) for k in ("tokens", "zeta1", "alpha_zeta2", "grad_norms", "cosine",
                                                 "tied_embeddings")}})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AtlasRecord:
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        values["measurement"] = Measurement.from_dict(data["measurement"])
        values["last_step"] = {k: TokenStats(**v) for k, v in data["last_step"].items()}
        values["norm_share"] = TokenStats(**data["norm_share"])
        values["state_norms"] = {k: TokenStats(**v) for k, v in data["state_norms"].items()}
        values["top_channel"] = TopChannel.from_dict(data["top_channel"])
        values["evaluation"] = LayerEvaluation.from_dict(data["evaluation"])
        values["init"] = InitGradients.from_dict(data["init"])
        return cls(**values)


class _TokenObserver:
    """Collects the atlas's per-token quantities from every batch of the measurement pass."""

    def __init__(self) -> None:
        self.block, self.norm, self.normed, self.share = [], [], [], []
        self.top_share: list[torch.Tensor] = []  # [L + 3, tokens]: h_-1..h_L (normed), then x_L
        self.top4_share: list[torch.Tensor] = []  # the same for the 4 largest channels together
        self.top_index: list[torch.Tensor] = []  # [tokens]: x_L's largest channel
        self.norms: dict[str, list[torch.Tensor]] = {"h_prev": [], "x_last": [], "h_last": []}
        self.positions: list[torch.Tensor] = []

    def __call__(self, states: HiddenStates, ids: torch.Tensor, moved: dict[str, torch.Tensor]) -> None:
        x_prev, x_last, h_last = states.h(states.L - 1), states.pre_norm_last, states.normed_last
        block, norm, normed = movement(x_prev, x_last), movement(x_last, h_last), movement(x_prev, h_last)
        angle_block, angle_norm = (torch.arccos((1 - 2 * d.double()).clamp(-1, 1)) for d in (block, norm))
        share = angle_norm / (angle_block + angle_norm).clamp_min(1e-12)
        shares, shares4 = [], []
        for h in (*states.normed, x_last):
            energy = h.float().pow(2)
            total = energy.sum(-1).clamp_min(1e-30)
            top4 = energy.topk(min(4, energy.shape[-1]), dim=-1).values
            shares.append((top4[..., 0] / total).flatten().cpu())
            shares4.append((top4.sum(-1) / total).flatten().cpu())
        self.top_share.append(torch.stack(shares))
        self.top4_share.append(torch.stack(shares4))
        self.top_index.append(x_last.float().abs().argmax(-1).flatten().cpu())
        for store, value in ((self.block, block), (self.norm, norm), (self.normed, normed), (self.share, share)):
            store.append(value.flatten().cpu())
        for name, h in (("h_prev", x_prev), ("x_last", x_last), ("h_last", h_last)):
            self.norms[name].append(h.double().norm(dim=-1).flatten().cpu())
        self.positions.append(torch.arange(ids.shape[1]).expand(ids.shape[0], -1).flatten())

    def state_norms(self) -> dict[str, TokenStats]:
        pos = torch.cat(self.positions)
        return {name: TokenStats.of(torch.cat(values), pos) for name, values in self.norms.items()}

    def summarise(self, gain: torch.Tensor) -> tuple[dict[str, TokenStats], TokenStats, TopChannel]:
        pos = torch.cat(self.positions)
        last_step = {name: TokenStats.of(torch.cat(values), pos)
                     for name, values in (("block", self.block), ("norm", self.norm), ("normed", self.normed))}
        top = torch.cat(self.top_share, dim=1)  # [L + 3, tokens]
        rest, first = top[:, pos > 0], top[:, pos == 0]
        top4 = torch.cat(self.top4_share, dim=1)[:, pos > 0]
        index = torch.cat(self.top_index)[pos > 0]
        channel = int(torch.mode(index).values) if len(index) else int(torch.mode(torch.cat(self.top_index)).values)
        n_states = top.shape[0] - 1
        top_channel = TopChannel(
            layers=list(range(-1, n_states - 1)),
            share_median_no_sink=rest[:-1].median(dim=1).values.tolist(),
            share_sink=first[:-1].mean(dim=1).tolist() if first.shape[1] else [],
            top4_share_median_no_sink=top4[:-1].median(dim=1).values.tolist(),
            pre_norm_last=ChannelShare(share_median_no_sink=float(rest[-1].median()),
                                       top4_share_median_no_sink=float(top4[-1].median()),
                                       share_sink=float(first[-1].mean()) if first.shape[1] else math.nan),
            channel=channel, gain=float(gain[channel]),
            channel_fraction=float((index == channel).double().mean()) if len(index) else math.nan)
        return last_step, TokenStats.of(torch.cat(self.share), pos), top_channel


def init_gradients(model: nn.Module, tokenizer, settings: AtlasSettings) -> InitGradients:
    """zeta1 and alpha * zeta2 per layer at initialisation (student = teacher = ``model``) on
    ``settings.init_sequences`` training sequences, and their gradients' norms per parameter group with the
    cosine between them, for zeta2 in both conventions. zeta1 is exact (every lens layer)."""

    parts = decoder_parts(model)
    documents, data = training_documents(settings.data)
    ids = PackedSequences(documents, tokenizer, settings.init_seq_len).batch(0, settings.init_sequences)
    ids = ids.to(next(model.parameters()).device)
    groups = parts.parameter_groups()
    params = [p for ps in groups.values() for p in ps]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        teacher = parts.backbone(input_ids=ids, use_cache=False).last_hidden_state
    with torch.enable_grad():
        states = forward_states(model, ids).pre_norm
        head = TeacherHead(teacher, parts.lm_head.weight, parts.lm_head.bias, parts.transform)
        loss = LossSettings(alpha=settings.alpha, k=settings.k, chunk_size=256)
        z1 = self_distillation_loss(states, parts.norm, parts.lm_head, head, loss, alpha=0.0,
                                    logit_transform=parts.transform)
        grads = {"zeta1": torch.autograd.grad(z1.total, params, retain_graph=True, allow_unused=True)}
        weights = layer_weights(len(states) - 1, settings.k).to(states[0].device)
        zeta2, per_layer = {}, {}
        for last_state in LAST_STATES:  # alpha * zeta2 alone: the loss without its lens term
            z2 = self_distillation_loss(states, parts.norm, parts.lm_head, head, loss, zeta1=False,
                                        last_state=last_state, logit_transform=parts.transform)
            grads[f"zeta2_{last_state}"] = torch.autograd.grad(z2.total, params, retain_graph=True, allow_unused=True)
            zeta2[last_state] = settings.alpha * float(z2.zeta2)
            per_layer[last_state] = (settings.alpha * weights[1:] * z2.zeta2_per_layer).tolist()
    model.train(was_training)
    grad_norms, cosines = _gradient_geometry(grads, groups)
    weights_l = layer_weights(len(states) - 1, settings.k).tolist()
    return InitGradients(
        tokens=int(ids.numel()), zeta1=float(z1.zeta1), kl_per_layer=z1.kl_per_layer.tolist(),
        layer_weights=weights_l, weighted_kl_per_layer=[w * kl for w, kl in zip(weights_l, z1.kl_per_layer.tolist())],
        alpha=settings.alpha, alpha_zeta2=zeta2, alpha_zeta2_per_layer=per_layer, grad_norms=grad_norms,
        cosine=cosines, groups={name: sum(p.numel() for p in ps) for name, ps in groups.items()},
        tied_embeddings=parts.lm_head.weight is getattr(parts.embed, "weight", None), data=data)


def _gradient_geometry(grads: dict[str, Sequence[torch.Tensor | None]], groups: dict[str, list[nn.Parameter]]
                       ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Per loss term the gradient norm of each parameter group (and ``all``), and per last-state convention the
    cosine between zeta1's and zeta2's gradients per group. ``grads``: term -> one gradient per parameter, in
    the order of ``groups`` (None: the term does not reach that parameter)."""

    def by_group(flat):
        out, start = {}, 0
        for name, ps in groups.items():
            out[name] = [g if g is not None else torch.zeros_like(p) for g, p in zip(flat[start:start + len(ps)], ps)]
            start += len(ps)
        return out

    def norm(gs):
        return float(torch.sqrt(sum(g.double().pow(2).sum() for g in gs)))

    def cosine(a, b):
        dot = sum((x.double() * y.double()).sum() for x, y in zip(a, b))
        na, nb = norm(a), norm(b)
        return float(dot) / (na * nb) if na > 0 and nb > 0 else math.nan

    grouped = {name: by_group(g) for name, g in grads.items()}
    every = {name: [x for gs in g.values() for x in gs] for name, g in grouped.items()}
    grad_norms = {name: {group: norm(gs) for group, gs in g.items()} | {"all": norm(every[name])}
                  for name, g in grouped.items()}
    cosines = {}
    for last_state in LAST_STATES:
        other = grouped[f"zeta2_{last_state}"]
        cosines[last_state] = {group: cosine(grouped["zeta1"][group], other[group]) for group in groups}
        cosines[last_state]["all"] = cosine(every["zeta1"], every[f"zeta2_{last_state}"])
    return grad_norms, cosines


def evaluation_summary(subject: Subject, subset: str) -> LayerEvaluation:
    """Per-layer LAMBADA accuracy and WikiText word perplexity on an evaluation subset (cached)."""
    settings = load_subset(subset, subject.placed_on())
    scores, _ = subject.layer_scores(["lambada_openai", "wikitext"], settings)
    return scores.evaluation()


def compute_atlas(subject: Subject, settings: AtlasSettings) -> AtlasRecord:
    """The atlas of a loaded model (what ``STUDY`` caches)."""

    model, tokenizer = subject.model, subject.tokenizer
    observer = _TokenObserver()
    m = measure_text(model, tokenizer, settings, settings.batch_size,
                     progress=subject.progress, observers=[observer])
    parts = decoder_parts(model)
    last_step, share, top = observer.summarise(parts.norm_gain().cpu())
    return AtlasRecord(model=subject.name, num_layers=parts.num_layers, measurement=m, last_step=last_step,
                       norm_share=share, top_channel=top, state_norms=observer.state_norms(),
                       evaluation=evaluation_summary(subject, settings.eval_subset),
                       init=init_gradients(model, tokenizer, settings), settings=asdict(settings),
                       provenance=provenance(device=subject.placed_on(), data=m.info.get("data"), limits=asdict(settings)))


def atlas(model_name: str, settings: AtlasSettings = AtlasSettings(), *, device: str | None = None,
          use_cache: bool = True, loaded: tuple[nn.Module, Any] | None = None, progress: bool = True) -> AtlasRecord:
    """The atlas record of ``model_name`` (cached by the model's weights and ``settings``)."""

    return STUDY.run(model_name, settings, device=device, use_cache=use_cache, loaded=loaded, progress=progress)


def format_atlas(r: AtlasRecord) -> str:
    """The atlas numbers as plain text (``sdlib analyze``)."""
    m = r.measurement
    lines = [f"{r.model}: {r.num_layers} decoder layers; {m.n_tokens:,} tokens ({m.n_windows} windows of {m.window_len})",
             f"{'':22s} {'normed':>10s} {'pre_norm':>10s}"]
    for name, values in (("S", m.S), ("S (median curve)", m.S_median), ("D_L", r.D_L),
                         ("D_L / D_L-1", m.last_layer_ratio)):
        lines.append(f"{name:22s} {values['normed']:10.4f} {values['pre_norm']:10.4f}")
    ci = r.S_interval
    lines.append(f"{'S 95% (windows)':22s} " + " ".join(f"[{ci[c][0]:.4f}, {ci[c][1]:.4f}]" for c in LAST_STATES))
    lines.append("last step per token:   mean   median  mean(no pos 0) median(no pos 0)  pos 0")
    for name, label in (("block", "last block (pre-norm)"), ("norm", "final norm's rotation"),
                        ("normed", "normed D_L")):
        s = r.last_step[name]
        lines.append(f"  {label:22s} {s.mean:.4f} {s.median:.4f} {s.mean_no_sink:14.4f} {s.median_no_sink:16.4f} "
                     f"{s.sink:8.4f}")
    n = r.state_norms
    lines.append(f"per-token norms, median (no pos 0): ||h_L-1|| {n['h_prev'].median_no_sink:.4g}, ||x_L|| "
                 f"{n['x_last'].median_no_sink:.4g}, ||h_L|| (normed) {n['h_last'].median_no_sink:.4g}")
    s = r.norm_share
    lines.append(f"  final-norm share of the last step's angle: median {s.median:.3f} (no pos 0: "
                 f"{s.median_no_sink:.3f}), mean {s.mean:.3f}")
    t, e, z = r.top_channel, r.evaluation, r.init
    lines.append(f"largest channel of x_L: {t.channel} (largest in {t.channel_fraction:.0%} of tokens), final-norm "
                 f"gain {t.gain:+.3f}; median share of ||x_L||^2 {t.pre_norm_last.share_median_no_sink:.1%}, "
                 f"at position 0 {t.pre_norm_last.share_sink:.1%}")
    lines.append(f"per layer ({e.subset}: LAMBADA n={e.lambada_n}, WikiText pages n={e.wikitext_n}):")
    lines.append(f"{'layer':>5s} {'D normed':>9s} {'top-1 share':>11s} {'top-4 share':>11s} {'LAMBADA':>8s} "
                 f"{'WikiText ppl':>13s}")
    for i, layer in enumerate(e.layers):
        lines.append(f"{layer:5d} {m.D['normed'][i]:9.4f} {t.share_median_no_sink[i + 1]:11.3f} "
                     f"{t.top4_share_median_no_sink[i + 1]:11.3f} {e.lambada_acc[i]:8.3f} "
                     f"{e.wikitext_word_ppl[i]:13.4g}")
    lines.append(f"at initialisation ({z.tokens} tokens): zeta1 {z.zeta1:.4f}, alpha zeta2 normed "
                 f"{z.alpha_zeta2['normed']:.4f}, pre_norm {z.alpha_zeta2['pre_norm']:.4f}")
    groups = list(z.grad_norms["zeta1"])
    lines.append(f"{'gradient norm':22s} " + " ".join(f"{g:>11s}" for g in groups))
    for name in z.grad_norms:
        lines.append(f"{name:22s} " + " ".join(f"{z.grad_norms[name][g]:11.3g}" for g in groups))
    for last_state, cos in z.cosine.items():
        lines.append(f"{'cos(zeta1, zeta2 ' + last_state + ')':22s} " + " ".join(f"{cos[g]:11.3f}" for g in groups))
    return "\n".join(lines)


STUDY = Study("atlas", "the convergence atlas: D and S, the last step split into block and final norm, channel shares, "
              "per-layer evaluation, zeta1 and zeta2 at initialisation", AtlasSettings, AtlasRecord, compute_atlas,
              format_atlas, version=ATLAS_RECORD_VERSION)
