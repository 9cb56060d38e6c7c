import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, hang_guard


def _sdlib(*args, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "sdlib", *args], capture_output=True, text=True, env=env,
                          timeout=hang_guard(1800))


def test_measure_prints_curve_and_both_s(text_file, tmp_path):
    out = tmp_path / "m.json"
    done = _sdlib("measure", "tiny-llama", "--text", str(text_file), "--windows", "3", "--window-len", "64",
                  "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "S normed =" in done.stdout and "S pre_norm =" in done.stdout
    assert "95% bootstrap intervals over" in done.stdout and "measured on " in done.stdout  # S with its interval
    record = json.loads(out.read_text())
    assert len(record["D"]["normed"]) == 4 and record["n_tokens"] == 192
    assert {"git_commit", "versions", "device", "data"} <= set(record["provenance"])
    done = _sdlib("measure", "tiny-llama", "--text", str(text_file), "--windows", "2", "--window-len", "32",
                  "--json", "--out", str(out))
    summary = json.loads(done.stdout)
    assert 0 <= summary["S"]["normed"] <= 1 and summary["n_windows"] == 2


def test_measurements_with_other_settings_keep_their_own_files(text_file, tmp_path):
    """`sdlib measure` with other windows writes beside the first measurement, not over it."""
    env = {"SDLIB_BUILD_DIR": str(tmp_path / "build")}
    for windows in ("2", "3"):
        done = _sdlib("measure", "tiny-llama", "--text", str(text_file), "--windows", windows, "--window-len", "32",
                      env_extra=env)
        assert done.returncode == 0, done.stderr
    folder = tmp_path / "build" / "results" / "tiny-llama" / "measure"
    written = sorted(p.name for p in folder.iterdir() if p.is_file())
    assert written == ["corpus.txt-2x32-spread-float32.json", "corpus.txt-3x32-spread-float32.json"]
    # each setting is the model's cached measurement too (what the profiles, the grid and studies read)
    assert len(list((folder / "cache").glob("movement-*.json"))) == 2
    assert json.loads((tmp_path / "build" / "results" / "tiny-llama" / "measure" / written[0]).read_text())[
        "n_windows"] == 2


@pytest.mark.parametrize("args, message", [
    (["measure", "/no/such/model"], "does not exist"),
    (["measure", "tiny-llama", "--text", "/no/such/file.txt"], "neither"),
    (["train", "/no/such.yaml"], "does not exist"),
    (["train", str(ROOT / "configs" / "tiny.yaml"), "--alpha", "-1"], "alpha must be"),
    (["train", str(ROOT / "configs" / "tiny.yaml"), "--colour", "red"], "unknown config key 'colour'"),
    (["grid", "redraw", str(ROOT / "configs" / "ablations" / "cpu.yaml"), "--figures", "/no/such/folder"],
     "no saved /no/such/folder/ablation_grid_cpu.json"),
])
def test_bad_input_gives_one_line_and_exit_2(args, message, tmp_path):
    done = _sdlib(*args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sdlib: error:") and message in lines[0], done.stderr


def test_too_short_text(tmp_path):
    short = tmp_path / "one.txt"
    short.write_text("a")
    done = _sdlib("measure", "tiny-llama", "--text", str(short))
    assert done.returncode == 2 and "at least two" in done.stderr


@pytest.mark.data
def test_offline_data_dir_missing_file(tmp_path):
    done = _sdlib("measure", "tiny-llama", "--windows", "1", env_extra={"SDLIB_DATA_DIR": str(tmp_path)})
    assert done.returncode == 2 and "wikitext-2-raw-v1/wiki.test.raw" in done.stderr


@pytest.mark.slow
def test_smollm2_movement_and_monotonicity(tmp_path):
    """Opt-in: SmolLM2-135M's last-layer jump is much larger in the normed convention."""
    from sdlib.data import TextWindows
    from sdlib.evaluation.movement import measure_text
    from sdlib.models import load
    from sdlib.parts import decoder_parts

    model, tokenizer = load("smollm2-135m-instruct")
    assert decoder_parts(model).num_layers == 30
    text = "wikitext-test" if os.environ.get("SDLIB_DATA_DIR") else str(ROOT / "README.md")
    m = measure_text(model, tokenizer, TextWindows(text, 4, 256))
    assert m.D["normed"][-1] > 0.3 and m.D["pre_norm"][-1] < 0.25
    assert m.S["normed"] < m.S["pre_norm"]
    assert 0.3 < m.S["normed"] < 0.7


def test_a_window_longer_than_the_models_positions_is_refused(text_file):
    done = _sdlib("measure", "tiny-llama", "--text", str(text_file), "--windows", "2", "--window-len", "100000")
    assert done.returncode == 2 and "longer than the model's 4096 positions" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
