"""The reproduction-study grid machinery on a tiny cell: train, measure with a bootstrap interval, score, collect."""

import pytest
import yaml

from sdlib.figures.ablation import collect
from tests.conftest import ROOT
from tests.integration.test_cli import _sdlib


@pytest.mark.data
def test_grid_collects_cells_with_intervals(tmp_path, monkeypatch):
    import sdlib.figures.ablation as ablation

    monkeypatch.setattr(ablation, "MEASURE", {"text": "wikitext-test", "windows": 8, "window_len": 128})
    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    cells = []
    for name, change in (("a-base", {}), ("b-cosine", {"zeta2_form": "cosine", "lens_layers": 2})):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**cfg, "name": name, "output_dir": str(tmp_path / name), **change}))
        done = _sdlib("train", str(path))
        assert done.returncode == 0, done.stderr[-2000:]
        cells.append(str(path))
    table, out = collect(cells, eval_subset="tiny")
    assert list(table["cell"]) == ["pretrained", "a-base", "b-cosine"] and out.exists()
    for conv in ("normed", "pre_norm"):
        assert ((table[f"S_{conv}_lo"] <= table[f"S_{conv}"] + 1e-12) &
                (table[f"S_{conv}"] <= table[f"S_{conv}_hi"] + 1e-12)).all()
    assert table.loc[2, "zeta2_form"] == "cosine" and table.loc[1, "epochs"] > 0
    assert table.loc[0, "lambada_n"] == 16
