"""The reproduction-study grid machinery on tiny cells: a grid file (base + one line per cell) is read and
checked, cells train, and the collected table holds S with bootstrap intervals and LAMBADA per cell."""

import json

import numpy as np
import pytest
import yaml

from sdlib.errors import SdlibError
from sdlib.experiments.grid import collect, markdown_table
from sdlib.experiments.grid_config import load_grid
from sdlib.figures.output import finite_numbers
from tests.conftest import ROOT
from tests.integration.test_cli import _sdlib


def _tiny_grid(tmp_path):
    base = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    base.pop("name")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"title": "tiny grid", "eval_subset": "tiny",
                                    "measure": {"text": "wikitext-test", "windows": 8, "window_len": 128}, "base": base,
                                    "cells": {"a-base": {}, "b-cosine": {"zeta2_form": "cosine", "lens_samples": 2}}}))
    return path


@pytest.mark.data
def test_grid_runs_cells_and_collects_them_with_intervals(tmp_path):
    path = _tiny_grid(tmp_path)
    done = _sdlib("grid", "run", str(path), "--figures", str(tmp_path / "figures"))
    assert done.returncode == 0, done.stderr[-2000:]
    grid = load_grid(path)
    results = collect(grid)
    table, out = results.table(), results.csv
    md = markdown_table(table).splitlines()
    assert len(md) == 5 and md[3].startswith(f"| a-base | {table.loc[1, 'S_normed']:.4f} [")
    assert list(table["cell"]) == ["pretrained", "a-base", "b-cosine"] and out.name == "ablations-tiny.csv"
    figure = json.loads((tmp_path / "figures" / "ablation_grid_tiny.json").read_text())
    assert (tmp_path / "figures" / "ablation_grid_tiny.png").stat().st_size > 0
    assert figure["numbers"]["grid"]["measure"]["windows"] == 8
    assert finite_numbers([{k: v for k, v in c.items() if v is not None} for c in figure["numbers"]["cells"]])
    assert [r["step"] for r in figure["numbers"]["over_training"]["a-base"]][0] == 0
    training = json.loads((tmp_path / "figures" / "ablation_grid_tiny_training.json").read_text())
    assert set(training["numbers"]["over_training"]) == {"a-base", "b-cosine"}
    assert training["numbers"]["over_training"]["b-cosine"][-1]["last_step"]["entropy_last"] > 0
    for conv in ("normed", "pre_norm"):
        assert ((table[f"S_{conv}_lo"] <= table[f"S_{conv}"] + 1e-12) &
                (table[f"S_{conv}"] <= table[f"S_{conv}_hi"] + 1e-12)).all()
        # the paired change is the difference of the two S values, its interval around it
        change = table[f"S_{conv}"].iloc[1:] - table.loc[0, f"S_{conv}"]
        assert (abs(table[f"S_{conv}_change"].iloc[1:] - change) < 1e-9).all()
        assert ((table[f"S_{conv}_change_lo"].iloc[1:] <= change + 1e-12) &
                (change <= table[f"S_{conv}_change_hi"].iloc[1:] + 1e-12)).all()
    base = table.loc[0, "lambada_final"]  # 0 for a random tiny model: the ratio is then undefined (NaN)
    ratio = table["lambada_final"].iloc[1:] / base if base > 0 else table["lambada_final"].iloc[1:] * float("nan")
    assert np.allclose(table["lambada_final_vs_pretrained"].iloc[1:], ratio, atol=1e-9, equal_nan=True)
    cell = results.cells[1]  # every lens layer scored on both tasks: one per D_l
    e = cell.evaluation
    assert len(e.lambada_acc) == len(e.lambada_lo) == len(e.wikitext_word_ppl) == len(cell.over_training[0].D["normed"])
    assert table.loc[2, "zeta2_form"] == "cosine" and table.loc[2, "lens_samples"] == 2 and table.loc[1, "epochs"] > 0
    assert table.loc[0, "lambada_n"] == 16 and table.loc[0, "tokens"] == 0
    # the cells are the base with their keys over it; the runs are named after the grid and the cell
    assert grid.config("b-cosine").name == "abl-tiny-b-cosine" and grid.config("b-cosine").k == grid.config("a-base").k
    # every measured cell left a record; with the runs and caches gone, the table comes back from the records alone
    records = sorted(p.name for p in (tmp_path / "records" / "grids" / "tiny").iterdir())
    assert records == ["a-base.json", "b-cosine.json", "pretrained.json"]
    assert json.loads((tmp_path / "records" / "grids" / "tiny" / "b-cosine.json").read_text())["config"][
        "zeta2_form"] == "cosine"
    # `sdlib compare BASE RUN` pairs a run with its base model as the grid does: the same changes and ratio
    run = next((tmp_path / "build" / "runs").glob("abl-tiny-b-cosine*"))
    done = _sdlib("compare", "tiny-llama", str(run), "--subset", "tiny", "--windows", "8", "--window-len", "128",
                  "--out", str(tmp_path / "compare.json"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| pretrained |" not in done.stdout and f"| {run} |" in done.stdout
    compared = json.loads((tmp_path / "compare.json").read_text())["trained"]
    row = table.loc[2]
    for conv in ("normed", "pre_norm"):
        assert compared["S_change"][conv] == pytest.approx(
            [row[f"S_{conv}_change"], row[f"S_{conv}_change_lo"], row[f"S_{conv}_change_hi"]], abs=1e-12)
    assert compared["D_ratio"]["pre_norm"] == pytest.approx(row["D_ratio_pre_norm"], abs=1e-12)
    assert compared["evaluation"]["lambada_n"] == row["lambada_n"] and compared["tokens"] == row["tokens"]
    import shutil

    shutil.rmtree(tmp_path / "build")
    again = collect(grid).table()
    numeric = [c for c in table.columns if table[c].dtype.kind == "f"]
    assert np.allclose(again[numeric].to_numpy(float), table[numeric].to_numpy(float), equal_nan=True, rtol=0, atol=0)
    assert list(again["cell"]) == list(table["cell"])


@pytest.mark.parametrize("grid", ["cpu", "gpu"])
def test_committed_grids_load_and_every_cell_is_a_valid_config(grid):
    g = load_grid(ROOT / "configs" / "ablations" / f"{grid}.yaml")
    assert g.cells["00-base"] == {} and g.config("00-base").model == "smollm2-135m-instruct"
    assert len({g.config(c).name for c in g.cells}) == len(g.cells)


def test_a_bad_cell_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"base": {"model": "tiny-llama"}, "cells": {"x": {"alpah": 1}}}))
    with pytest.raises(SdlibError, match="unknown config key 'alpah' in grid bad, cell x"):
        load_grid(path)
    path.write_text(yaml.safe_dump({"cells": {"x": {}}}))
    with pytest.raises(SdlibError, match="base and cells required"):
        load_grid(path)
