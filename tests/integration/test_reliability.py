"""Faults: real SIGKILLs of training processes (at a random step, and in the middle of writing a checkpoint),
non-finite losses, repeated runs, stale or interrupted evaluation caches; and bad inputs, each one clear line."""

import dataclasses
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from sdlib import models
from sdlib.errors import SdlibError
from sdlib.runs import latest_checkpoint, list_checkpoints
from sdlib.train import train
from sdlib.train.runlog import SkipRecord
from tests.conftest import ROOT, hang_guard
from tests.integration.test_cli import _sdlib
from tests.integration.test_train import _config, _log, _steps, _weights

TOTAL_STEPS = 16  # configs/tiny.yaml

# The child process is the real CLI; the harness only slows each step (0.15 s) so a kill lands mid-run, and
# can pause inside the save of one checkpoint (after the weights are written, before the folder is renamed).
CHILD = textwrap.dedent("""
    import os, sys, time, pathlib, torch
    import sdlib.train.recipe as t
    original = t.student_loss
    def slow(*a, **k):
        time.sleep(0.15)
        return original(*a, **k)
    t.student_loss = slow
    pause = os.environ.get("PAUSE_IN_SAVE_OF_STEP")
    if pause:
        save = torch.save
        def paused_save(obj, f, *a, **k):
            save(obj, f, *a, **k)
            path = pathlib.Path(str(f))
            if path.name == "optimizer.bin" and path.parent.parent.name.startswith(f".tmp-checkpoint-{int(pause)}-"):
                (path.parent.parent.parent.parent / "PAUSED").write_text(str(path.parent.parent))
                time.sleep(120)
        torch.save = paused_save
    from sdlib.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _train_args(text_file, run_dir):
    return ["train", str(ROOT / "configs" / "tiny.yaml"), "--output_dir", str(run_dir), "--data", str(text_file),
            "--eval_text", str(text_file), "--save_every", "2"]


def _start(args, **env):
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def _wait_for(predicate, proc, timeout=hang_guard(600)):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.02)


def _steps_logged(run_dir):
    path = run_dir / "log.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"loss"' in line)


def _reference(text_file, tmp_path):
    return train(_config(text_file, tmp_path, "reference", save_every=2), progress=False)


def _assert_same_weights(a_dir, b_dir):
    a, b = _weights(a_dir), _weights(b_dir)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"


def test_sigkill_at_a_random_step_then_resume_is_bit_exact(text_file, tmp_path):
    reference = _reference(text_file, tmp_path)
    kill_after = random.Random().randint(3, TOTAL_STEPS - 3)
    run_dir = tmp_path / "killed"
    proc = _start(_train_args(text_file, run_dir))
    _wait_for(lambda: _steps_logged(run_dir) >= kill_after, proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    done = [s for s, _ in list_checkpoints(run_dir)]
    assert done and done[-1] < TOTAL_STEPS, f"killed after step {kill_after}: checkpoints {done}"
    resumed = _sdlib(*_train_args(text_file, run_dir), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_weights(reference, run_dir)
    steps = [r.step for r in _steps(run_dir)]
    assert steps == list(range(1, TOTAL_STEPS + 1)), f"killed after step {kill_after}: log steps {steps}"


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(text_file, tmp_path):
    reference = _reference(text_file, tmp_path)
    run_dir = tmp_path / "killed-in-save"
    proc = _start(_train_args(text_file, run_dir), PAUSE_IN_SAVE_OF_STEP="6")
    _wait_for(lambda: (run_dir / "PAUSED").exists(), proc)
    partial = (run_dir / "PAUSED").read_text()
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert os.path.isdir(partial) and ".tmp-checkpoint-6-" in partial  # the half-written save is still there
    assert [s for s, _ in list_checkpoints(run_dir)] == [2, 4]  # ... and ignored
    model, _ = models.load(str(run_dir))  # the previous checkpoint loads
    assert latest_checkpoint(run_dir).name == "checkpoint-4" and model is not None
    resumed = _sdlib(*_train_args(text_file, run_dir), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not os.path.exists(partial), "the partial save is cleaned up on resume"
    _assert_same_weights(reference, run_dir)


def _nan_at(step_to_break: int, monkeypatch):
    import sdlib.train.recipe as t

    original, calls = t.student_loss, {"n": 0}  # the loss the recipe's Distiller computes in its forward

    def broken(*args, **kwargs):
        parts = original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == step_to_break * 2:  # tiny.yaml: 2 micro-batches per step
            parts.kl_per_layer[2] = float("nan")
            parts = dataclasses.replace(parts, total=parts.total * float("nan"), zeta1=parts.zeta1 * float("nan"))
        return parts

    monkeypatch.setattr(t, "student_loss", broken)


def test_nonfinite_loss_stops_naming_step_and_part_and_keeps_the_checkpoint(text_file, tmp_path, monkeypatch):
    _nan_at(5, monkeypatch)
    config = _config(text_file, tmp_path, "nan", save_every=2)
    with pytest.raises(SdlibError, match=r"step 5: the loss is not finite .*zeta1 \(layer 2 KL=nan\).*checkpoint is kept"):
        train(config, progress=False)
    assert [s for s, _ in list_checkpoints(config.run_dir())] == [2, 4]
    assert max(r.step for r in _steps(config.run_dir())) == 4


def test_nonfinite_loss_can_be_skipped_and_counted(text_file, tmp_path, monkeypatch):
    _nan_at(5, monkeypatch)
    config = _config(text_file, tmp_path, "skip", on_nonfinite="skip")
    run = train(config, progress=False)
    skipped = [r for r in _log(run) if isinstance(r, SkipRecord)]
    assert len(skipped) == 1 and skipped[0].step == 5 and "layer 2" in skipped[0].reason
    last = _steps(run)[-1]
    assert last.step == TOTAL_STEPS and last.skipped_steps == 1
    assert all(torch.isfinite(w).all() for w in _weights(run).values())


def test_same_seed_gives_the_same_step_log(text_file, tmp_path):
    def steps(name):
        run = train(_config(text_file, tmp_path, name), progress=False)
        return [{k: v for k, v in vars(r).items() if k not in ("tokens_per_s", "seconds")} for r in _log(run)]

    assert steps("first") == steps("second")


@pytest.mark.data
def test_eval_cache_follows_checkpoint_content_and_is_never_partial(text_file, tmp_path, monkeypatch):
    from sdlib.evaluation import layers
    from sdlib.evaluation.layers import EvalSettings, evaluate_cached

    settings = EvalSettings(limit={"lambada_openai": 2}, max_length=64)
    run = train(_config(text_file, tmp_path, "cached", max_tokens=1024, save_every=0), progress=False)
    out = tmp_path / "eval"
    first, _ = evaluate_cached(str(run), ["lambada_openai"], settings, out_dir=out, progress=False)
    assert len(list((out / "cache").iterdir())) == 1
    # retrain into the same folder: same path, new weights -> a new cache entry, new numbers
    for _, path in list_checkpoints(run):
        import shutil

        shutil.rmtree(path)
    train(_config(text_file, tmp_path, "cached", max_tokens=1024, save_every=0, lr=5e-3), progress=False)
    second, _ = evaluate_cached(str(run), ["lambada_openai"], settings, out_dir=out, progress=False)
    assert len(list((out / "cache").iterdir())) == 2
    assert not first.table["value"].equals(second.table["value"])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(layers, "evaluate_layers", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate_cached(str(run), ["lambada_openai"], EvalSettings(limit={"lambada_openai": 3}), out_dir=out)
    assert len(list((out / "cache").iterdir())) == 2 and not list(out.rglob("*.tmp"))


# --- bad inputs: one line, non-zero exit, nothing written -------------------------------------------------

def _bert_folder(tmp_path):
    """BERT as a causal LM: an encoder stack with no final norm, which sdlib cannot place."""
    from transformers import BertConfig, BertLMHeadModel

    folder = tmp_path / "bert"
    BertLMHeadModel(BertConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2, intermediate_size=16,
                               vocab_size=300, is_decoder=True)).save_pretrained(folder)
    models.byte_tokenizer().save_pretrained(folder)
    return folder


def _one_line_error(done, message):
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("sdlib: error:") and message in lines[0], done.stderr[-2000:]


def test_unsupported_architecture(tmp_path):
    _one_line_error(_sdlib("measure", str(_bert_folder(tmp_path))), "cannot find the decoder layers of 'bert'")


def test_hub_id_without_network(tmp_path):
    done = _sdlib("measure", "someone/no-such-model", env_extra={"HF_HUB_OFFLINE": "1"})
    _one_line_error(done, "someone/no-such-model")


def test_checkpoint_folder_missing_weights(tmp_path):
    run = tmp_path / "broken"
    model, tok = models.load("tiny-llama", num_layers=2)
    model.save_pretrained(run)
    for f in run.glob("*.safetensors"):
        f.unlink()
    _one_line_error(_sdlib("measure", str(run)), "no weights")


def test_resuming_from_a_different_base_model(text_file, tmp_path):
    run = tmp_path / "llama-run"
    first = _sdlib(*_train_args(text_file, run), "--max_tokens", "1024")
    assert first.returncode == 0, first.stderr[-2000:]
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    done = _sdlib(*_train_args(text_file, run), "--resume", "--model", "tiny-qwen2")
    _one_line_error(done, "model: 'tiny-llama' -> 'tiny-qwen2'")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_bad_json_line_in_training_data_names_the_line(tmp_path):
    data = tmp_path / "docs.jsonl"
    data.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"txt": oops\n')
    done = _sdlib("train", str(ROOT / "configs" / "tiny.yaml"), "--data", str(data), "--output_dir",
                  str(tmp_path / "run"), "--eval_text", str(data))
    _one_line_error(done, "line 3")
    assert not list((tmp_path / "run").glob("checkpoints/checkpoint-*"))


def test_lambada_copy_with_a_bad_line_is_caught_by_its_hash(tmp_path):
    folder = tmp_path / "data" / "lambada_openai"
    folder.mkdir(parents=True)
    (folder / "test.jsonl").write_text('{"text": "a b"}\nnot json\n')
    done = _sdlib("eval", "tiny-llama", "--tasks", "lambada_openai", "--out", str(tmp_path / "ev"),
                  env_extra={"SDLIB_DATA_DIR": str(tmp_path / "data")})
    _one_line_error(done, "not the expected")
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--lr", "0", "lr must be"), ("--alpha", "-1", "alpha must be"), ("--k", ".nan", "k must be finite"),
    ("--seq_len", "abc", "must be int"), ("--colour", "red", "unknown config key 'colour'"),
    ("--seq_len", "8192", "above tiny-llama's maximum of 4096"),
])
def test_bad_config_values_from_the_command_line(flag, value, message, tmp_path, text_file):
    done = _sdlib("train", str(ROOT / "configs" / "tiny.yaml"), "--output_dir", str(tmp_path / "run"),
                  "--data", str(text_file), "--eval_text", str(text_file), "--max_tokens", "1e8", flag, value)
    _one_line_error(done, message)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_eval_limit_zero_and_short_text(tmp_path):
    _one_line_error(_sdlib("eval", "tiny-llama", "--limit", "0"), "--limit must be at least 1")
    short = tmp_path / "one.txt"
    short.write_text("a")
    _one_line_error(_sdlib("measure", "tiny-llama", "--text", str(short)), "at least two")


class _Payload:
    """Stands for any object a pickle could carry (and run code while being rebuilt)."""

    def __reduce__(self):
        return (print, ("this ran while loading",))


@pytest.mark.parametrize("target", ["optimizer.bin", "random_states_0.pkl"])
def test_a_state_file_carrying_a_pickled_object_is_refused(text_file, tmp_path, target):
    run_dir = tmp_path / "run"
    done = _sdlib(*_train_args(text_file, run_dir)[:-2], "--save_every", "4")
    assert done.returncode == 0, done.stderr[-2000:]
    for step, path in list_checkpoints(run_dir):  # as a kill after step 4 would leave it
        if step > 4:
            shutil.rmtree(path)
    state = latest_checkpoint(run_dir) / "state" / target
    torch.save({"state": _Payload()}, state)
    resumed = _sdlib(*_train_args(text_file, run_dir)[:-2], "--save_every", "4", "--resume")
    lines = resumed.stderr.strip().splitlines()
    assert resumed.returncode == 2 and len(lines) == 1, resumed.stderr[-2000:]
    assert lines[0].startswith("sdlib: error:") and f"state/{target}" in lines[0] and "could run code" in lines[0]
    assert "this ran while loading" not in resumed.stdout + resumed.stderr
