"""Stage timings: what a run measured is what the next plan estimates from, a cached result reads as cached,
and a machine with no timings of its own falls back to the committed ones (measured on a 2-core CPU)."""

import json

import pytest

from sdlib import timings
from sdlib.cli import main
from sdlib.experiments import profiles
from sdlib.figures import run
from sdlib.train import train
from sdlib.train.config import TrainConfig, save_config


@pytest.fixture()
def committed(tmp_path, monkeypatch):
    path = tmp_path / "timings.yaml"
    monkeypatch.setattr(timings, "committed_path", lambda: path)
    return path


def test_a_recorded_rate_scales_with_the_work(committed):
    assert timings.estimate("train", "m", 1000).source == "not yet timed"
    timings.record("train", "m", 10.0, 1000)
    e = timings.estimate("train", "m", 5000)
    assert (e.seconds, e.source) == (50.0, "measured here") and e.text() == "~50 s (measured here)"
    stored = json.loads(timings.journal_path().read_text())
    assert stored[timings.machine()]["rates"]["train|m"] == {"seconds": 10.0, "units": 1000}


def test_a_cache_hit_marks_the_result_done_and_keeps_the_rate(committed):
    timings.record("evaluate", "m|tiny", 120.0, 1, done="weights-a|tiny")
    timings.record("evaluate", "m|tiny", 2.0, 1, done="weights-a|tiny")  # read from the cache: far under the rate
    assert timings.estimate("evaluate", "m|tiny", 1).seconds == 120.0  # another model's first evaluation
    cached = timings.estimate("evaluate", "m|tiny", 1, done="weights-a|tiny")
    assert cached.source == "cached" and cached.seconds < 10
    assert timings.estimate("evaluate", "m|tiny", 1, done="weights-b|tiny").seconds == 120.0


def test_the_committed_timings_are_the_fallback(committed, monkeypatch):
    committed.write_text(f"'{timings.COMMITTED_MACHINE}':\n  rates:\n    train|m: {{seconds: 30, units: 100}}\n")
    e = timings.estimate("train", "m", 200)
    assert (e.seconds, e.source) == (60.0, "on a 2-core CPU")
    timings.record("train", "m", 1.0, 100)  # this machine's own timing wins
    assert timings.estimate("train", "m", 200).source == "measured here"


def test_a_damaged_journal_is_no_error(committed):
    timings.journal_path().parent.mkdir(parents=True, exist_ok=True)
    timings.journal_path().write_text("{not json")
    assert timings.estimate("train", "m", 1).seconds is None
    timings.record("train", "m", 4.0, 2)
    assert timings.estimate("train", "m", 1).seconds == 2.0


def test_training_records_its_rate_and_the_plan_uses_it(tmp_path, monkeypatch, capsys, committed, text_file):
    (tmp_path / "configs").mkdir()
    config = TrainConfig(model="tiny-llama", model_options={"num_layers": 2}, data=str(text_file), seq_len=32,
                         batch_size=2, micro_batch=2, max_tokens=4 * 64, output_dir=str(tmp_path / "run"),
                         eval_windows=2, eval_window_len=16, eval_text=str(text_file), save_every=0)
    save_config(config, tmp_path / "configs" / "t.yaml")
    (tmp_path / "configs" / "profiles.yaml").write_text("mine:\n  configs: [configs/t.yaml]\n  eval_subset: tiny\n"
                                                        "  notebooks: [fig03_movement]\n")
    monkeypatch.setattr(profiles, "configs_dir", lambda: tmp_path / "configs")
    monkeypatch.setattr(profiles, "project_root", lambda: tmp_path)
    before = run.plan("mine")
    assert [s.kind for s in before] == ["train", "measure", "evaluate", "measure", "evaluate", "notebook"]
    assert before[0].estimate().source == "not yet timed" and before[0].units == 4 * 64
    train(config, progress=False)
    after = run.plan("mine")
    assert after[0].estimate().text() == "done"  # the run is finished: nothing left to train
    rate = timings.estimate("train", "tiny-llama", 64)
    assert rate.source == "measured here" and rate.seconds > 0
    assert main(["plan", "--profile", "mine"]) == 0
    out = capsys.readouterr().out
    assert "train " in out and "done" in out and "total ~" in out and "not yet timed" in out
@pytest.mark.parametrize("profile", [profiles.DEFAULT_PROFILE, "tiny"])
def test_the_repository_timings_estimate_every_stage_of_the_measured_profiles(profile):
    """configs/timings.yaml (measured from fresh clones) gives a fresh clone's plan a time for every stage of the
    default and the tiny profile, each from a positive rate."""
    stored = timings._read_committed()[timings.COMMITTED_MACHINE]["rates"]
    for key, rate in stored.items():
        assert rate["seconds"] > 0 and rate["units"] > 0, key
    stages = run.plan(profile)
    assert {s.kind for s in stages} >= {"train", "measure", "evaluate", "notebook"}
    for stage in stages:
        estimate = stage.estimate()
        assert estimate.seconds is not None and estimate.source == "on a 2-core CPU", (stage.what, estimate)
