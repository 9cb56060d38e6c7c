"""The tiny profile end to end: train, measure, evaluate, execute every notebook, check every output."""

import json
import os
import subprocess
import sys

import pytest

from sdlib.figures.output import finite_numbers
from sdlib.figures.run import DEFAULT_NOTEBOOKS
from tests.conftest import ROOT, hang_guard
from tests.integration.test_cli import _sdlib


@pytest.mark.data
def test_tiny_profile_regenerates_every_figure(tmp_path):
    env = {"SDLIB_BUILD_DIR": str(tmp_path / "build"), "SDLIB_FIGURES_DIR": str(tmp_path / "committed")}
    train = _sdlib("train", "configs/tiny.yaml", env_extra=env)
    assert train.returncode == 0, train.stderr[-2000:]
    done = _sdlib("figures", "--profile", "tiny", env_extra=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "build" / "figures"
    for name in DEFAULT_NOTEBOOKS:
        for ext in ("png", "html", "json"):
            assert (out / f"{name}.{ext}").stat().st_size > 0, f"{name}.{ext} missing"
        record = json.loads((out / f"{name}.json").read_text())
        assert record["numbers"] and finite_numbers(record["numbers"]), name
        assert "plotly.min.js" in (out / f"{name}.html").read_text()
        executed = json.loads((tmp_path / "build" / "notebooks" / "tiny" / f"{name}.ipynb").read_text())
        saved = "".join("".join(o.get("text", "")) + o.get("evalue", "") for cell in executed["cells"]
                        for o in cell.get("outputs", []))
        for noise in ("Warning", "Traceback", "KeyboardInterrupt", "Error"):  # a saved output is what a reader sees
            assert noise not in saved, (name, noise, saved[saved.find(noise) - 200:][:400])
    assert (out / "plotly.min.js").stat().st_size > 1_000_000
    assert not (tmp_path / "committed").exists(), "only the default profile writes figures/"
    movement = json.loads((out / "fig03_movement.json").read_text())["numbers"]
    assert set(movement) == {"tiny-llama (pretrained)", "tiny-llama (self-distilled)"}
    rows = {row["metric"]: row for row in json.loads((out / "table_summary.json").read_text())["numbers"]["rows"]}
    where = {v for k, v in rows["S measured on"].items() if k.startswith("tiny-llama")}
    assert where == {"wikitext-test, 4 x 128 tokens spread over the text"}, "the summary prints where S was measured"
    assert "wall time per stage" in done.stdout
    assert "WARNING" not in done.stderr and "KeyboardInterrupt" not in done.stderr, "a quiet run: no kernel noise"
    card = next((tmp_path / "build" / "runs" / "tiny" / "checkpoints").glob("checkpoint-16")) / "README.md"
    assert "## Per-layer evaluation" in card.read_text() and "lambada_openai" in card.read_text()

    # a reader's "Run All" with the defaults redraws the saved JSON: no model, run or cache is needed
    import shutil

    for folder in ("runs", "results", "cache"):
        shutil.rmtree(tmp_path / "build" / folder, ignore_errors=True)
    script = ("import json; from sdlib.figures.run import run_notebooks; print(json.dumps(run_notebooks('tiny', "
              f"options={{'output': '{tmp_path / 'redrawn'}', 'png': False}}, progress=False, compute=False)))")
    redraw = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=hang_guard(900),
                            env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert redraw.returncode == 0, redraw.stderr[-3000:]
    seconds = json.loads(redraw.stdout.strip().splitlines()[-1])
    assert set(seconds) == set(DEFAULT_NOTEBOOKS)
    for name in DEFAULT_NOTEBOOKS:
        again = json.loads((tmp_path / "redrawn" / f"{name}.json").read_text())
        assert again["numbers"] == json.loads((out / f"{name}.json").read_text())["numbers"], name


@pytest.mark.data
def test_a_notebook_pointed_at_a_missing_checkpoint_fails_in_one_line(tmp_path):
    from sdlib.errors import SdlibError
    from sdlib.figures.run import run_notebooks

    with pytest.raises(SdlibError, match=r"notebook fig03_movement failed .*trained checkpoint .*does not exist"):
        run_notebooks("tiny", ["fig03_movement"], options={"trained": str(tmp_path / "no-such-run")},
                      progress=False)


@pytest.mark.data
def test_your_own_model_and_run_get_the_papers_figures(tmp_path):
    env = {"SDLIB_BUILD_DIR": str(tmp_path / "build"), "SDLIB_FIGURES_DIR": str(tmp_path / "committed")}
    run = tmp_path / "my-run"
    train = _sdlib("train", "configs/tiny.yaml", "--output_dir", str(run), env_extra=env)
    assert train.returncode == 0, train.stderr[-2000:]
    out = tmp_path / "mine"
    done = _sdlib("figures", "--model", "tiny-llama", "--trained", str(run), "--output_dir", str(out),
                  "--subset", "tiny", "--windows", "4", "--window-len", "128", env_extra=env)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("fig03_movement", "fig04_pca", "fig05_lambada", "fig06_wikitext", "fig07_logit_lens",
                 "table_summary"):
        assert finite_numbers(json.loads((out / f"{name}.json").read_text())["numbers"]), name
    movement = json.loads((out / "fig03_movement.json").read_text())["numbers"]
    assert set(movement) == {"tiny-llama (pretrained)", "tiny-llama (self-distilled: my-run)"}
    assert (out / "profile.yaml").is_file() and not (tmp_path / "committed").exists()
    again = _sdlib("figures", "--profile", str(out / "profile.yaml"), "--redraw", env_extra=env)
    assert again.returncode == 0, again.stderr[-3000:]
