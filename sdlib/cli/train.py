"""Commands that train: ``train`` and ``grid``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import fields

from sdlib.errors import SdlibError
from sdlib.evaluation.tasks import check_tasks
from sdlib.experiments import grid
from sdlib.experiments.grid_config import load_grid, load_run_config
from sdlib.figures.run import redraw_grid, save_grid
from sdlib.train import train
from sdlib.train.config import TrainConfig, config_help


def _train(args: argparse.Namespace, extra: Sequence[str]) -> int:
    run_dir = train(load_run_config(args.config, extra), resume=args.resume)
    print(f"run folder: {run_dir}")
    return 0


def _grid(args: argparse.Namespace, extra: Sequence[str]) -> int:
    g = load_grid(args.grid)
    if args.action == "train":
        grid.train_cells(g, args.cells or None)
        return 0
    if args.action == "redraw":
        if args.cells:
            raise SdlibError("grid redraw draws the whole saved grid: leave out the cell names")
        for path in redraw_grid(g, args.figures or "figures"):
            print(f"redrawn: {path}")
        return 0
    tasks = check_tasks(args.tasks)
    if args.action == "run":
        grid.run(g, args.cells or None, tasks)
    results = grid.collect(g, args.cells or None, tasks)
    table = results.table()
    print(grid.markdown_table(table))
    if args.figures:
        save_grid(results.numbers(), args.figures)
    print(f"written: {results.csv}" + (f" and the figure in {args.figures}" if args.figures else ""))
    return 0


def config_usage() -> str:
    """``sdlib train CONFIG [--resume] [--name NAME] ...``: every config key, wrapped."""
    words = ["sdlib train CONFIG [--resume]"] + [f"[--{f.name} {f.name.upper()}]" for f in fields(TrainConfig)]
    lines, line = [], ""
    for word in words:
        if line and len(line) + len(word) > 100:
            lines.append(line)
            line = "                  "
        line = f"{line} {word}" if line.strip() else line + word
    return "\n".join([*lines, line])


def add(sub) -> None:
    p = sub.add_parser("train", help="self-distil a model from a YAML config",
                       usage=config_usage(),
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="config keys (override any with --key value or --key=value; - and _ both work):\n"
                              + config_help())
    p.add_argument("config", help="YAML config, e.g. configs/tiny.yaml")
    p.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    p.set_defaults(func=_train)

    p = sub.add_parser("grid", help="the reproduction study's one-factor grids (configs/ablations/*.yaml)")
    p.add_argument("action", choices=("run", "train", "collect", "redraw"),
                   help="run: train, measure and evaluate cells; train: only train them; collect: the table of every "
                        "finished cell; redraw: the grid's figures again from their saved JSON (--figures, default "
                        "figures), no run or model needed")
    p.add_argument("grid", help="a grid file, e.g. configs/ablations/cpu.yaml")
    p.add_argument("cells", nargs="*", help="only these cells (default: all, or every finished one for collect)")
    p.add_argument("--figures", default=None, help="draw the grid figure into this folder (e.g. figures)")
    p.add_argument("--tasks", default="lambada_openai,wikitext",
                   help="per-layer tasks to evaluate, comma-separated (default: lambada_openai,wikitext; WikiText at every "
                        "layer of a 151,936-word model takes ~30 min per model on a 2-core CPU)")
    p.set_defaults(func=_grid)
