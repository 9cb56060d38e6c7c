"""Every script in bench/ runs on main: each on the tiny model (or its own small shape) for one step, printing the
JSON record its README table is made from, with the fields that table uses. A new bench script without a run
here fails the first test."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, hang_guard

BENCH = ROOT / "bench"

# script -> (arguments for a one-step run on a tiny model, the fields every printed record must have)
RUNS = {
    "train_step.py": (["--model", "tiny-llama", "--micro-batch", "1", "--seq-len", "32", "--steps", "1", "--chunk", "16"],
                      {"loss_fn", "device", "tokens_per_s", "peak_gb"}),
    "step_profile.py": (["--model", "tiny-llama", "--rows", "ce,sampled", "--steps", "1", "--seq-len", "32",
                         "--chunk", "16", "--data", "{text}"],
                        {"row", "device", "tokens_per_s", "achieved_gflop_s", "matmul_peak_gflop_s", "of_peak",
                         "peak_rss_gb", "step_rss_gb"}),
    "lens_loss.py": (["--d", "16", "--vocab", "64", "--layers", "2", "--tokens", "16", "--chunk", "8", "--repeats", "1"],
                     {"impl", "tokens_per_s", "seconds", "threads"}),
    "eval_layers.py": (["--model", "tiny-llama", "--num-layers", "2", "--hidden-size", "32", "--lambada", "2",
                        "--wikitext", "0", "--max-length", "128"],
                       {"device", "one_pass_s", "per_layer_s", "speedup", "max_rel_loglik_diff"}),
}
NEEDS_DATA = {"eval_layers.py"}  # LAMBADA's offline copy
SUMMARY_KEYS = {"speedup", "memory_ratio", "value_diff", "grad_rel_diff"}  # the ratio lines printed after the rows


def test_every_bench_script_has_a_run():
    scripts = sorted(p.name for p in BENCH.glob("*.py"))
    assert scripts == sorted(RUNS), f"bench scripts without a run in this test: {sorted(set(scripts) - set(RUNS))}"


@pytest.mark.parametrize("script", [pytest.param(s, marks=pytest.mark.data) if s in NEEDS_DATA else s
                                    for s in sorted(RUNS)])
def test_bench_script_runs_one_step_and_prints_its_record(script, text_file):
    args, fields = RUNS[script]
    args = [a.replace("{text}", str(text_file)) for a in args]
    done = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=hang_guard(900))
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    rows = [r for r in records if not set(r) <= SUMMARY_KEYS]
    assert rows, done.stdout[-2000:]
    for record in rows:
        missing = fields - set(record)
        assert not missing, f"{script} printed a record without {sorted(missing)}: {record}"
        if "tokens_per_s" in fields:
            assert record["tokens_per_s"] > 0
