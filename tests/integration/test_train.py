import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from sdlib.errors import SdlibError
from sdlib.runs import list_checkpoints
from sdlib.train import LOG_FILE, train
from sdlib.train.config import load_config
from sdlib.train.runlog import StopRecord, evals, read_log, steps
from tests.conftest import ROOT, hang_guard


def _config(text_file, tmp_path, name="run", **extra):
    overrides = {"name": name, "output_dir": str(tmp_path / name), "data": str(text_file),
                 "eval_text": str(text_file), **extra}
    return load_config(ROOT / "configs" / "tiny.yaml", overrides)


def _log(run_dir):
    return read_log(run_dir)


def _steps(run_dir):
    return steps(read_log(run_dir))


def _weights(run_dir):
    return load_file(list_checkpoints(run_dir)[-1][1] / "model.safetensors")


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-qwen2"])
def test_tiny_training_lowers_loss_and_writes_checkpoints(text_file, tmp_path, model):
    run = train(_config(text_file, tmp_path, model=model), progress=False)
    done = _steps(run)
    assert len(done) == 16
    assert done[-1].loss < 0.5 * done[0].loss
    assert all(r.epochs > 0 for r in done) and len(done[0].zeta2_per_layer) == 3 and len(done[0].kl_per_layer) == 4
    measured = evals(_log(run))
    assert [r.step for r in measured] == [0, 8, 16]
    assert set(measured[-1].S) == {"normed", "pre_norm"}
    assert [s for s, _ in list_checkpoints(run)] == [8, 16]
    from transformers import AutoModelForCausalLM  # plain transformers loads a checkpoint

    ckpt = list_checkpoints(run)[-1][1]
    AutoModelForCausalLM.from_pretrained(ckpt)
    assert load_config(ckpt / "sdlib_config.yaml").model == model


def test_a_run_with_older_checkpoint_names_resumes_to_the_same_weights(text_file, tmp_path):
    """A run whose checkpoints are named step-NNNNNN (sdlib 0.2 and earlier) resumes from the latest of them and
    ends where an uninterrupted run ends; the new checkpoints are named checkpoint-N."""
    full = train(_config(text_file, tmp_path, "full", save_every=4), progress=False)
    cfg = _config(text_file, tmp_path, "old", save_every=4)
    old = train(cfg, progress=False)
    for step, path in list_checkpoints(old):
        if step > 8:
            shutil.rmtree(path)
        else:
            path.rename(path.with_name(f"step-{step:06d}"))
    train(cfg, resume=True, progress=False)
    assert [p.name for _, p in list_checkpoints(old)] == ["step-000004", "step-000008", "checkpoint-12",
                                                          "checkpoint-16"]
    a, b = _weights(full), _weights(old)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


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
    log_full = [(r.step, r.loss) for r in _steps(full)]
    log_part = [(r.step, r.loss) for r in _steps(part)]
    assert log_full == log_part
    # resuming a finished run touches nothing (and does not load the models to find that out)
    files = {p: p.stat().st_mtime_ns for p in part.rglob("*") if p.is_file()}
    assert train(part_cfg, resume=True, progress=False) == part
    assert {p: p.stat().st_mtime_ns for p in part.rglob("*") if p.is_file()} == files


def test_sampled_lens_layers_do_not_depend_on_what_loading_drew(text_file, tmp_path, monkeypatch):
    """A first load that builds a cache (dequantizing a model, tokenizing data) draws from torch's RNG and a later
    one does not: the layers a sampled zeta1 draws, and so the run, must be the same either way."""
    from sdlib.train import recipe

    plain = train(_config(text_file, tmp_path, "plain", lens_samples=2, save_every=0), progress=False)
    loader, reader = recipe.load, recipe.training_documents

    def drawing_load(*args, **kwargs):
        torch.rand(7)  # what a cold cache's first load does to the global RNG
        return loader(*args, **kwargs)

    def drawing_reader(*args, **kwargs):
        torch.randint(0, 10, (3,))
        return reader(*args, **kwargs)

    monkeypatch.setattr(recipe, "load", drawing_load)
    monkeypatch.setattr(recipe, "training_documents", drawing_reader)
    cold = train(_config(text_file, tmp_path, "cold", lens_samples=2, save_every=0), progress=False)
    assert [(r.step, r.loss) for r in _steps(plain)] == [(r.step, r.loss) for r in _steps(cold)]


