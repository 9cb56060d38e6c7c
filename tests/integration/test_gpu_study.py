"""The GPU study's dry run: the same stages end to end on the CPU with tiny models, what comes back, resuming,
a budget that runs out, and the batch sized to the time."""

import json
import os
import subprocess

import pytest

from sdlib.stats import Interval
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
    assert all(stages[s]["done"] for s in ("throughput", "baseline", "recipe", "cosine")), stages
    assert study["environment"]["device"].startswith("cpu")
    recipe = stages["recipe"]
    batch = recipe["sequences_per_step"]
    assert recipe["tokens"] == recipe["steps"] * batch * 64 and 0 < recipe["fraction_of_paper_tokens"] < 1
    assert recipe["steps"] == recipe["planned_steps"] == 16  # the config's steps are kept; the batch is sized
    difference = Interval.of(recipe["paired"]["S_normed_difference"])
    assert difference.lo <= difference.value <= difference.hi
    after = recipe["after"]["evaluation"]
    assert after["lambada_n"] == 16 and len(after["lambada_acc"]) == len(after["lambada_lo"]) == 4
    assert [r["step"] for r in recipe["S_over_training"]][0] == 0
    cosine = stages["cosine"]
    assert cosine["config"]["zeta2_form"] == "cosine" and recipe["config"]["zeta2_form"] == "relative_step"
    assert cosine["steps"] == 16 and len(cosine["paired"]["lambada_final_ratio"]) == 3
    # a second call finds every stage done and skips it
    again = _dry_run(out, work)
    assert again.returncode == 0 and again.stdout.count("results exist, skipped") == 4
    assert json.loads((out / "study.json").read_text())["stages"]["recipe"] == recipe
    # what comes back is drawn by the gpu profile's notebook
    env = {**os.environ, "SDLIB_FIGURES_DIR": str(tmp_path / "figures"), "SDLIB_BUILD_DIR": str(tmp_path / "build"),
           "PYTHONPATH": str(ROOT)}
    for args in (["gpu-study", "import", str(out)], ["figures", "--profile", "gpu"]):
        done = subprocess.run([os.sys.executable, "-m", "sdlib", *args], capture_output=True, text=True, env=env,
                              timeout=hang_guard(1800), cwd=ROOT)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "unknown parameter" not in done.stdout + done.stderr  # papermill is passed only declared parameters
    drawn = tmp_path / "figures" / "gpu"
    assert {"study.json", "gpu_study.png", "gpu_study.html", "gpu_study.json"} <= {p.name for p in drawn.iterdir()}
    assert "recipe: 16 steps" in " ".join(json.loads((drawn / "gpu_study.json").read_text())["numbers"]["summary"])


def test_a_spent_budget_still_returns_a_record(tmp_path):
    out = tmp_path / "out"
    done = _dry_run(out, tmp_path / "work", budget="0")
    assert done.returncode == 0, done.stderr[-2000:]
    stages = json.loads((out / "study.json").read_text())["stages"]
    assert not any(s["done"] for s in stages.values()) and "left of the budget" in stages["recipe"]["reason"]


def test_the_batch_is_sized_to_the_time_and_the_steps_are_kept():
    from sdlib.experiments.gpu.sizing import sized_batch
    from sdlib.experiments.throughput import StepTiming

    def timing(seconds, lens_samples):
        return StepTiming(micro_batch=16, seq_len=1024, lens_samples=lens_samples, seconds_per_micro_batch=seconds,
                          tokens_per_s=16 * 1024 / seconds, step_seconds=8 * seconds, flops_per_token=1.0, mfu=None,
                          peak_memory_gb=None)

    exact, sampled = timing(8.0, 0), timing(4.0, 4)  # 0.5 s and 0.25 s a sequence
    use, batch = sized_batch(exact, sampled, 128, 76, 76 * 128 * 0.5 + 1)  # the paper's batch fits
    assert use.lens_samples == 0 and batch == 128
    use, batch = sized_batch(exact, sampled, 128, 76, 76 * 40 * 0.5)  # 40 exact sequences a step
    assert use.lens_samples == 0 and batch == 32  # a multiple of the micro-batch
    use, batch = sized_batch(exact, sampled, 128, 76, 76 * 10 * 0.5)  # not one exact micro-batch
    assert use.lens_samples == 4 and batch == 16
    use, batch = sized_batch(exact, sampled, 128, 76, 76 * 3 * 0.25)
    assert use.lens_samples == 4 and batch == 3
    assert exact.seconds_per_micro_batch == 8.0  # sizing reads the timings, never writes them
    assert sized_batch(exact, sampled, 128, 76, 1.0)[1] == 1  # never below one sequence

def test_import_puts_the_record_where_the_gpu_profile_reads_it(tmp_path, monkeypatch):
    from sdlib.experiments.gpu.report import import_results

    monkeypatch.setenv("SDLIB_FIGURES_DIR", str(tmp_path / "figures"))
    (tmp_path / "back").mkdir()
    (tmp_path / "back" / "study.json").write_text(json.dumps({"stages": {}}))
    assert import_results(tmp_path / "back") == tmp_path / "figures" / "gpu" / "study.json"
    from sdlib.errors import SdlibError

    with pytest.raises(SdlibError, match="no study.json"):
        import_results(tmp_path)
