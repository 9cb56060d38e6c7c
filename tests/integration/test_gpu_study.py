"""The GPU study's dry run: the same stages end to end on the CPU with tiny models, what comes back, resuming,
a budget that runs out, and the device-call plan."""

import json
import os
import subprocess

import pytest

from tests.conftest import ROOT, hang_guard

pytestmark = pytest.mark.data


def _dry_run(out, work, budget="600"):
    env = {**os.environ, "OUT": str(out), "WORK": str(work), "BUDGET": budget, "PYTHON": os.sys.executable}
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_study.sh"), "--dry-run"], capture_output=True,
                          text=True, env=env, timeout=hang_guard(2400), cwd=ROOT)


def test_dry_run_runs_every_stage_and_returns_few_files(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    done = _dry_run(out, work)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "records.tar.gz", "study.json"]  # <= 8 files
    study = json.loads((out / "study.json").read_text())
    stages = study["stages"]
    assert all(stages[s]["done"] for s in ("throughput", "baseline", "recipe", "second", "bench")), stages
    assert study["environment"]["device"].startswith("cpu")
    recipe = stages["recipe"]
    assert recipe["tokens"] == recipe["steps"] * 8 * 64 and 0 < recipe["fraction_of_paper_tokens"] < 1
    assert {"value", "lo", "hi"} <= set(recipe["paired"]["S_normed_difference"])
    assert recipe["after"]["lambada_n"] == 16 and len(recipe["after"]["lambada_acc"]) == 4
    assert [r["step"] for r in recipe["S_over_training"]][0] == 0
    assert stages["second"]["config"]["lr_multipliers"] == {"final_norm": 100}
    assert stages["second"]["config"]["last_state"] == "pre_norm"
    assert len(stages["bench"]["rows"]) >= 2
    # a second call finds every stage done and skips it
    again = _dry_run(out, work)
    assert again.returncode == 0 and again.stdout.count("results exist, skipped") == 5
    assert json.loads((out / "study.json").read_text())["stages"]["recipe"] == recipe
    # what comes back is drawn by the gpu profile's notebook
    env = {**os.environ, "SDLIB_FIGURES_DIR": str(tmp_path / "figures"), "SDLIB_BUILD_DIR": str(tmp_path / "build"),
           "PYTHONPATH": str(ROOT)}
    for args in (["gpu-study", "import", str(out)], ["figures", "--profile", "gpu"]):
        done = subprocess.run([os.sys.executable, "-m", "sdlib", *args], capture_output=True, text=True, env=env,
                              timeout=hang_guard(1800), cwd=ROOT)
        assert done.returncode == 0, done.stderr[-3000:]
    drawn = tmp_path / "figures" / "gpu"
    assert {"study.json", "gpu_study.png", "gpu_study.html", "gpu_study.json"} <= {p.name for p in drawn.iterdir()}
    assert "recipe: 16 steps" in " ".join(json.loads((drawn / "gpu_study.json").read_text())["numbers"]["summary"])


def test_a_spent_budget_still_returns_a_record(tmp_path):
    out = tmp_path / "out"
    done = _dry_run(out, tmp_path / "work", budget="0")
    assert done.returncode == 0, done.stderr[-2000:]
    stages = json.loads((out / "study.json").read_text())["stages"]
    assert not any(s["done"] for s in stages.values()) and "left of the budget" in stages["recipe"]["reason"]


def test_plan_packs_every_part_once_under_the_call_limit(tmp_path):
    from sdlib.studies.gpu_study import CALL_LIMIT, plan, working_tree_bytes

    folder = tmp_path / "carry"
    (folder / "wheels").mkdir(parents=True)
    (folder / "wheels" / "a.whl").write_bytes(b"x" * 1000)
    (folder / "data.tar.gz").write_bytes(b"d" * 100)
    parts = [{"file": f"m.gguf.part{i:02d}", "bytes": 30 * 2**20, "sha256": ""} for i in range(5)]
    (folder / "gguf").mkdir()
    for p in parts:
        (folder / "gguf" / p["file"]).write_bytes(b"")
    (folder / "manifest.json").write_text(json.dumps({"models": {"m": {"parts": parts}}}))
    calls = plan(folder, budget_s=300)
    carried = [c for call in calls for c in call["carry"] if "/gguf/" in c]
    assert sorted(carried) == sorted(f"{folder}/gguf/{p['file']}" for p in parts)
    assert all(call["bytes"] + working_tree_bytes() <= CALL_LIMIT for call in calls)
    assert calls[0]["command"].startswith("bash scripts/gpu_study.sh probe")
    assert calls[-1]["command"] == "bash scripts/gpu_study.sh run --budget 300" and calls[-1]["timeout_s"] <= 600


def test_import_puts_the_record_where_the_gpu_profile_reads_it(tmp_path, monkeypatch):
    from sdlib.studies.gpu_study import import_results

    monkeypatch.setenv("SDLIB_FIGURES_DIR", str(tmp_path / "figures"))
    (tmp_path / "back").mkdir()
    (tmp_path / "back" / "study.json").write_text(json.dumps({"stages": {}}))
    assert import_results(tmp_path / "back") == tmp_path / "figures" / "gpu" / "study.json"
    from sdlib.errors import SdlibError

    with pytest.raises(SdlibError, match="no study.json"):
        import_results(tmp_path)
