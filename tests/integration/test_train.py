import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from sdlib.checkpoint import list_checkpoints
from sdlib.config import load_config
from sdlib.errors import SdlibError
from sdlib.train import LOG_FILE, train
from tests.conftest import ROOT


def _config(text_file, tmp_path, name="run", **extra):
    overrides = {"name": name, "output_dir": str(tmp_path / name), "data": str(text_file),
                 "eval_text": str(text_file), **extra}
    return load_config(ROOT / "configs" / "tiny.yaml", overrides)


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / LOG_FILE).read_text().splitlines()]


def _weights(run_dir):
    return load_file(list_checkpoints(run_dir)[-1][1] / "model.safetensors")


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-qwen2"])
def test_tiny_training_lowers_loss_and_writes_checkpoints(text_file, tmp_path, model):
    run = train(_config(text_file, tmp_path, model=model), progress=False)
    steps = [r for r in _log(run) if "loss" in r]
    assert len(steps) == 16
    assert steps[-1]["loss"] < 0.5 * steps[0]["loss"]
    assert all(r["epochs"] > 0 for r in steps)
    evals = [r for r in _log(run) if "eval" in r]
    assert [r["step"] for r in evals] == [0, 8, 16]
    assert set(evals[-1]["eval"]["S"]) == {"normed", "pre_norm"}
    assert [s for s, _ in list_checkpoints(run)] == [8, 16]
    from transformers import AutoModelForCausalLM  # plain transformers loads a checkpoint

    ckpt = list_checkpoints(run)[-1][1]
    AutoModelForCausalLM.from_pretrained(ckpt)
    assert load_config(ckpt / "sdlib_config.yaml").model == model


def test_resume_equals_uninterrupted(text_file, tmp_path):
    full = train(_config(text_file, tmp_path, "full", save_every=4), progress=False)
    part_cfg = _config(text_file, tmp_path, "part", save_every=4)
    part = train(part_cfg, progress=False)
    # simulate a run killed after step 9: keep checkpoints up to step 8, cut the log mid-way
    for step, path in list_checkpoints(part):
        if step > 8:
            shutil.rmtree(path)
    lines = (part / LOG_FILE).read_text().splitlines()
    (part / LOG_FILE).write_text("\n".join(lines[:12]) + '\n{"step": 9, "los')
    with pytest.raises(SdlibError, match="--resume"):
        train(part_cfg, progress=False)
    train(part_cfg, resume=True, progress=False)
    a, b = _weights(full), _weights(part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_full = [(r["step"], r["loss"]) for r in _log(full) if "loss" in r]
    log_part = [(r["step"], r["loss"]) for r in _log(part) if "loss" in r]
    assert log_full == log_part
    # resuming a finished run touches nothing (and does not load the models to find that out)
    files = {p: p.stat().st_mtime_ns for p in part.rglob("*") if p.is_file()}
    assert train(part_cfg, resume=True, progress=False) == part
    assert {p: p.stat().st_mtime_ns for p in part.rglob("*") if p.is_file()} == files


def test_two_processes_match_one(text_file, tmp_path):
    one = train(_config(text_file, tmp_path, "one", save_every=0), progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "sdlib", "train",
           str(ROOT / "configs" / "tiny.yaml"), "--output_dir", str(tmp_path / "two"), "--data", str(text_file),
           "--eval_text", str(text_file), "--save_every", "0"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    two = tmp_path / "two"
    assert json.loads((two / "run.json").read_text())["processes"] == 2
    a, b = _weights(one), _weights(two)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k
    losses = lambda run: [r["loss"] for r in _log(run) if "loss" in r]  # noqa: E731
    assert losses(one) == pytest.approx(losses(two), rel=1e-4)


@pytest.mark.data
def test_tiny_profile_on_offline_fineweb(tmp_path):
    run = train(load_config(ROOT / "configs" / "tiny.yaml", {"output_dir": str(tmp_path / "t")}), progress=False)
    info = json.loads((run / "run.json").read_text())
    assert info["data"]["fineweb-edu"] == "sha256:898138edfad3ff17d91697ee8c758d64b79356720c427accddbbdf6612bb5a6e"
    assert info["data"]["wikitext-valid"].startswith("sha256:4cd0f687")
    assert _log(run)[-2]["loss"] < _log(run)[1]["loss"]


def test_seq_len_above_model_maximum(text_file, tmp_path):
    cfg = _config(text_file, tmp_path, model_options={"num_layers": 2, "max_position_embeddings": 32})
    with pytest.raises(SdlibError, match="above tiny-llama's maximum of 32"):
        train(cfg, progress=False)
