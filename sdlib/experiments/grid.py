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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sdlib.errors import SdlibError
from sdlib.evaluation.layers import LayerScores
from sdlib.evaluation.movement import MeasureSettings
from sdlib.evaluation.subject import Subject
from sdlib.evaluation.tasks import TASKS
from sdlib.experiments import compare
from sdlib.experiments.compare import CellResult
from sdlib.experiments.grid_config import Grid
from sdlib.experiments.profiles import Pair
from sdlib.paths import records_dir, results_dir
from sdlib.provenance import atomic_path, nan_to_none, provenance, write_json
from sdlib.train import finished, train
from sdlib.types import Role

SETTINGS = ("model", "alpha", "k", "lr", "kl_direction", "last_state", "zeta2_form", "zeta1", "lens_samples", "seed",
            "lr_multipliers", "freeze", "last_weight", "fold_final_norm", "batch_size", "seq_len")
"""the config keys a grid table shows for every cell"""


def subject(grid: Grid, cell: str | None) -> Subject:
    """A cell's trained model (``cell`` None: the grid's pretrained model) as a model under study."""
    name = cell or grid.pretrained_cell
    pair = Pair(f"{grid.path}:{name}", grid.config(name))
    return pair.subject(Role.SELF_DISTILLED if cell else Role.PRETRAINED)


def measured(grid: Grid, cell: str | None, tasks: Sequence[str] = TASKS) -> tuple[Any, LayerScores]:
    """(the movement record, the per-layer scores on ``tasks``) of one cell's trained model (``cell`` None: the
    pretrained model) on the grid's measurement and evaluation subset; both cached, so asking again costs nothing
    but the model's load."""
    return compare.measured(subject(grid, cell), MeasureSettings(**grid.measure), grid.eval_subset, tasks)


def cell_result(grid: Grid, cell: str | None, tasks: Sequence[str] = TASKS,
                base: tuple[Any, LayerScores] | None = None) -> CellResult:
    """One cell's trained model (``cell`` None: the pretrained model) measured and evaluated on ``tasks`` (LAMBADA
    is required), paired with the pretrained model's ``base = measured(grid, None, tasks)`` (measured here when
    not given), and the cell's training log."""

    base = base or measured(grid, None, tasks)
    if cell is None:
        return replace(compare.paired_result(Role.PRETRAINED, base), cell="pretrained",
                       settings=_settings(grid.config(grid.pretrained_cell)))
    result = compare.paired_result(Role.SELF_DISTILLED, measured(grid, cell, tasks), base)
    c = grid.config(cell)
    result.cell, result.settings, result.tokens = cell, _settings(c), c.train_tokens
    return result.add_training_log(c.run_dir())


def _settings(config) -> dict[str, Any]:
    return {k: _plain(getattr(config, k)) for k in SETTINGS}


def record_path(grid: Grid, cell: str | None) -> Path:
    """Where a cell's committed record lives (``cell`` None: the pretrained model's)."""
    return records_dir() / "grids" / grid.name / f"{cell or 'pretrained'}.json"


def save_record(grid: Grid, result: CellResult) -> Path:
    """Write ``result`` as the cell's record, with the grid, the cell's config and where it was computed. A record
    that already holds the same numbers is left as it is (a rerun does not rewrite a committed record's provenance)."""
    config = grid.config(result.cell if result.cell != "pretrained" else grid.pretrained_cell)
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
        minutes = "" if not r["tokens"] or r["train_seconds"] is None else f"{r['train_seconds'] / 60:.0f}"
        lines.append(f"| {r['cell']} | {interval(r, 'S_normed')} | {interval(r, 'S_normed_change', '+.4f')} | "
                     f"{interval(r, 'S_pre_norm')} | {interval(r, 'S_pre_norm_change', '+.4f')} | "
                     f"{r['last_D_normed']:.3f} ({r['D_ratio_normed']:.2f}) | "
                     f"{r['last_D_pre_norm']:.3f} ({r['D_ratio_pre_norm']:.2f}) | "
                     f"{r['lambada_final']:.3f} / {r['lambada_penultimate']:.3f} | "
                     f"{interval(r, 'lambada_final_vs_pretrained', '.3f')} | {minutes} |")
    return "\n".join(lines)