def _launch_tiny(accelerate_config: str, text_file, output_dir, *options: str) -> subprocess.CompletedProcess:
    """``sdlib train configs/tiny.yaml`` under ``accelerate launch`` with 2 processes, on ``text_file``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / accelerate_config), "--num_processes", "2", *options,
           "-m", "sdlib", "train", str(ROOT / "configs" / "tiny.yaml"), "--output_dir", str(output_dir),
           "--data", str(text_file), "--eval_text", str(text_file), "--save_every", "0"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=hang_guard(1800))


def test_two_processes_match_one(text_file, tmp_path):
    one = train(_config(text_file, tmp_path, "one", save_every=0), progress=False)
    done = _launch_tiny("ddp.yaml", text_file, tmp_path / "two", "--mixed_precision", "no")
    assert done.returncode == 0, done.stderr[-3000:]
    two = tmp_path / "two"
    assert json.loads((two / "run.json").read_text())["processes"] == 2
    a, b = _weights(one), _weights(two)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k
    losses = lambda run: [r.loss for r in _steps(run)]  # noqa: E731
    assert losses(one) == pytest.approx(losses(two), rel=1e-4)


@pytest.mark.data
def test_tiny_profile_on_offline_fineweb(tmp_path):
    run = train(load_config(ROOT / "configs" / "tiny.yaml", {"output_dir": str(tmp_path / "t")}), progress=False)
    info = json.loads((run / "run.json").read_text())
    assert info["data"]["fineweb-edu"] == "sha256:898138edfad3ff17d91697ee8c758d64b79356720c427accddbbdf6612bb5a6e"
    assert info["data"]["wikitext-valid"].startswith("sha256:4cd0f687")
    assert _steps(run)[-1].loss < _steps(run)[0].loss
    # golden numbers (torchtune's recipe tests do the same): the tiny profile's loss at steps 1, 8 and 16 on this
    # machine type (fp32 CPU); any change to the data order, the loss or the optimizer moves them
    losses = [r.loss for r in _steps(run)]
    assert [losses[0], losses[7], losses[15]] == pytest.approx([425.3550262451172, 1.1269158720970154,
                                                                0.3377186805009842], rel=1e-4)


def test_seq_len_above_model_maximum(text_file, tmp_path):
    cfg = _config(text_file, tmp_path, model_options={"num_layers": 2, "max_position_embeddings": 32})
    with pytest.raises(SdlibError, match="above tiny-llama's maximum of 32"):
        train(cfg, progress=False)


def test_lr_multipliers_scale_the_first_adam_step(text_file, tmp_path):
    """Adam's first step moves every weight by about lr (m / sqrt(v) = g / |g|), so a group's multiplier shows
    up as the same factor in how far its weights moved; the other groups move as without it."""
    from sdlib.models import load

    base, _ = load("tiny-llama", num_layers=4, hidden_size=64, vocab_size=512, seed=0)
    moved = {}
    for name, factor in (("plain", 1), ("x30", 30)):
        run = train(_config(text_file, tmp_path, name, max_tokens=512, grad_clip=0, lr=1e-4,
                            lr_multipliers={"final_norm": factor}), progress=False)
        w = _weights(run)
        moved[name] = {k: (w[k] - base.state_dict()[k]).abs().mean().item() for k in ("model.norm.weight",
                                                                                   "model.layers.0.mlp.up_proj.weight")}
    assert moved["plain"]["model.norm.weight"] == pytest.approx(1e-4, rel=0.1)
    assert moved["x30"]["model.norm.weight"] == pytest.approx(30 * moved["plain"]["model.norm.weight"], rel=0.1)
    assert moved["x30"]["model.layers.0.mlp.up_proj.weight"] == pytest.approx(
        moved["plain"]["model.layers.0.mlp.up_proj.weight"], rel=1e-6)


def test_shuffle_reads_every_sequence_once_per_pass_in_a_seeded_order(text_file):
    from sdlib.data import PackedSequences, training_documents
    from sdlib.models import byte_tokenizer

    tok = byte_tokenizer()

    def stream(seed):
        return PackedSequences(training_documents(str(text_file))[0], tok, 32, eager=True, shuffle_seed=seed)

    plain, a, a2, b = stream(None), stream(0), stream(0), stream(1)
    n = len(a.tokens) // 32
    first_pass = [tuple(a.sequence(i).tolist()) for i in range(n)]
    in_order = [tuple(a.tokens[i * 32:(i + 1) * 32]) for i in range(n)]
    assert sorted(first_pass) == sorted(in_order) and first_pass != in_order  # a permutation of the whole sequences
    assert [tuple(a.sequence(i).tolist()) for i in range(n, 2 * n)] != first_pass  # a new order in the next pass
    assert [tuple(a2.sequence(i).tolist()) for i in range(n)] == first_pass  # the seed decides it
    assert [tuple(b.sequence(i).tolist()) for i in range(n)] != first_pass
    assert tuple(plain.sequence(1).tolist()) == in_order[1]  # without a seed: text order, as before


def test_max_minutes_stops_with_a_checkpoint_and_resume_finishes(text_file, tmp_path):
    cfg = _config(text_file, tmp_path, "timed", max_minutes=1e-9)  # stops after the first step
    run = train(cfg, progress=False)
    assert [s for s, _ in list_checkpoints(run)] == [1]
    assert isinstance(_log(run)[-1], StopRecord) and "max_minutes" in _log(run)[-1].reason
    full = train(_config(text_file, tmp_path, "timed", max_minutes=0), resume=True, progress=False)
    assert [s for s, _ in list_checkpoints(full)][-1] == 16
    reference = train(_config(text_file, tmp_path, "reference"), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(_weights(full).values(), _weights(reference).values()))


def test_checkpoint_has_a_model_card_and_tensorboard_gets_the_run(text_file, tmp_path):
    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(_config(text_file, tmp_path, "card", report_to="tensorboard"), progress=False)
    card = (list_checkpoints(run)[-1][1] / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["library_name"] == "transformers" and "self-distillation" in header["tags"]
    first, last = evals(_log(run))[0], evals(_log(run))[-1]
    assert f"| normed | {first.S['normed']:.4f} | {last.S['normed']:.4f} |" in card
    assert "kl_direction: forward" in card and "16 optimizer steps" in card
    events = list((run / "tracking").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    acc = EventAccumulator(str(events[0].parent)).Reload()
    losses = [e.value for e in acc.Scalars("loss")]
    assert losses == pytest.approx([r.loss for r in _steps(run)], rel=1e-5)
    assert [e.step for e in acc.Scalars("S/normed")] == [0, 8, 16]


def test_push_to_hub_offline_is_one_line(text_file, tmp_path):
    from tests.integration.test_cli import _sdlib

    done = _sdlib("train", str(ROOT / "configs" / "tiny.yaml"), "--output_dir", str(tmp_path / "p"), "--data",
                  str(text_file), "--eval_text", str(text_file), "--max_tokens", "512", "--push_to_hub", "me/tiny",
                  env_extra={"HF_HUB_OFFLINE": "1"})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and lines[-1].startswith("sdlib: error: could not push") and "kept" in lines[-1]
    assert list_checkpoints(tmp_path / "p")  # the checkpoint is there


def test_fsdp_on_two_cpu_processes(tmp_path):
    """accelerate has no CPU FSDP, so torch FSDP itself shards the recipe's Distiller over 2 CPU processes (gloo):
    the loss must read the root's final norm and lm_head whole, and the gradients must equal one process's."""
    out = tmp_path / "fsdp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           str(ROOT / "tests" / "integration" / "fsdp_worker.py"), str(out), str(ROOT / "configs" / "tiny.yaml")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=hang_guard(1800))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["world"] == 2 and result["missing"] == []
    assert len(result["worst"]) > 10 and max(result["worst"].values()) < 1e-4, result["worst"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without GPUs")
def test_fsdp_without_gpus_is_one_line(text_file, tmp_path):
    done = _launch_tiny("fsdp.yaml", text_file, tmp_path / "f")
    assert done.returncode != 0
    assert "sdlib: error: accelerate could not start" in done.stderr and "FSDP needs GPUs" in done.stderr
    assert "RuntimeError" not in done.stderr  # accelerate's own exception is turned into that line
