"""The reproduction-study grid machinery on a tiny cell: train, measure with a bootstrap interval, score, collect."""

import json
from pathlib import Path

import pytest
import yaml

from sdlib.config import load_config
from sdlib.figures.ablation import cell_paths, collect, grid_settings, markdown_table
from sdlib.figures.output import finite_numbers
from tests.conftest import ROOT
from tests.integration.test_cli import _sdlib


@pytest.mark.data
def test_grid_collects_cells_with_intervals(tmp_path):
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump({
        "title": "tiny grid", "eval_subset": "tiny", "measure": {"text": "wikitext-test", "windows": 8, "window_len": 128}}))
    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    cells = []
    for name, change in (("a-base", {}), ("b-cosine", {"zeta2_form": "cosine", "lens_layers": 2})):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**cfg, "name": name, "output_dir": str(tmp_path / name), **change}))
        done = _sdlib("train", str(path))
        assert done.returncode == 0, done.stderr[-2000:]
        cells.append(str(path))
    assert cell_paths(tmp_path) == cells  # grid.yaml is not a cell
    table, out = collect(cells, figure_dir=tmp_path / "figures")
    md = markdown_table(table).splitlines()
    assert len(md) == 5 and md[3].startswith(f"| a-base | {table.loc[1, 'S_normed']:.4f} [")
    assert list(table["cell"]) == ["pretrained", "a-base", "b-cosine"] and out.name == f"ablations-{tmp_path.name}.csv"
    figure = json.loads((tmp_path / "figures" / f"ablation_grid_{tmp_path.name}.json").read_text())
    assert (tmp_path / "figures" / f"ablation_grid_{tmp_path.name}.png").stat().st_size > 0
    assert figure["numbers"]["grid"]["measure"]["windows"] == 8 and finite_numbers(figure["numbers"]["cells"])
    assert [step for step, _, _ in figure["numbers"]["S_over_training"]["a-base"]][0] == 0
    for conv in ("normed", "pre_norm"):
        assert ((table[f"S_{conv}_lo"] <= table[f"S_{conv}"] + 1e-12) &
                (table[f"S_{conv}"] <= table[f"S_{conv}_hi"] + 1e-12)).all()
    assert table.loc[2, "zeta2_form"] == "cosine" and table.loc[1, "epochs"] > 0
    assert table.loc[0, "lambada_n"] == 16


@pytest.mark.parametrize("grid", ["cpu", "gpu"])
def test_committed_grids_are_one_factor_from_their_base(grid):
    """Every committed cell loads, and differs from its grid's 00-base in exactly one recipe factor."""
    folder = ROOT / "configs" / "ablations" / grid
    settings = grid_settings(folder / "00-base.yaml")
    assert settings["name"] == grid and settings["measure"]["windows"] > 0
    recipe = ["alpha", "k", "lr", "kl_direction", "last_state", "zeta2_form", "max_tokens", "seed"]
    base = load_config(folder / "00-base.yaml")
    for path in cell_paths(folder)[1:]:
        c = load_config(path)
        stem = Path(path).stem
        # a repeat of another cell with a second seed is named "<cell>-seed<N>" and changes only the seed
        reference = load_config(folder / f"{stem.rsplit('-seed', 1)[0]}.yaml") if "-seed" in stem else base
        changed = [f for f in recipe if getattr(c, f) != getattr(reference, f)]
        assert changed == (["seed"] if "-seed" in stem else changed) and len(changed) == 1, f"{path}: {changed}"
        assert c.name != base.name and c.model == base.model == "smollm2-135m"
