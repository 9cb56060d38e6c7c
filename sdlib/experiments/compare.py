"""Pretrained vs self-distilled: the measurements and per-layer evaluations of a profile's pairs, cached by each
model's weights and the settings, and the summary table beside the paper's numbers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdlib.errors import SdlibError
from sdlib.evaluation.layers import LayerEvaluation, LayerScores, load_subset
from sdlib.evaluation.movement import MeasureRecord, MeasureSettings
from sdlib.evaluation.subject import Subject
from sdlib.evaluation.tasks import TASKS, check_tasks
from sdlib.experiments.profiles import ROLES, Pair, Profile
from sdlib.provenance import nan_to_none
from sdlib.stats import Interval, paired_ratio
from sdlib.train.runlog import EvalRecord, evals, from_dict, read_log, steps
from sdlib.types import LAST_STATES, Role

SETTING_ROW = "S measured on"
"""the summary's row saying where each model's S was measured (``Measurement.info["setting"]``)"""
TOKENS_ROW = "tokens measured / LAMBADA passages"
PAPER_COLUMN = "paper: {} (before → after)"
"""the summary's column of a model's numbers as the paper reports them"""

# The paper's reported numbers (Shibata et al.), for the summary table; absent where it gives none.
PAPER = {
    "Llama-3.2-1B": {"S": (0.56, 0.90), "D_L": (0.27, 0.058), "D_L / D_L-1": (4.14, 1.69),
                     "LAMBADA drop (final - penultimate) / final": (0.38, 0.09)},
    "Llama-3.2-3B": {"S": (0.66, 0.89)},
}


@dataclass
class CellResult:
    """One cell's trained model (or the pretrained model) measured and evaluated, paired with the pretrained
    model on the same windows and passages."""

    cell: str
    """the cell's name, or ``pretrained``"""
    settings: dict[str, Any]
    """the config keys of ``SETTINGS``, as strings or numbers"""
    tokens: int
    """training tokens (0 for the pretrained model)"""
    S: dict[str, Interval]
    """S per last-state convention, with its bootstrap interval over windows"""
    D_last: dict[str, float]
    """D_L per convention"""
    D_ratio: dict[str, float]
    """D_L / D_{L-1} per convention"""
    evaluation: LayerEvaluation
    """LAMBADA accuracy (with intervals over passages) and WikiText word perplexity of every layer's lens"""
    S_change: dict[str, Interval] | None = None
    """S minus the pretrained model's S, paired over the same windows (None for the pretrained model)"""
    lambada_ratio: Interval | None = None
    """final-layer LAMBADA accuracy / the pretrained model's, paired over the same passages"""
    train_seconds: float | None = None
    epochs: float | None = None
    final_loss: float | None = None
    over_training: list[EvalRecord] = field(default_factory=list)
    """the training log's measurements (S, D and the last step's mechanism at every evaluation)"""
    setting: str = ""
    """where S was measured (``Measurement.info["setting"]``)"""

    def to_dict(self) -> dict[str, Any]:
        return nan_to_none(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellResult:
        values = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        values["over_training"] = [from_dict({**r, "kind": "eval"}) for r in values.get("over_training", [])]
        for key in ("S", "S_change"):
            if values.get(key) is not None:
                values[key] = {conv: Interval.of(v) for conv, v in values[key].items()}
        values["evaluation"] = LayerEvaluation.from_dict(_evaluation_of(data))
        if values.get("lambada_ratio") is not None:
            values["lambada_ratio"] = Interval.of(values["lambada_ratio"])
        values["D_ratio"] = {k: _nan(v) for k, v in values["D_ratio"].items()}
        return cls(**values)

    def add_training_log(self, run_dir: Path) -> CellResult:
        """The run's training time, data epochs, final loss and its log's measurements, from its ``log.jsonl``."""
        log = read_log(run_dir)
        done = steps(log)
        if done:
            self.train_seconds, self.epochs, self.final_loss = sum(r.seconds for r in done), done[-1].epochs, done[-1].loss
        self.over_training = evals(log)
        return self

    def row(self) -> dict[str, Any]:
        """The flat table row (what the CSV and the figure read)."""
        row: dict[str, Any] = {"cell": self.cell, **self.settings, "tokens": self.tokens}
        for conv in LAST_STATES:
            row |= {f"S_{conv}": self.S[conv][0], f"S_{conv}_lo": self.S[conv][1], f"S_{conv}_hi": self.S[conv][2],
                    f"last_D_{conv}": self.D_last[conv], f"D_ratio_{conv}": self.D_ratio[conv]}
            change = (self.S_change or {}).get(conv, (math.nan,) * 3)
            row |= {f"S_{conv}_change": change[0], f"S_{conv}_change_lo": change[1], f"S_{conv}_change_hi": change[2]}
        ratio = self.lambada_ratio or ((1.0, math.nan, math.nan) if self.tokens == 0 else (math.nan,) * 3)
        e, final = self.evaluation, self.evaluation.lambada(-1)
        row |= {"lambada_final": final.value, "lambada_final_lo": final.lo, "lambada_final_hi": final.hi,
                "lambada_penultimate": e.lambada_acc[-2], "lambada_n": e.lambada_n,
                "lambada_final_vs_pretrained": ratio[0],
                "lambada_final_vs_pretrained_lo": ratio[1], "lambada_final_vs_pretrained_hi": ratio[2],
                "wikitext_final_word_ppl": e.wikitext_word_ppl[-1] if e.wikitext_word_ppl else math.nan,
                "train_seconds": self.train_seconds, "epochs": self.epochs, "final_loss": self.final_loss}
        return row


def _nan(value: Any) -> Any:
    return math.nan if value is None else value


def _evaluation_of(data: dict[str, Any]) -> dict[str, Any]:
    """A cell record's per-layer evaluation; a record written before it had one keeps the same numbers as
    ``lambada`` ([value, lo, hi] per layer), ``lambada_n`` and ``wikitext_ppl``."""
    if "evaluation" in data:
        return data["evaluation"]
    lam = [Interval.of(v) for v in data["lambada"]]
    ppl = [_nan(x) for x in data.get("wikitext_ppl") or []]
    return {"layers": list(range(len(lam))), "lambada_acc": [v.value for v in lam], "lambada_lo": [v.lo for v in lam],
            "lambada_hi": [v.hi for v in lam], "lambada_n": data["lambada_n"], "wikitext_word_ppl": ppl,
            "wikitext_n": 0, "subset": "", "max_length": None, "limit": None}


def measured(subject: Subject, measure: MeasureSettings, subset: str, tasks: Sequence[str] = TASKS
             ) -> tuple[MeasureRecord, LayerScores]:
    """(the movement record on ``measure``'s windows, the per-layer scores on ``tasks`` of subset ``subset``) of one
    model under study; both cached (``Subject.measurement``, ``Subject.layer_scores``)."""
    tasks = check_tasks(list(tasks))
    if "lambada_openai" not in tasks:
        raise SdlibError(f"a paired comparison needs lambada_openai among its tasks, got {', '.join(tasks)}")
    return subject.measurement(measure), subject.layer_scores(tasks, load_subset(subset, subject.placed_on()))[0]


def measured_pair(profile: Profile, pair: Pair, role: Role, tasks: Sequence[str] = TASKS
                  ) -> tuple[MeasureRecord, LayerScores]:
    """``measured`` for one model of a profile's pair, on the profile's measurement and evaluation subset."""
    return measured(pair.subject(role), measure_settings(profile), profile.eval_subset, tasks)


def paired_result(role: Role, measured: tuple[MeasureRecord, LayerScores],
                  base: tuple[MeasureRecord, LayerScores] | None = None) -> CellResult:
    """One model's result from what ``measured`` returned; a self-distilled one paired with its pretrained model
    (``base``) on the same windows and passages: the change of S in each reading and the final layer's LAMBADA
    ratio. What ``sdlib compare`` prints and each grid cell records."""

    m, scores = measured
    result = CellResult(
        cell=str(role), settings={}, tokens=0,
        S={conv: Interval(m.S[conv], *m.S_interval(conv)) for conv in LAST_STATES},
        D_last={conv: m.D[conv][-1] for conv in LAST_STATES}, D_ratio=dict(m.last_layer_ratio),
        evaluation=scores.evaluation(), setting=m.info.get("setting", ""))
    if role == Role.SELF_DISTILLED:
        if base is None:
            raise SdlibError("a self-distilled model's result is paired with its pretrained model's: pass base")
        base_m, base_scores = base
        result.S_change = {conv: m.S_change_from(base_m, conv) for conv in LAST_STATES}
        result.lambada_ratio = paired_ratio(base_scores.final_correct("lambada_openai"),
                                            scores.final_correct("lambada_openai"))
    return result


def measure_settings(profile: Profile) -> MeasureSettings:
    """The profile's measurement: the standard one (``MeasureSettings()``) with what its ``measure:`` changes."""
    return MeasureSettings(**profile.measure)


def measurement(profile: Profile, pair: Pair, role: Role, device: str | None = None) -> MeasureRecord:
    """The D curve and S in both conventions of one model of a pair, on the profile's measurement text (cached:
    ``Subject.measurement``)."""
    return pair.subject(role, device).measurement(measure_settings(profile))


def measurements(profile: Profile, device: str | None = None) -> list[MeasureRecord]:
    """Every model of the profile once (``Profile.models``), the pretrained ones first."""
    return [measurement(profile, pair, role, device) for pair, role in profile.models()]


def layer_scores(profile: Profile, pair: Pair, role: Role, tasks=("lambada_openai", "wikitext"),
                 device: str | None = None) -> LayerScores:
    """The per-layer evaluation (``sdlib.evaluation``) on the profile's subset (cached: ``Subject.layer_scores``),
    its table with ``role``, ``label`` and ``base_model`` columns."""
    subject = pair.subject(role, device)
    scores, _ = subject.layer_scores(tasks, load_subset(profile.eval_subset, subject.placed_on()))
    return scores.labelled(role=str(role), label=subject.label, base_model=pair.model)


def layer_scores_all(profile: Profile, tasks=("lambada_openai", "wikitext"), device: str | None = None):
    """Every model of every pair, one tidy table (pandas DataFrame)."""
    import pandas as pd

    return pd.concat([layer_scores(profile, pair, role, tasks, device).table for pair, role in profile.models()],
                     ignore_index=True)


def summary(profile: Profile, device: str | None = None):
    """Metrics in rows, models in columns: for each pair, the pretrained and self-distilled value (with 95%
    intervals where the data allow: S over windows, LAMBADA over passages, and the paired change of S), and the
    paper's values in their own columns. -> DataFrame (metric, then one column per model and state)."""
    import pandas as pd

    columns: dict[str, dict[str, str]] = {}
    for pair in profile.pairs:
        evaluated = {role: layer_scores(profile, pair, role, device=device) for role in ROLES}
        records = {role: measurement(profile, pair, role, device) for role in ROLES}
        greedy = {role: evaluated[role].greedy.get("lambada_openai") for role in ROLES}
        for role in ROLES:
            r, scores = records[role], evaluated[role]
            col = movement_rows(r)
            acc = scores.curve("lambada_openai", "acc", intervals=True)
            final, penult = acc[-1], acc[-2]
            col["LAMBADA final layer"] = _interval(*final)
            col["LAMBADA layer L-1"] = _interval(*penult)
            col["LAMBADA drop (final - penultimate) / final"] = (
                f"{(final[0] - penult[0]) / final[0]:.2f}" if final[0] > 0 else "")
            col["WikiText word ppl, final layer"] = f"{scores.curve('wikitext', 'word_perplexity')[-1]:.4g}"
            col[SETTING_ROW] = r.info.get("setting", "")
            col[TOKENS_ROW] = f"{r.n_tokens:,} / {scores.n('lambada_openai')}"
            columns[pair.label(role)] = col
        after = columns[pair.label(Role.SELF_DISTILLED)]
        for c in LAST_STATES:
            d, lo, hi = records[Role.SELF_DISTILLED].S_change_from(records[Role.PRETRAINED], c)
            after[f"S ({c}) change, paired"] = _interval(d, lo, hi, signed=True)
        if greedy[Role.PRETRAINED] is not None and greedy[Role.SELF_DISTILLED] is not None:
            r_, lo, hi = paired_ratio(greedy[Role.PRETRAINED][:, -1].astype(float),
                                      greedy[Role.SELF_DISTILLED][:, -1].astype(float))
            after["LAMBADA final / pretrained, paired"] = _interval(r_, lo, hi)
    for model, numbers in PAPER.items():  # the paper does not say which last state: its values get rows of their own
        columns[PAPER_COLUMN.format(model)] = {
            ("S (paper; last state not stated)" if k == "S" else f"{k} (paper)"): f"{v[0]:g} → {v[1]:g}"
            for k, v in numbers.items()}
    metrics = list(dict.fromkeys(k for col in columns.values() for k in col))
    return pd.DataFrame([{"metric": m, **{name: col.get(m, "") for name, col in columns.items()}} for m in metrics])


def movement_rows(record: MeasureRecord) -> dict[str, str]:
    """A summary column's rows that come from the model's measurement: S in both conventions with its 95%
    interval over documents, D_L and D_L / D_L-1."""
    col: dict[str, str] = {}
    for c in LAST_STATES:
        lo, hi = record.S_interval(c) if len(record.per_window_D[c]) >= 2 else (math.nan,) * 2
        col[f"S ({c})"] = _interval(record.S[c], lo, hi)
        col[f"D_L ({c})"] = f"{record.D[c][-1]:.3f}"
        col[f"D_L / D_L-1 ({c})"] = f"{record.last_layer_ratio[c]:.2f}"
    return col


def with_setting_row(table, records: list[MeasureRecord]):
    """A saved summary ``table`` (metrics in rows) with its "S measured on" row, from the measurement records it
    was computed from (the movement figure's: the same cached records, matched by label), placed where ``summary``
    puts it. Each model column's S and D rows must be what its record gives, or the records are not the table's.
    -> DataFrame"""
    import pandas as pd

    by_label = {r.label: r for r in records}
    out = [row for row in table.to_dict("records") if row["metric"] != SETTING_ROW]
    rows = {row["metric"]: row for row in out}
    paper = {PAPER_COLUMN.format(model) for model in PAPER}
    models = [c for c in table.columns if c != "metric" and c not in paper]
    setting = {"metric": SETTING_ROW}
    for label in models:
        if label not in by_label:
            raise SdlibError(f"the summary's column {label!r} has no measurement record among "
                             f"{', '.join(by_label) or 'none'}: redraw it with compute = True")
        for metric, value in movement_rows(by_label[label]).items():
            if rows.get(metric, {}).get(label) != value:
                raise SdlibError(f"the summary's {metric} of {label!r} is {rows.get(metric, {}).get(label)!r}, its "
                                 f"measurement record's {value!r}: not the records it was computed from")
        setting[label] = by_label[label].info.get("setting", "")
    at = next((i for i, row in enumerate(out) if row["metric"] == TOKENS_ROW), len(out))
    out.insert(at, {c: setting.get(c, "") for c in table.columns})
    return pd.DataFrame(out, columns=table.columns)


def _interval(value: float, lo: float, hi: float, signed: bool = False) -> str:
    fmt = "+.3f" if signed else ".3f"
    if value is None or not math.isfinite(value):
        return "n/a"
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{value:{fmt}}"
    return f"{value:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def numbers_of(records: list[MeasureRecord]) -> dict[str, Any]:
    """The movement figures' JSON: each model's summary by label."""
    return {r.label: r.summary() for r in records}


def layer_numbers(table, task: str) -> dict[str, Any]:
    """A per-layer figure's JSON: for each metric of ``task``, each model's values by layer (and the 95% interval of
    accuracies), and the settings that produced them."""
    part = table[table.task == task]
    out: dict[str, Any] = {}
    for metric, rows in part.groupby("metric"):
        out[metric] = {}
        for label, r in rows.groupby("label", sort=False):
            r = r.sort_values("layer")
            out[metric][label] = r["value"].tolist()
            if r["lo"].notna().all():
                out[metric][f"{label} [95% low, high]"] = list(zip(r["lo"].tolist(), r["hi"].tolist()))
    first = part.iloc[0]
    out["settings"] = {k: (None if str(first[k]) == "nan" else first[k].item() if hasattr(first[k], "item") else first[k])
                       for k in ("subset", "limit", "max_length", "n", "lm_eval_version")}
    return out
