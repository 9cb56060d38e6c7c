"""The reproduction study's grids: one YAML file holds a base config and one line per cell (the keys that cell
changes). For each cell: train (resumable), then S in both conventions with a bootstrap interval and LAMBADA
at every layer, relative to the pretrained model; collected into one table and one figure.

    sdlib grid run configs/ablations/cpu.yaml [CELL ...]   # train + measure + evaluate (cached; rerun to resume)
    sdlib grid train configs/ablations/cpu.yaml [CELL ...] # train only (the long part), cell after cell
    sdlib grid collect configs/ablations/cpu.yaml          # the table (and figure) of every finished cell
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlib.errors import SdlibError
from sdlib.paths import results_dir
from sdlib.provenance import atomic_path
from sdlib.stats import bootstrap_monotonicity
from sdlib.studies.compare import layer_scores, movement
from sdlib.studies.profiles import Pair, Profile
from sdlib.train import finished, train
from sdlib.train.config import TrainConfig, config_from_dict, read_yaml
from sdlib.train.runlog import evals, read_log, steps
from sdlib.types import Role

KEYS = {"title", "eval_subset", "measure", "base", "cells"}


@dataclass
class Grid:
    name: str
    """the file's stem (``cpu``, ``gpu``): run names are ``abl-<name>-<cell>``"""
    title: str
    eval_subset: str
    measure: dict[str, Any]
    base: dict[str, Any]
    cells: dict[str, dict[str, Any]] = field(default_factory=dict)

    def config(self, cell: str) -> TrainConfig:
        """The cell's full config: the base with the cell's keys over it."""

        if cell not in self.cells:
            raise SdlibError(f"grid {self.name} has no cell {cell!r}: use {', '.join(self.cells)}")
        return config_from_dict({**self.base, "name": f"abl-{self.name}-{cell}", **self.cells[cell]},
                                f"grid {self.name}, cell {cell}")

    def profile(self, cell: str) -> tuple[Profile, Pair]:
        pair = Pair(f"{self.name}:{cell}", self.config(cell))
        return Profile(f"grid-{self.name}", [pair], self.eval_subset, dict(self.measure)), pair


def load_grid(path: str | Path) -> Grid:

    path = Path(path)
    if not path.is_file():
        raise SdlibError(f"grid file {path} does not exist (see configs/ablations/)")
    raw = read_yaml(path, "grid file")
    unknown = set(raw) - KEYS
    if unknown or "base" not in raw or not raw.get("cells"):
        raise SdlibError(f"{path}: a grid holds {', '.join(sorted(KEYS))} (base and cells required); "
                         f"unknown: {', '.join(sorted(unknown)) or 'none'}")
    grid = Grid(name=path.stem, title=raw.get("title", path.stem), eval_subset=raw.get("eval_subset", "cpu-subset"),
                measure=dict(raw.get("measure") or {}), base=dict(raw["base"]),
                cells={str(k): dict(v or {}) for k, v in raw["cells"].items()})
    for cell in grid.cells:
        grid.config(cell)  # every cell must be a valid config: fail at once, naming it
    return grid


