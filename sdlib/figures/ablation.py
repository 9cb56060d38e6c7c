"""The reproduction study's grids: per cell, S (both conventions, bootstrap interval over the measurement
windows) and LAMBADA accuracy at every layer, relative to the pretrained model; collected into one table and
one figure. A grid is a folder of cell configs plus ``grid.yaml`` (its title and evaluation settings).

    python -m sdlib.figures.ablation configs/ablations/cpu/00-base.yaml      # measure + evaluate one cell (cached)
    python -m sdlib.figures.ablation --collect configs/ablations/cpu/*.yaml  # -> results/ablations-cpu.csv + figure
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sdlib.config import load_config
from sdlib.profiles import Pair, Profile

GRID_FILE = "grid.yaml"
DEFAULTS = {"title": "One-factor grid", "eval_subset": "cpu-subset",
            "measure": {"text": "wikitext-test", "windows": 64, "window_len": 512}}


def grid_settings(config_path: str | Path) -> dict[str, Any]:
    """The evaluation settings of the grid a cell belongs to: ``grid.yaml`` beside it over ``DEFAULTS``."""
    import yaml

    from sdlib.errors import SdlibError

    path = Path(config_path).parent / GRID_FILE
    given = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise SdlibError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **given, "name": Path(config_path).parent.name}


def cell_paths(grid_dir: str | Path) -> list[str]:
    """Every cell config of a grid folder, in name order (``grid.yaml`` excluded)."""
    return sorted(str(p) for p in Path(grid_dir).glob("*.yaml") if p.name != GRID_FILE)


def cell_profile(config_path: str) -> tuple[Profile, Pair]:
    settings = grid_settings(config_path)
    pair = Pair(config_path, load_config(config_path))
    return Profile("ablation", [pair], settings["eval_subset"], dict(settings["measure"])), pair


def cell_row(config_path: str, which: str = "trained") -> dict:
    """Measure and evaluate one cell's model (cached); -> one row of the grid table."""
    import json

    from sdlib.figures import compute
    from sdlib.metrics import bootstrap_monotonicity

    profile, pair = cell_profile(config_path)
    m = compute.movement(profile, pair, which)
    scores = compute.layer_scores(profile, pair, which, tasks=["lambada_openai"])
    acc = scores[scores.metric == "acc"].sort_values("layer")["value"].tolist()
    c = pair.config
    row = {"cell": Path(config_path).stem if which == "trained" else "pretrained", "model": c.model,
           "alpha": c.alpha, "k": c.k, "lr": c.lr, "kl_direction": c.kl_direction, "last_state": c.last_state,
           "zeta2_form": c.zeta2_form, "lens_layers": c.lens_layers, "seed": c.seed,
           "tokens": c.total_steps * c.batch_size * c.seq_len if which == "trained" else 0,
           "lambada_final": acc[-1], "lambada_penultimate": acc[-2], "lambada_n": int(scores["n"].iloc[0])}
    for conv in ("normed", "pre_norm"):
        lo, hi = bootstrap_monotonicity(m["per_window_D"][conv])
        row |= {f"S_{conv}": m["S"][conv], f"S_{conv}_lo": lo, f"S_{conv}_hi": hi, f"last_D_{conv}": m["D"][conv][-1]}
    if which == "trained":
        log = [json.loads(line) for line in (c.run_dir() / "log.jsonl").read_text().splitlines()]
        steps = [r for r in log if "loss" in r]
        row |= {"epochs": steps[-1].get("epochs"), "train_seconds": sum(r["seconds"] for r in steps),
                "final_loss": steps[-1]["loss"],
                "S_over_training": [(r["step"], r["eval"]["S"]["normed"], r["eval"]["S"]["pre_norm"])
                                    for r in log if "eval" in r]}
    return row


def collect(config_paths: list[str], figure_dir: str | Path | None = None):
    """-> (table, csv path). Every cell must belong to one grid; with ``figure_dir`` also draw the grid figure
    ``ablation_grid_<grid>`` there."""
    import pandas as pd

    from sdlib.errors import SdlibError
    from sdlib.figures.output import json_records, save_figure
    from sdlib.figures.plots import ablation_figure
    from sdlib.paths import results_dir
    from sdlib.provenance import atomic_path

    grids = {str(Path(p).parent) for p in config_paths}
    if len(grids) != 1:
        raise SdlibError(f"cells from several grids ({', '.join(sorted(grids))}); collect one grid at a time")
    settings = grid_settings(config_paths[0])
    rows = [cell_row(config_paths[0], "baseline")] + [cell_row(p, "trained") for p in config_paths]
    curves = {r["cell"]: r.pop("S_over_training") for r in rows[1:]}  # per-step lists: the figure's JSON only
    table = pd.DataFrame(rows)
    table["lambada_final_vs_pretrained"] = table["lambada_final"] / table.iloc[0]["lambada_final"]
    out = results_dir() / f"ablations-{settings['name']}.csv"
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    if figure_dir is not None:
        numbers = {"grid": settings, "cells": json_records(table), "S_over_training": curves}
        save_figure(ablation_figure(table, title=settings["title"]), f"ablation_grid_{settings['name']}", numbers,
                    figure_dir)
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


def main(argv: list[str]) -> int:
    import argparse

    from sdlib.errors import SdlibError

    parser = argparse.ArgumentParser(prog="python -m sdlib.figures.ablation", description=__doc__.split("\n")[0])
    parser.add_argument("cells", nargs="+", help="cell configs of one grid, or the grid's folder (all its cells)")
    parser.add_argument("--collect", action="store_true", help="write the grid table (and figure) of these cells")
    parser.add_argument("--figures", help="with --collect: the folder to draw the grid figure into")
    parser.add_argument("--finished", action="store_true", help="keep only the cells whose training has finished")
    args = parser.parse_args(argv)
    try:
        args.cells = [c for path in args.cells for c in (cell_paths(path) if Path(path).is_dir() else [path])]
        if args.finished:
            from sdlib.train import finished

            args.cells = [c for c in args.cells if finished(load_config(c))]
            if not args.cells:
                raise SdlibError("no cell of these has finished training yet: run scripts/ablation_grid.sh first")
        if args.collect:
            table, out = collect(args.cells, args.figures)
            print(table.to_string(float_format=lambda v: f"{v:.4g}"))
            print(markdown_table(table))
            print(f"written: {out}" + (f" and the figure in {args.figures}" if args.figures else ""))
        else:
            for path in args.cells:
                print(cell_row(path))
    except SdlibError as err:
        print(f"sdlib: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
