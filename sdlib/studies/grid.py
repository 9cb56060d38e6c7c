"""The reproduction study's grids: one YAML file holds a base config and one line per cell (the keys that cell
changes). For each cell: train (resumable), then S in both conventions with a bootstrap interval and LAMBADA
at every layer, relative to the pretrained model; collected into one table and one figure.

    sdlib grid run configs/ablations/cpu.yaml [CELL ...]   # train + measure + evaluate (cached; rerun to resume)
    sdlib grid train configs/ablations/cpu.yaml [CELL ...] # train only (the long part), cell after cell
    sdlib grid collect configs/ablations/cpu.yaml          # the table (and figure) of every finished cell

    sdlib grid redraw configs/ablations/cpu.yaml           # the figures again from their saved JSON (no run needed)
    sdlib train configs/ablations/cpu.yaml:00-base --resume # one cell, as any config (profiles list cells so)

Each measured cell (and the pretrained model) is also written as a small record, ``records/grids/<grid>/<cell>.json``
(its measurement, evaluation and training log, paired with the pretrained model): committed, it keeps the cell's
numbers when the run folder is gone, and ``collect`` reads it for any cell whose run is not on this machine.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdlib.errors import SdlibError
from sdlib.evaluation.layers import LayerScores
from sdlib.evaluation.tasks import TASKS, check_tasks
from sdlib.paths import records_dir, results_dir
from sdlib.provenance import atomic_path, nan_to_none, provenance, write_json
from sdlib.stats import paired_ratio
from sdlib.studies.compare import layer_scores, measurement
from sdlib.studies.profiles import Pair, Profile
from sdlib.train import finished, train
from sdlib.train.config import Grid
from sdlib.train.runlog import EvalRecord, evals, from_dict, read_log, steps
from sdlib.types import LAST_STATES, Role

Interval = tuple[float, float, float]
"""(value, low, high): a 95% bootstrap interval"""

SETTINGS = ("model", "alpha", "k", "lr", "kl_direction", "last_state", "zeta2_form", "zeta1", "lens_samples", "seed",
            "lr_multipliers", "freeze", "last_weight", "fold_final_norm", "batch_size", "seq_len")
"""the config keys a grid table shows for every cell"""


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
    lambada: list[Interval]
    """LAMBADA accuracy of every layer's lens (the last: the model's own output), with intervals over passages"""
    lambada_n: int
    wikitext_ppl: list[float]
    """WikiText word perplexity of every layer's lens (empty when WikiText was not evaluated)"""
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
                values[key] = {conv: tuple(_nan(x) for x in v) for conv, v in values[key].items()}
        values["lambada"] = [tuple(_nan(x) for x in v) for v in values["lambada"]]
        if values.get("lambada_ratio") is not None:
            values["lambada_ratio"] = tuple(_nan(x) for x in values["lambada_ratio"])
        values["D_ratio"] = {k: _nan(v) for k, v in values["D_ratio"].items()}
        values["wikitext_ppl"] = [_nan(x) for x in values.get("wikitext_ppl", [])]
        return cls(**values)

    def row(self) -> dict[str, Any]:
        """The flat table row (what the CSV and the figure read)."""
        row: dict[str, Any] = {"cell": self.cell, **self.settings, "tokens": self.tokens}
        for conv in LAST_STATES:
            row |= {f"S_{conv}": self.S[conv][0], f"S_{conv}_lo": self.S[conv][1], f"S_{conv}_hi": self.S[conv][2],
                    f"last_D_{conv}": self.D_last[conv], f"D_ratio_{conv}": self.D_ratio[conv]}
            change = (self.S_change or {}).get(conv, (math.nan,) * 3)
            row |= {f"S_{conv}_change": change[0], f"S_{conv}_change_lo": change[1], f"S_{conv}_change_hi": change[2]}
        ratio = self.lambada_ratio or ((1.0, math.nan, math.nan) if self.tokens == 0 else (math.nan,) * 3)
        row |= {"lambada_final": self.lambada[-1][0], "lambada_final_lo": self.lambada[-1][1],
                "lambada_final_hi": self.lambada[-1][2], "lambada_penultimate": self.lambada[-2][0],
                "lambada_n": self.lambada_n, "lambada_final_vs_pretrained": ratio[0],
                "lambada_final_vs_pretrained_lo": ratio[1], "lambada_final_vs_pretrained_hi": ratio[2],
                "wikitext_final_word_ppl": self.wikitext_ppl[-1] if self.wikitext_ppl else math.nan,
                "train_seconds": self.train_seconds, "epochs": self.epochs, "final_loss": self.final_loss}
        return row


def cell_profile(grid: Grid, cell: str) -> tuple[Profile, Pair]:
    """A one-pair profile for a grid's cell: its config, and the grid's evaluation subset and measurement."""
    pair = Pair(f"{grid.path}:{cell}", grid.config(cell))
    return Profile(f"grid-{grid.name}", [pair], grid.eval_subset, dict(grid.measure)), pair