def cell_row(grid: Grid, cell: str | None) -> dict[str, Any]:
    """Measure and evaluate one cell's trained model (``cell`` None: the pretrained model); -> a table row."""

    profile, pair = grid.profile(cell or next(iter(grid.cells)))
    role = Role.SELF_DISTILLED if cell else Role.PRETRAINED
    m = movement(profile, pair, role)
    scores = layer_scores(profile, pair, role, tasks=["lambada_openai"])
    acc = scores[scores.metric == "acc"].sort_values("layer")
    c = pair.config
    row = {"cell": cell or "pretrained", "model": c.model, "alpha": c.alpha, "k": c.k, "lr": c.lr,
           "kl_direction": str(c.kl_direction), "last_state": str(c.last_state), "zeta2_form": str(c.zeta2_form),
           "lens_samples": c.lens_samples, "seed": c.seed, "lr_multipliers": str(c.lr_multipliers or ""),
           "tokens": c.total_steps * c.batch_size * c.seq_len if cell else 0,
           "lambada_final": acc["value"].iloc[-1], "lambada_final_lo": acc["lo"].iloc[-1],
           "lambada_final_hi": acc["hi"].iloc[-1], "lambada_penultimate": acc["value"].iloc[-2],
           "lambada_n": int(acc["n"].iloc[0])}
    for conv in ("normed", "pre_norm"):
        lo, hi = bootstrap_monotonicity(m.per_window_D[conv])
        row |= {f"S_{conv}": m.S[conv], f"S_{conv}_lo": lo, f"S_{conv}_hi": hi, f"last_D_{conv}": m.D[conv][-1]}
    if cell:
        log = read_log(c.run_dir())
        done = steps(log)
        row |= {"epochs": done[-1].epochs, "train_seconds": sum(r.seconds for r in done), "final_loss": done[-1].loss,
                "S_over_training": [(r.step, r.S["normed"], r.S["pre_norm"]) for r in evals(log)]}
    return row


def train_cells(grid: Grid, cells: list[str] | None = None) -> None:
    """Train (resume / reuse) the cells (all by default), one after another, without measuring them."""

    for cell in cells or list(grid.cells):
        print(f"== grid {grid.name}, cell {cell}: train", flush=True)
        train(grid.config(cell), resume=True)


def run(grid: Grid, cells: list[str] | None = None) -> None:
    """Train (resume / reuse), measure and evaluate the cells (all by default), then the pretrained model."""

    for cell in cells or list(grid.cells):
        print(f"== grid {grid.name}, cell {cell}: train", flush=True)
        train(grid.config(cell), resume=True)
        print(f"== grid {grid.name}, cell {cell}: measure and evaluate", flush=True)
        cell_row(grid, cell)
    cell_row(grid, None)


def finished_cells(grid: Grid) -> list[str]:

    return [cell for cell in grid.cells if finished(grid.config(cell))]


def collect(grid: Grid, cells: list[str] | None = None):
    """The grid table over ``cells`` (default: every finished cell), the pretrained model first. -> (table, csv)."""
    import pandas as pd

    cells = cells or finished_cells(grid)
    if not cells:
        raise SdlibError(f"no cell of grid {grid.name} has finished training yet: run `sdlib grid run` first")
    rows = [cell_row(grid, None)] + [cell_row(grid, cell) for cell in cells]
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "S_over_training"} for r in rows])
    table["lambada_final_vs_pretrained"] = table["lambada_final"] / table.iloc[0]["lambada_final"]
    table.attrs["S_over_training"] = {r["cell"]: r["S_over_training"] for r in rows[1:]}
    out = results_dir() / f"ablations-{grid.name}.csv"
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    return table, out


def markdown_table(table) -> str:
    """The grid table as Markdown (what RESULTS.md shows): per cell S with its interval in both conventions,
    last-layer D, LAMBADA final / penultimate and final relative to the pretrained model, training time."""
    lines = ["| cell | S normed [95%] | S pre_norm [95%] | D_L normed | D_L pre_norm | LAMBADA final / penult. "
             "| final vs pretrained | train s |", "|---|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        S = {c: f"{r[f'S_{c}']:.4f} [{r[f'S_{c}_lo']:.4f}, {r[f'S_{c}_hi']:.4f}]" for c in ("normed", "pre_norm")}
        seconds = "" if r["cell"] == "pretrained" else f"{r['train_seconds']:.0f}"
        lines.append(f"| {r['cell']} | {S['normed']} | {S['pre_norm']} | {r['last_D_normed']:.3f} | "
                     f"{r['last_D_pre_norm']:.3f} | {r['lambada_final']:.3f} / {r['lambada_penultimate']:.3f} | "
                     f"{r['lambada_final_vs_pretrained']:.0%} | {seconds} |")
    return "\n".join(lines)
