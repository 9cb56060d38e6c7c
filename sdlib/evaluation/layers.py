"""Per-layer LAMBADA and WikiText scores for every decoder layer from one forward pass, as lm-eval scores them.

``evaluate_layers`` builds lm-eval's requests with lm-eval's own task and model code, scores all L + 1
layers with ``AllLayersLM``, and aggregates each layer with the task's own ``process_results`` and
aggregation functions. ``evaluate_cached`` adds a cache keyed by the model's weights and the settings, and
the tidy table (``model, checkpoint, task, layer, metric, value, n`` + settings) saved as CSV and JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from sdlib.cache import Record, cached_record, model_fingerprint
from sdlib.errors import SdlibError
from sdlib.evaluation.tasks import check_tasks, data_provenance, load_tasks
from sdlib.models import default_device, load, resolve_checkpoint
from sdlib.parts import decoder_parts
from sdlib.paths import configs_dir, results_dir, slug
from sdlib.provenance import atomic_path, provenance, write_json
from sdlib.settings import read_yaml
from sdlib.stats import Interval, accuracy_interval

# The CPU-sized subset and the full tasks live in configs/eval/*.yaml; ``--subset auto`` picks by device.
SUBSETS = ("cpu-subset", "cpu-short", "full")


@dataclass
class EvalSettings:
    """What changes the numbers: recorded with every result and part of the cache key."""

    subset: str = "full"
    """name of the subset (configs/eval/<name>.yaml), with what the command line changed (``quick: first 20 per
    task``)"""
    limit: dict[str, int] = field(default_factory=dict)
    """first N documents per task, as lm-eval's --limit (absent = all)"""
    max_length: int | None = None
    """window length for WikiText's rolling log-likelihood and LAMBADA's truncation (None = the model's)"""
    dtype: str = "float32"

    def limit_for(self, task: str) -> int | None:
        return self.limit.get(task)


def load_subset(name_or_path: str, device: str) -> EvalSettings:
    """``auto`` (cpu-subset on a CPU, full elsewhere), a subset name under configs/eval, or a YAML path."""

    if name_or_path == "auto":
        name_or_path = "cpu-subset" if str(device).startswith("cpu") else "full"
    path = Path(name_or_path)
    if not path.suffix:
        path = configs_dir() / "eval" / f"{name_or_path}.yaml"
    if not path.is_file():
        raise SdlibError(f"evaluation subset {name_or_path!r} not found: use auto, {', '.join(SUBSETS)} or a YAML file")
    raw = read_yaml(path, "evaluation subset file")
    unknown = set(raw) - {"name", "limit", "max_length"}
    if unknown:
        raise SdlibError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; use name, limit, max_length")
    limit = {check_tasks([t])[0]: _positive(n, f"{path}: limit for {t}") for t, n in (raw.get("limit") or {}).items()}
    max_length = raw.get("max_length")
    return EvalSettings(subset=raw.get("name", path.stem), limit=limit,
                        max_length=None if max_length is None else _positive(max_length, f"{path}: max_length"))


def eval_settings(subset: str, device: str, *, limit: int | None = None, max_length: int | None = None,
                  dtype: str = "float32", tasks: Sequence[str] = ()) -> EvalSettings:
    """The subset's settings with a per-task ``limit`` (as lm-eval's --limit) and ``max_length`` over them (the
    subset's name then says so: ``cpu-subset: first 20 per task, max_length 512``)."""
    for flag, value in (("limit", limit), ("max_length", max_length)):
        if value is not None and value < 1:
            raise SdlibError(f"{flag} must be at least 1, got {value}")
    settings = load_subset(subset, device)
    if limit is not None:
        settings.limit = {t: limit for t in tasks}
    if max_length is not None:
        settings.max_length = max_length
    changed = [f"first {limit} per task"] * (limit is not None) + [f"max_length {max_length}"] * (max_length is not None)
    if changed:
        settings.subset = f"{settings.subset}: {', '.join(changed)}"
    settings.dtype = dtype
    return settings


def _positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SdlibError(f"{what} must be a positive integer, got {value!r}")
    return value