def measured(grid: Grid, cell: str | None, tasks: Sequence[str] = TASKS) -> tuple[Any, LayerScores]:
    """(the movement record, the per-layer scores on ``tasks``) of one cell's trained model (``cell`` None: the
    pretrained model); both cached, so asking again costs nothing but the model's load."""
    tasks = check_tasks(list(tasks))
    if "lambada_openai" not in tasks:
        raise SdlibError(f"a grid's table needs lambada_openai among its tasks, got {', '.join(tasks)}")
    profile, pair = cell_profile(grid, cell or next(iter(grid.cells)))
    role = Role.SELF_DISTILLED if cell else Role.PRETRAINED
    return measurement(profile, pair, role), layer_scores(profile, pair, role, tasks=tasks)


def cell_result(grid: Grid, cell: str | None, tasks: Sequence[str] = TASKS,
                base: tuple[Any, LayerScores] | None = None) -> CellResult:
    """One cell's trained model (``cell`` None: the pretrained model) measured and evaluated on ``tasks`` (LAMBADA
    is required), paired with the pretrained model's ``base = measured(grid, None, tasks)`` (measured here when
    not given)."""

    m, scores = base if cell is None and base is not None else measured(grid, cell, tasks)
    c = grid.config(cell or next(iter(grid.cells)))
    result = CellResult(
        cell=cell or "pretrained", settings={k: _plain(getattr(c, k)) for k in SETTINGS},
        tokens=c.total_steps * c.batch_size * c.seq_len if cell else 0,
        S={conv: (m.S[conv], *m.S_interval(conv)) for conv in LAST_STATES},
        D_last={conv: m.D[conv][-1] for conv in LAST_STATES}, D_ratio=dict(m.last_layer_ratio),
        lambada=scores.curve("lambada_openai", "acc", intervals=True), lambada_n=scores.n("lambada_openai"),
        wikitext_ppl=scores.curve("wikitext", "word_perplexity") if "wikitext" in scores.table.task.values else [],
        setting=m.info.get("setting", ""))
    if cell:
        base_m, base_scores = base or measured(grid, None, tasks)
        result.S_change = {conv: m.S_change_from(base_m, conv) for conv in LAST_STATES}
        result.lambada_ratio = paired_ratio(base_scores.final_correct("lambada_openai"),
                                            scores.final_correct("lambada_openai"))
        log = read_log(c.run_dir())
        done = steps(log)
        result.train_seconds, result.epochs = sum(r.seconds for r in done), done[-1].epochs
        result.final_loss, result.over_training = done[-1].loss, evals(log)
    return result


def _nan(value: Any) -> Any:
    return math.nan if value is None else value


def record_path(grid: Grid, cell: str | None) -> Path:
    """Where a cell's committed record lives (``cell`` None: the pretrained model's)."""
    return records_dir() / "grids" / grid.name / f"{cell or 'pretrained'}.json"


def save_record(grid: Grid, result: CellResult) -> Path:
    """Write ``result`` as the cell's record, with the grid, the cell's config and where it was computed. A record
    that already holds the same numbers is left as it is (a rerun does not rewrite a committed record's provenance)."""
    config = grid.config(result.cell if result.cell != "pretrained" else next(iter(grid.cells)))
    path = record_path(grid, None if result.cell == "pretrained" else result.cell)
    record = {**result.to_dict(), "grid": grid.name, "config": config.to_dict() if result.tokens else
              {"model": config.model}, "measure": grid.measure, "eval_subset": grid.eval_subset}
    if path.is_file():
        stored = json.loads(path.read_text())
        stored.pop("provenance", None)
        if stored == json.loads(json.dumps(record)):
            return path
    return write_json(path, {**record, "provenance": provenance()})


def read_record(grid: Grid, cell: str | None) -> CellResult | None:
    """A cell's committed record, or None when there is none."""
    path = record_path(grid, cell)
    if not path.is_file():
        return None
    return CellResult.from_dict(json.loads(path.read_text()))


def recorded_cells(grid: Grid) -> list[str]:
    return [cell for cell in grid.cells if record_path(grid, cell).is_file()]


def _plain(value: Any) -> Any:
    return value if isinstance(value, (int, float, bool)) or value is None else str(value or "")


def train_cells(grid: Grid, cells: list[str] | None = None) -> None:
    """Train (resume / reuse) the cells (all by default), one after another, without measuring them."""

    for cell in cells or list(grid.cells):
        print(f"== grid {grid.name}, cell {cell}: train", flush=True)
        train(grid.config(cell), resume=True)


