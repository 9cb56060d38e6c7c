"""Grid files (``configs/ablations/``): a base config and one line per cell. A cell's config is the base with
the cell's keys over it, and ``GRID.yaml:CELL`` names it wherever a config is asked for (``sdlib train``, the
profiles); its run is the grid's run of that cell (``abl-<grid>-<cell>``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlib.errors import SdlibError
from sdlib.settings import parse_overrides, read_yaml
from sdlib.train.config import TrainConfig, config_from_dict, load_config

GRID_KEYS = {"title", "eval_subset", "measure", "base", "cells"}


@dataclass
class Grid:
    name: str
    """the file's stem (``cpu``, ``gpu``): run names are ``abl-<name>-<cell>``"""
    title: str
    eval_subset: str
    measure: dict[str, Any]
    base: dict[str, Any]
    cells: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: str = ""
    """the file it was read from (a cell's config is referred to as ``<path>:<cell>``)"""

    @property
    def pretrained_cell(self) -> str:
        """The cell whose config stands for the pretrained model (the first: every cell shares the base model)."""
        return next(iter(self.cells))

    def config(self, cell: str) -> TrainConfig:
        """The cell's full config: the base with the cell's keys over it."""

        if cell not in self.cells:
            raise SdlibError(f"grid {self.name} has no cell {cell!r}: use {', '.join(self.cells)}")
        return config_from_dict({**self.base, "name": f"abl-{self.name}-{cell}", **self.cells[cell]},
                                f"grid {self.name}, cell {cell}")


def load_grid(path: str | Path) -> Grid:

    path = Path(path)
    if not path.is_file():
        raise SdlibError(f"grid file {path} does not exist (see configs/ablations/)")
    raw = read_yaml(path, "grid file")
    unknown = set(raw) - GRID_KEYS
    if unknown or "base" not in raw or not raw.get("cells"):
        raise SdlibError(f"{path}: a grid holds {', '.join(sorted(GRID_KEYS))} (base and cells required); "
                         f"unknown: {', '.join(sorted(unknown)) or 'none'}")
    grid = Grid(name=path.stem, title=raw.get("title", path.stem), eval_subset=raw.get("eval_subset", "cpu-subset"),
                measure=dict(raw.get("measure") or {}), base=dict(raw["base"]),
                cells={str(k): dict(v or {}) for k, v in raw["cells"].items()}, path=str(path))
    for cell in grid.cells:
        grid.config(cell)  # every cell must be a valid config: fail at once, naming it
    return grid


def grid_cell(path: str | os.PathLike | None) -> tuple[Path, str] | None:
    """(grid file, cell) when ``path`` reads ``FILE.yaml:CELL`` (and is not itself a file), else None."""
    text = str(path) if path is not None else ""
    head, sep, cell = text.rpartition(":")
    if not sep or not cell or not head.endswith((".yaml", ".yml")) or Path(text).exists():
        return None
    return Path(head), cell


def load_run_config(path: str | os.PathLike | None = None,
                    overrides: Sequence[str] | dict[str, Any] = ()) -> TrainConfig:
    """A training config from a YAML file or a grid's cell (``GRID.yaml:CELL``: the grid's base with the cell's keys),
    with overrides applied on top (each blamed on the command line when it is wrong)."""
    cell = grid_cell(path)
    if cell is None:
        return load_config(path, overrides)
    config = load_grid(cell[0]).config(cell[1])
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    if not extra:
        return config
    values = {**config.to_dict(), **extra}
    return config_from_dict(values, str(path), sources={k: "the command line" if k in extra else str(path)
                                                         for k in values})