@dataclass
class TaskResult:
    """One task at every layer: per-document arrays and the aggregated metrics.

    loglikelihood: float64 [n_docs, n_layers]; greedy: bool [n_docs, n_layers] (loglikelihood tasks only);
    metrics: {metric: float64 [n_layers]}; layers: the layer of each column (default all, 0..L).
    """

    task: str
    doc_ids: list[int]
    loglikelihood: np.ndarray
    greedy: np.ndarray | None
    metrics: dict[str, np.ndarray]
    max_length: int
    layers: list[int] = field(default_factory=list)


def evaluate_layers(model: nn.Module, tokenizer, tasks=("lambada_openai", "wikitext"),
                    settings: EvalSettings | None = None, batch_size: int = 8, chunk_tokens: int = 1024,
                    progress: bool = True, layers: list[int] | None = None) -> dict[str, TaskResult]:
    """Score every decoder layer 0..L of ``model`` (or only ``layers``; -1 = the last) on lm-eval's tasks in
    one forward pass per batch."""
    from tqdm.auto import tqdm

    from sdlib.evaluation.harness import AllLayersLM

    settings = settings or EvalSettings()
    names = check_tasks(list(tasks))
    task_objs = load_tasks(names)
    n = decoder_parts(model).num_layers
    score = None if layers is None else [l % n for l in layers]
    lm = AllLayersLM(model, tokenizer=tokenizer, batch_size=batch_size, max_length=settings.max_length,
                     chunk_tokens=chunk_tokens, score_layers=score)
    out = {}
    for name in names:
        task = task_objs[name]
        task.build_all_requests(limit=settings.limit_for(name), rank=0, world_size=1)
        instances = sorted(task.instances, key=lambda inst: inst.doc_id)
        if not instances:
            raise SdlibError(f"{name}: no documents to evaluate (limit {settings.limit_for(name)})")
        total = len(instances) if task.OUTPUT_TYPE == "loglikelihood" else lm.rolling_windows(instances)
        bar = tqdm(total=total, disable=not progress, unit="req", desc=f"evaluate {name}")  # one per task, counted
        lm.on_batch = bar.update
        if task.OUTPUT_TYPE == "loglikelihood":
            raw = lm.loglikelihood(instances, disable_tqdm=True)
            loglik = np.stack([r[0] for r in raw])
            greedy = np.stack([r[1] for r in raw])
            per_layer = [[(ll, g) for ll, g in zip(loglik[:, layer], greedy[:, layer])]
                         for layer in range(loglik.shape[1])]
        elif task.OUTPUT_TYPE == "loglikelihood_rolling":
            loglik = np.stack(lm.loglikelihood_rolling(instances, disable_tqdm=True))
            greedy = None
            per_layer = [[(ll,) for ll in loglik[:, layer]] for layer in range(loglik.shape[1])]
        else:
            raise SdlibError(f"{name}: output type {task.OUTPUT_TYPE} is not supported")
        bar.close()
        out[name] = TaskResult(name, [inst.doc_id for inst in instances], loglik, greedy,
                               _aggregate(task, instances, per_layer), lm.max_length, list(lm.score_layers))
    return out


def _aggregate(task, instances, per_layer) -> dict[str, np.ndarray]:
    """The task's own process_results + aggregation, once per layer."""
    aggregations = task.aggregation()
    metrics: dict[str, list[float]] = {}
    for results in per_layer:
        items: dict[str, list] = {}
        for inst, result in zip(instances, results):
            for metric, item in task.process_results(inst.doc, [float(result[0])] if len(result) == 1
                                                     else [(float(result[0]), bool(result[1]))]).items():
                items.setdefault(metric, []).append(item)
        for metric, values in items.items():
            metrics.setdefault(metric, []).append(float(aggregations[metric](values)))
    return {m: np.asarray(v, dtype=np.float64) for m, v in metrics.items()}


# --- cache, tidy table, files -----------------------------------------------------------------------------

def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def tidy_rows(result: TaskResult, model: str, checkpoint: str | None, settings: EvalSettings) -> list[dict]:
    """Long-format rows: model, checkpoint, task, layer, metric, value, n + the settings that change numbers."""
    rows = []
    for metric, values in result.metrics.items():
        for layer, value in zip(result.layers or range(len(values)), values):
            rows.append({"model": model, "checkpoint": checkpoint or "", "task": result.task, "layer": layer,
                         "metric": metric, "value": float(value), "n": len(result.doc_ids),
                         "max_length": result.max_length, "limit": settings.limit_for(result.task),
                         "subset": settings.subset, "dtype": settings.dtype,
                         "lm_eval_version": _lm_eval_version()})
    return rows