def run(grid: Grid, cells: list[str] | None = None, tasks: Sequence[str] = TASKS) -> None:
    """Train (resume / reuse), measure and evaluate the cells (all by default) and the pretrained model, writing
    each one's record as soon as it is measured."""

    base = measured(grid, None, tasks)
    save_record(grid, cell_result(grid, None, tasks, base))
    for cell in cells or list(grid.cells):
        print(f"== grid {grid.name}, cell {cell}: train", flush=True)
        train(grid.config(cell), resume=True)
        print(f"== grid {grid.name}, cell {cell}: measure and evaluate", flush=True)
        print(f"record: {save_record(grid, cell_result(grid, cell, tasks, base))}", flush=True)


def log_setting(grid: Grid) -> str:
    """Where the cells' training logs measured S and D (``TrainConfig.log_windows``), for the over-training figure."""
    return "; ".join(dict.fromkeys(grid.config(cell).log_windows().describe() for cell in grid.cells))


def finished_cells(grid: Grid) -> list[str]:

    return [cell for cell in grid.cells if finished(grid.config(cell))]


@dataclass
class GridResults:
    """Every collected cell, the pretrained model first, and where the table was written."""

    grid: Grid
    cells: list[CellResult]
    csv: Path

    def table(self):
        """One row per cell (``CellResult.row``). -> DataFrame"""
        import pandas as pd

        return pd.DataFrame([c.row() for c in self.cells])

    def numbers(self) -> dict[str, Any]:
        """The figure's JSON: the grid's settings, the table and each cell's measurements over training."""
        g = self.grid
        return nan_to_none({"grid": {"name": g.name, "title": g.title, "eval_subset": g.eval_subset, "measure": g.measure,
                                     "setting": self.cells[0].setting, "log_setting": log_setting(g)},
                            "cells": self.table().to_dict("records"),
                            "over_training": {c.cell: [asdict(r) for r in c.over_training] for c in self.cells[1:]}})


def collect(grid: Grid, cells: list[str] | None = None, tasks: Sequence[str] = TASKS) -> GridResults:
    """The grid's results over ``cells`` (default: every finished or recorded cell), the pretrained model first.
    A cell whose run has finished here is measured (cached) and its record rewritten; any other is read from its
    committed record. The table is written to ``results/ablations-<grid>.csv``."""
    live = finished_cells(grid)
    cells = cells or [c for c in grid.cells if c in live or c in recorded_cells(grid)]
    if not cells:
        raise SdlibError(f"no cell of grid {grid.name} has finished training or has a record yet: run `sdlib grid run` "
                         "first")
    stored = {c: read_record(grid, c) for c in [None, *cells] if c not in live}
    missing = [c for c in cells if c not in live and stored[c] is None]
    if missing:
        raise SdlibError(f"cell {missing[0]} of grid {grid.name} has neither a finished run here nor a record under "
                         f"{record_path(grid, missing[0]).parent}: run it with `sdlib grid run {grid.path} {missing[0]}`")
    base = measured(grid, None, tasks) if any(c in live for c in cells) or stored[None] is None else None
    results = [cell_result(grid, None, tasks, base) if base else stored[None]]
    results += [cell_result(grid, cell, tasks, base) if cell in live else stored[cell] for cell in cells]
    for result in results if base else []:
        save_record(grid, result)
    results = GridResults(grid, results, results_dir() / f"ablations-{grid.name}.csv")
    with atomic_path(results.csv) as tmp:
        results.table().to_csv(tmp, index=False)
    return results


def markdown_table(table) -> str:
    """The grid table as Markdown (what RESULTS.md shows): per cell S with its interval in both conventions and
    its change from the pretrained model paired over the same windows, D_L and D_L / D_{L-1}, LAMBADA final /
    penultimate and the final layer's accuracy relative to the pretrained model paired over the same passages,
    and the training time."""
    def interval(r, key, fmt=".4f"):
        value, lo, hi = r[key], r[f"{key}_lo"], r[f"{key}_hi"]
        if not math.isfinite(value):
            return ""
        return f"{value:{fmt}}" + (f" [{lo:{fmt}}, {hi:{fmt}}]" if math.isfinite(lo) and math.isfinite(hi) else "")

    lines = ["| cell | S normed [95%] | change, paired | S pre_norm [95%] | change, paired | D_L normed (/ D_L-1) "
             "| D_L pre_norm (/ D_L-1) | LAMBADA final / penult. | final / pretrained, paired | train min |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        minutes = "" if r["tokens"] == 0 else f"{r['train_seconds'] / 60:.0f}"
        lines.append(f"| {r['cell']} | {interval(r, 'S_normed')} | {interval(r, 'S_normed_change', '+.4f')} | "
                     f"{interval(r, 'S_pre_norm')} | {interval(r, 'S_pre_norm_change', '+.4f')} | "
                     f"{r['last_D_normed']:.3f} ({r['D_ratio_normed']:.2f}) | "
                     f"{r['last_D_pre_norm']:.3f} ({r['D_ratio_pre_norm']:.2f}) | "
                     f"{r['lambada_final']:.3f} / {r['lambada_penultimate']:.3f} | "
                     f"{interval(r, 'lambada_final_vs_pretrained', '.3f')} | {minutes} |")
    return "\n".join(lines)