@dataclass
class LayerEvaluation(Record):
    """The per-layer evaluation as a record: LAMBADA accuracy (with its 95% interval over passages) and WikiText word
    perplexity of every layer's lens (the last: the model's own output), scored as lm-eval scores them."""

    layers: list[int]
    lambada_acc: list[float]
    lambada_n: int
    wikitext_word_ppl: list[float]
    """empty when WikiText was not evaluated"""
    wikitext_n: int
    subset: str
    max_length: int | None
    limit: Any
    """the subset's per-task document limit (None: every document)"""
    lambada_lo: list[float] = field(default_factory=list)
    lambada_hi: list[float] = field(default_factory=list)

    def lambada(self, layer: int) -> Interval:
        """LAMBADA accuracy at ``layer`` (-1: the final layer) with its interval."""
        lo, hi = (self.lambada_lo[layer], self.lambada_hi[layer]) if self.lambada_lo else (math.nan, math.nan)
        return Interval(self.lambada_acc[layer], lo, hi)


@dataclass
class LayerScores:
    """The per-layer evaluation table (tidy rows: ``task, layer, metric, value, lo, hi, n`` + settings) with the
    per-document 0/1 outcomes of the tasks that have them ([n_docs, L + 1] per task), for paired comparisons."""

    table: Any
    """pandas DataFrame"""
    greedy: dict[str, np.ndarray] = field(default_factory=dict)

    def labelled(self, **columns: Any) -> LayerScores:
        """The same scores with constant columns added to the table (e.g. ``role``, ``label``)."""
        return LayerScores(self.table.assign(**columns), self.greedy)

    def _rows(self, task: str, metric: str):
        rows = self.table[(self.table.task == task) & (self.table.metric == metric)].sort_values("layer")
        if rows.empty:
            raise SdlibError(f"no {task} {metric} in this evaluation (it has "
                             f"{', '.join(sorted(set(self.table.task)))}): evaluate {task} first")
        return rows

    def curve(self, task: str, metric: str, intervals: bool = False) -> list:
        """``metric`` of ``task`` at layers 0..L: floats, or (value, low, high) with ``intervals``."""
        rows = self._rows(task, metric)
        if not intervals:
            return [float(v) for v in rows["value"]]
        return [(float(v), float(lo), float(hi)) for v, lo, hi in zip(rows["value"], rows["lo"], rows["hi"])]

    def n(self, task: str) -> int:
        """Documents scored for ``task``."""
        return int(self.table[self.table.task == task]["n"].iloc[0])

    def evaluation(self) -> LayerEvaluation:
        """The record of these scores (LAMBADA required; WikiText when it was evaluated), with the subset, the
        per-task document limits and LAMBADA's window length that the table's rows carry."""
        rows = self._rows("lambada_openai", "acc")
        limits = self.table.groupby("task")["limit"].first().dropna()  # one limit per task; none: every document
        wikitext = "wikitext" in set(self.table.task)
        return LayerEvaluation(layers=list(range(len(rows))), lambada_acc=rows["value"].astype(float).tolist(),
                               lambada_n=self.n("lambada_openai"),
                               wikitext_word_ppl=self.curve("wikitext", "word_perplexity") if wikitext else [],
                               wikitext_n=self.n("wikitext") if wikitext else 0, subset=str(rows["subset"].iloc[0]),
                               max_length=int(rows["max_length"].iloc[0]),
                               limit={task: int(v) for task, v in limits.items() if v},
                               lambada_lo=rows["lo"].astype(float).tolist(), lambada_hi=rows["hi"].astype(float).tolist())

    def final_correct(self, task: str) -> np.ndarray:
        """The final layer's 0/1 outcome per document [n_docs] (float)."""
        if task not in self.greedy:
            raise SdlibError(f"{task} has no per-document outcomes in this evaluation")
        return self.greedy[task][:, -1].astype(float)


def evaluate_cached(source: str, tasks, settings: EvalSettings, *, device: str | None = None, batch_size: int = 8,
                    out_dir: str | Path | None = None, use_cache: bool = True, progress: bool = True,
                    loaded: tuple[nn.Module, Any] | None = None):
    """Evaluate ``source`` (a name, hub id, folder or run) and write ``results.csv``/``results.json``.

    Each task's result is cached under ``<out_dir>/cache`` keyed by the model's weights, the tokenizer and
    the settings, so a retrained checkpoint never reuses a stale result; files are written atomically.
    -> (``LayerScores``: the tidy rows and the per-document outcomes, path of results.csv).
    """
    import pandas as pd

    names = check_tasks(list(tasks) if not isinstance(tasks, str) else tasks)
    device = default_device(device)
    model, tokenizer = loaded or load(source, dtype=settings.dtype, device=device)
    checkpoint = None
    if Path(str(source)).expanduser().exists():
        checkpoint = str(resolve_checkpoint(source))
    out_dir = Path(out_dir) if out_dir else results_dir() / slug(source) / "eval"
    fingerprint = model_fingerprint(model, tokenizer)
    data = data_provenance(names)
    rows, records, greedy = [], {}, {}
    for name in names:
        def compute(name=name):
            result = evaluate_layers(model, tokenizer, [name], settings, batch_size=batch_size, progress=progress)[name]
            return {"task": name, "rows": tidy_rows(result, str(source), checkpoint, settings),
                    "doc_ids": result.doc_ids, "loglikelihood": result.loglikelihood, "greedy": result.greedy,
                    "settings": settings.__dict__, "fingerprint": fingerprint,
                    "provenance": provenance(device=device, data=data, limits={"limit": settings.limit_for(name),
                                                                               "max_length": result.max_length})}

        key = {"task": name, "fingerprint": fingerprint, "settings": settings.__dict__,
               "lm_eval": _lm_eval_version(), "data": {k: v for k, v in data.items() if k.startswith(name + "/")}}
        record = cached_record(out_dir, name, key, compute, use_cache)
        if record.get("greedy") is not None:
            greedy[name] = np.asarray(record["greedy"], dtype=bool)  # [n_docs, n_layers]
        rows += with_intervals(record["rows"], greedy.get(name))
        records[name] = {k: record[k] for k in ("rows", "provenance", "settings", "fingerprint")}
    table = pd.DataFrame(rows)
    if not all(math.isfinite(v) for v in table["value"]):
        bad = table[~table["value"].map(math.isfinite)].iloc[0]
        print(f"warning: non-finite {bad['metric']} at layer {bad['layer']} of {bad['task']}")
    csv_path = out_dir / "results.csv"
    earlier_rows, earlier = _earlier_tasks(out_dir, names, fingerprint)
    with atomic_path(csv_path) as tmp:
        pd.concat([earlier_rows, table], ignore_index=True).to_csv(tmp, index=False)
    write_json(out_dir / "results.json", {"model": str(source), "checkpoint": checkpoint,
                                          "tasks": {**earlier, **records}})
    return LayerScores(table, greedy), csv_path


def _earlier_tasks(out_dir: Path, names: list[str], fingerprint: str):
    """The rows and records of the tasks an earlier evaluation of the same weights wrote into ``out_dir`` and this one
    does not redo (``sdlib eval --tasks A`` then ``--tasks B`` leaves both): -> (DataFrame, {task: record})."""
    import pandas as pd

    try:
        stored = json.loads((out_dir / "results.json").read_text())
        rows = pd.read_csv(out_dir / "results.csv")
    except (OSError, ValueError):
        return pd.DataFrame(), {}
    keep = {task: record for task, record in (stored.get("tasks") or {}).items()
            if task not in names and isinstance(record, dict) and record.get("fingerprint") == fingerprint}
    if "task" not in rows.columns:
        return pd.DataFrame(), {}
    return rows[rows["task"].isin(list(keep))], keep


def with_intervals(rows: list[dict], greedy: np.ndarray | None, level: float = 0.95) -> list[dict]:
    """The rows with ``lo``/``hi``: a percentile bootstrap interval over documents for each accuracy (from the
    per-document greedy outcomes [n_docs, n_layers]); None for the other metrics."""

    out = []
    for row in rows:
        lo = hi = None
        if greedy is not None and row["metric"] == "acc" and len(greedy) >= 2:
            _, lo, hi = accuracy_interval(greedy[:, row["layer"]].astype(float), level=level)
        out.append({**row, "lo": lo, "hi": hi})
    return out


def format_table(table) -> str:
    """The per-layer table, one row per layer and one column per task/metric."""
    wide = table.pivot_table(index="layer", columns=["task", "metric"], values="value")
    return wide.to_string(float_format=lambda v: f"{v:.4g}")
