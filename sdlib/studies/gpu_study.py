"""The GPU study: the paper's recipe on a paper-family model, sized to one short GPU window.

Stages, in order of information per minute (``configs/gpu/study.yaml`` names the configs):

1. ``throughput``: one timed micro-batch of the training configuration with the largest micro-batch that
   fits, for the exact zeta1 and for zeta1 from 4 sampled lens layers; tokens/s, step time and MFU.
2. ``baseline``: S in both conventions (and of the per-token median curve) on the default measurement text,
   LAMBADA and WikiText at every layer on the full tasks.
3. ``recipe``: the paper's recipe, with as many steps (up to its 10M tokens) as the time left allows at the
   measured step time; then the same measurement and evaluation, and paired statistics against the baseline.
4. ``second``: the same on SmolLM2-135M with zeta2 on the pre-norm state and a 100x final-norm learning rate,
   when that model was carried and time remains.
5. ``bench``: ``bench/train_step.py`` on the Llama-3.2-1B shape, the plain loss against sdlib's.

Each stage writes its numbers into ``<work>/study.json`` as soon as it ends, and ``publish`` copies what exists
to ``<out>`` (at most 8 files: ``study.json``, ``log.txt``, ``records.tar.gz``), so a run cut short still
returns what finished. A stage whose results exist in ``<work>`` is skipped, so a second call on the same
(still warm) machine continues. ``--dry-run`` runs every stage on the CPU with tiny models in seconds.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from sdlib.data import OFFLINE_SHA256, offline_file
from sdlib.errors import SdlibError
from sdlib.evaluation.layers import LayerScores, evaluate_cached, load_subset
from sdlib.models import load
from sdlib.packaged import PACKAGED, available, gguf_path, packaged
from sdlib.paths import build_dir, configs_dir, figures_dir, project_root
from sdlib.provenance import device_name, package_versions, write_json
from sdlib.stats import paired_ratio, paired_S_difference
from sdlib.studies.measure import measure_text
from sdlib.studies.throughput import measure_step
from sdlib.train import LOG_FILE, train
from sdlib.train.config import load_config, read_yaml
from sdlib.train.runlog import StopRecord, evals, read_log
from sdlib.train.runlog import steps as steps_of

STAGES = ("throughput", "baseline", "recipe", "second", "bench")
PAPER_TOKENS = 10_000_000
PAPER_STEPS = 76
# seconds a stage needs at the least before it is worth starting (real / dry run)
MIN_SECONDS = {"throughput": (60, 1), "baseline": (90, 1), "recipe": (180, 1), "second": (150, 1), "bench": (60, 1)}


class Study:
    def __init__(self, out: str | Path, work: str | Path, budget_s: float, dry_run: bool = False):

        self.t0 = time.monotonic()
        self.out, self.work, self.budget_s, self.dry_run = Path(out), Path(work), float(budget_s), dry_run
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.spec = read_yaml(configs_dir() / "gpu" / "study.yaml", "GPU study file")["dry_run" if dry_run else "real"]
        os.environ.setdefault("SDLIB_BUILD_DIR", str(self.work / "build"))
        self.path = self.work / "study.json"
        self.results: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {"stages": {}}
        import torch

        self.device = "cuda" if torch.cuda.is_available() and not dry_run else "cpu"

    # --- bookkeeping ---------------------------------------------------------------------------------------

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def log(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')} +{time.monotonic() - self.t0:6.0f}s] {message}"
        print(line, flush=True)
        with open(self.work / "log.txt", "a") as f:
            f.write(line + "\n")

    def records(self) -> Path:
        path = self.work / "records"
        path.mkdir(exist_ok=True)
        return path

    def save(self) -> None:

        write_json(self.path, self.results)
        self.publish()

    def publish(self) -> None:
        """Copy what exists to ``out``: study.json, log.txt and the records (JSON/CSV, no weights) as one archive."""
        for name in ("study.json", "log.txt"):
            if (self.work / name).exists():
                shutil.copyfile(self.work / name, self.out / name)
        tmp = self.out / ".records.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            for path in sorted(self.records().rglob("*")):
                if path.is_file() and path.suffix in (".json", ".jsonl", ".csv", ".txt", ".yaml"):
                    tar.add(path, arcname=str(path.relative_to(self.work)))
        os.replace(tmp, self.out / "records.tar.gz")

    def config(self, which: str):

        overrides = dict(self.spec.get(f"{which}_overrides") or {})
        overrides.setdefault("output_dir", str(self.work / "runs" / which))
        return load_config(project_root() / self.spec[which], overrides)

    # --- the run -------------------------------------------------------------------------------------------

    def run(self, only: list[str] | None = None) -> dict[str, Any]:

        self.results["environment"] = {"device": device_name(self.device), "versions": package_versions(),
                                        "dry_run": self.dry_run, "budget_s": self.budget_s,
                                        "hf_caches": _hf_caches()}
        self.log(f"device {self.results['environment']['device']}; budget {self.budget_s:.0f} s")
        for name in only or STAGES:
            done = self.results["stages"].get(name, {})
            if done.get("done"):
                self.log(f"{name}: results exist, skipped")
                continue
            need = MIN_SECONDS[name][1 if self.dry_run else 0]
            if self.left() < need:
                self.log(f"{name}: not started ({self.left():.0f} s left, needs {need} s)")
                self.results["stages"][name] = {"done": False, "reason": f"{self.left():.0f} s left of the budget"}
                continue
            start = time.monotonic()
            self.log(f"{name}: start")
            try:
                result = getattr(self, name)()
            except Exception as err:  # a failed stage is recorded and the next one still runs
                self.log(f"{name}: failed: {type(err).__name__}: {err}\n{traceback.format_exc()}")
                result = {"done": False, "error": f"{type(err).__name__}: {str(err)[:500]}"}
            result["seconds"] = time.monotonic() - start
            self.results["stages"][name] = result
            self.log(f"{name}: {'done' if result.get('done') else 'not done'} in {result['seconds']:.0f} s")
            self.save()
        self.save()
        return self.results

    # --- stages --------------------------------------------------------------------------------------------

    def throughput(self) -> dict[str, Any]:

        config = self.config("recipe")
        model, _ = load(config.model, device=self.device, **config.model_options)
        timings = measure_step(model, config, lens_samples=(0, 4))
        for t in timings:
            self.log(f"throughput: lens_samples {t.lens_samples}: micro-batch {t.micro_batch} x {t.seq_len}, "
                     f"{t.tokens_per_s:,.0f} tokens/s, step {t.step_seconds:.1f} s, MFU {t.mfu}")
        return {"done": True, "model": config.model, "timings": [t.to_dict() for t in timings]}

    def _measure_and_evaluate(self, source: str, label: str, model=None, tokenizer=None, **options) -> dict[str, Any]:
        """S (both conventions, median curve) and the per-layer evaluation of one model; records kept."""

        if model is None:
            model, tokenizer = load(source, device=self.device, **options)
        m = measure_text(model, tokenizer, "wikitext-test", **{"n_windows": self.spec["measure"]["windows"],
                                                               "window_len": self.spec["measure"]["window_len"]})
        write_json(self.records() / label / "measure.json", m.to_dict())
        self.log(f"{label}: S normed {m.S['normed']:.4f}, pre_norm {m.S['pre_norm']:.4f} ({m.n_tokens} tokens)")
        settings = load_subset(self.spec["eval_subset"], self.device)
        table, _ = evaluate_cached(source, ["lambada_openai", "wikitext"], settings, device=self.device,
                                   loaded=(model, tokenizer), out_dir=self.records() / label / "eval", progress=False)
        scores = LayerScores.of(table)
        greedy = scores.greedy["lambada_openai"]
        lam, ppl = scores.curve("lambada_openai", "acc", intervals=True), scores.curve("wikitext", "word_perplexity")
        self.log(f"{label}: LAMBADA final {lam[-1][0]:.4f} (n {scores.n('lambada_openai')}), WikiText word ppl "
                 f"final {ppl[-1]:.3f}")
        return {"S": m.S, "S_median_curve": m.S_median, "D": m.D, "D_median": m.D_median,
                "last_layer_ratio": m.last_layer_ratio, "tokens": m.n_tokens,
                "lambada_acc": [v for v, _, _ in lam], "lambada_lo": [lo for _, lo, _ in lam],
                "lambada_hi": [hi for _, _, hi in lam], "lambada_n": scores.n("lambada_openai"),
                "wikitext_word_ppl": ppl, "wikitext_n": scores.n("wikitext"), "eval_subset": settings.subset,
                "_per_window_D": m.per_window_D, "_greedy": greedy}

    def baseline(self) -> dict[str, Any]:
        config = self.config("recipe")
        result = self._measure_and_evaluate(config.model, "baseline", **config.model_options)
        _keep_private(result, self.records() / "baseline" / "paired.json")
        return {"done": True, "model": config.model, **result}

    def _train_sized(self, which: str, reserve_s: float) -> dict[str, Any]:
        """Train ``which`` for as many steps as the time left allows (up to the config's budget)."""

        config = self.config(which)
        timing = self._timing(config, which)
        exact, sampled = timing
        available = self.left() - reserve_s - (20 if not self.dry_run else 0)  # model loads, first evaluation
        steps_full = config.total_steps
        use = exact if available / exact["step_seconds"] >= steps_full or exact is sampled else sampled
        steps = max(1, min(steps_full, int(available // use["step_seconds"])))
        tokens_per_step = config.batch_size * config.seq_len
        config = replace(config, micro_batch=use["micro_batch"], lens_samples=use["lens_samples"],
                         max_tokens=steps * tokens_per_step, max_minutes=max(available, 1) / 60)
        config.validate()
        self.log(f"{which}: {steps} steps x {tokens_per_step:,} tokens = {steps * tokens_per_step:,} "
                 f"({steps * tokens_per_step / PAPER_TOKENS:.1%} of the paper's 10M), lens_samples {config.lens_samples}, "
                 f"micro-batch {config.micro_batch}, about {steps * use['step_seconds']:.0f} s")
        run = train(config, resume=True, progress=False)
        log = read_log(run)
        (self.records() / which).mkdir(exist_ok=True)
        shutil.copyfile(run / LOG_FILE, self.records() / which / LOG_FILE)
        shutil.copyfile(run / "run.json", self.records() / which / "run.json")
        trained = steps_of(log)
        last = trained[-1] if trained else None
        return {"config": config.to_dict(), "steps": len(trained), "planned_steps": steps,
                "tokens": last.tokens if last else 0,
                "fraction_of_paper_tokens": (last.tokens if last else 0) / PAPER_TOKENS,
                "epochs_of_data": last.epochs if last else None,
                "zeta1": "exact (every lens layer)" if config.lens_samples == 0 else
                         f"estimated from {config.lens_samples} lens layers sampled per micro-batch",
                "train_seconds": sum(r.seconds for r in trained), "tokens_per_s": [r.tokens_per_s for r in trained],
                "S_over_training": [{"step": r.step, **r.S} for r in evals(log)],
                "loss": [{"step": r.step, "loss": r.loss, "zeta1": r.zeta1, "zeta2": r.zeta2} for r in trained],
                "stopped": next((r.reason for r in log if isinstance(r, StopRecord)), None), "run_dir": str(run)}

    def _timing(self, config, which: str) -> tuple[dict, dict]:
        """(exact, sampled) step timings for ``config``: the throughput stage's for the recipe, measured here for
        another model."""
        stage = self.results["stages"].get("throughput", {})
        if which == "recipe" and stage.get("done"):
            timings = stage["timings"]
        else:

            model, _ = load(config.model, device=self.device, **config.model_options)
            timings = [t.to_dict() for t in measure_step(model, config, lens_samples=(0, 4))]
            del model
        by_lens = {t["lens_samples"]: t for t in timings}
        return by_lens[0], by_lens.get(4, by_lens[0])

    def recipe(self) -> dict[str, Any]:
        return self._distil("recipe", self.results["stages"].get("baseline", {}))

    def second(self) -> dict[str, Any]:

        config = self.config("second")
        if config.model in PACKAGED and not available(config.model):
            return {"done": False, "reason": f"{config.model} was not carried to this machine"}
        base = self._measure_and_evaluate(config.model, "second-baseline", **config.model_options)
        _keep_private(base, self.records() / "second-baseline" / "paired.json")
        return self._distil("second", {"model": config.model, **base}, baseline_label="second-baseline")

    def _distil(self, which: str, baseline: dict[str, Any], baseline_label: str = "baseline") -> dict[str, Any]:

        reserve = self.spec["reserve_s"]
        training = self._train_sized(which, reserve)
        after = self._measure_and_evaluate(training["run_dir"], which)
        paired_path = self.records() / baseline_label / "paired.json"
        stats: dict[str, Any] = {}
        if paired_path.exists():
            before = json.loads(paired_path.read_text())
            for last_state in ("normed", "pre_norm"):
                d, lo, hi = paired_S_difference(before["per_window_D"][last_state], after["_per_window_D"][last_state])
                stats[f"S_{last_state}_difference"] = {"value": d, "lo": lo, "hi": hi}
            import numpy as np

            b, a = np.asarray(before["greedy"], dtype=float), np.asarray(after["_greedy"], dtype=float)
            r, lo, hi = paired_ratio(b[:, -1], a[:, -1])
            stats["lambada_final_ratio"] = {"value": r, "lo": lo, "hi": hi}
            self.log(f"{which}: S normed {baseline.get('S', {}).get('normed')} -> {after['S']['normed']:.4f} "
                     f"(paired diff {stats['S_normed_difference']}); LAMBADA final ratio {r:.3f} [{lo:.3f}, {hi:.3f}]")
        _keep_private(after, self.records() / which / "paired.json")
        before = {k: v for k, v in baseline.items() if k not in ("done", "seconds")}
        return {"done": True, **training, "before": before, "after": after, "paired": stats}

    def bench(self) -> dict[str, Any]:

        spec = self.spec["bench"]
        args = ([f"--shape={spec['shape']}"] if "shape" in spec else [f"--model={spec['model']}"]) + [
            f"--micro-batch={spec['micro_batch']}", f"--seq-len={spec['seq_len']}", f"--chunk={spec['chunk']}",
            "--steps=2"] + (["--in-process"] if self.device == "cpu" else [])
        done = subprocess.run([sys.executable, str(project_root() / "bench" / "train_step.py"), *args],
                              capture_output=True, text=True, timeout=max(30, self.left()))
        lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
        return {"done": done.returncode == 0, "command": "python bench/train_step.py " + " ".join(args), "rows": lines,
                "stderr_tail": done.stderr[-1000:] if done.returncode else ""}


def _keep_private(result: dict[str, Any], path: Path) -> None:
    """Move the per-window curves and per-passage outcomes (for paired statistics) out of the summary into a
    record file."""

    write_json(path, {"per_window_D": result.pop("_per_window_D"), "greedy": result.pop("_greedy")})


def _hf_caches() -> dict[str, Any]:
    """What Hugging Face caches this machine has (a model or FineWeb-Edu there saves carrying it)."""
    roots = [os.environ.get("HF_HOME"), os.environ.get("HF_HUB_CACHE"), os.environ.get("HF_DATASETS_CACHE"),
             str(Path.home() / ".cache" / "huggingface")]
    found = {}
    for root in dict.fromkeys(r for r in roots if r):
        path = Path(root)
        if path.is_dir():
            found[root] = sorted(p.name for p in path.rglob("*") if p.is_dir() and p.name.startswith(("models--",
                                                                                                     "datasets--")))[:50]
    return found


def summary_lines(results: dict[str, Any]) -> list[str]:
    """The headline numbers of a study record, for the terminal and the closing note."""
    env, stages = results.get("environment", {}), results.get("stages", {})
    lines = [f"device: {env.get('device')}; torch {env.get('versions', {}).get('torch')}, transformers "
             f"{env.get('versions', {}).get('transformers')}"]
    for name in STAGES:
        s = stages.get(name)
        if not s:
            lines.append(f"{name}: not run")
        elif not s.get("done"):
            lines.append(f"{name}: not done ({s.get('reason') or s.get('error')})")
        elif name == "throughput":
            for t in s["timings"]:
                mfu = "n/a" if t["mfu"] is None else f"{t['mfu']:.1%}"
                lines.append(f"throughput ({s['model']}): lens_samples {t['lens_samples']}: "
                             f"{t['tokens_per_s']:,.0f} tokens/s, step {t['step_seconds']:.1f} s, MFU {mfu}")
        elif name == "baseline":
            lines.append(f"baseline ({s['model']}): S normed {s['S']['normed']:.4f}, pre_norm {s['S']['pre_norm']:.4f}; "
                         f"LAMBADA final {s['lambada_acc'][-1]:.4f} [{s['lambada_lo'][-1]:.4f}, {s['lambada_hi'][-1]:.4f}]")
        elif name in ("recipe", "second"):
            a, p = s["after"], s.get("paired", {})
            diff = p.get("S_normed_difference", {})
            ratio = p.get("lambada_final_ratio", {})
            lines.append(f"{name}: {s['steps']} steps, {s['tokens']:,} tokens ({s['fraction_of_paper_tokens']:.1%} of 10M), "
                         f"{s['zeta1']}; S normed {a['S']['normed']:.4f} (paired diff {diff.get('value', math.nan):+.4f} "
                         f"[{diff.get('lo', math.nan):+.4f}, {diff.get('hi', math.nan):+.4f}]), pre_norm "
                         f"{a['S']['pre_norm']:.4f}; LAMBADA final ratio {ratio.get('value', math.nan):.3f} "
                         f"[{ratio.get('lo', math.nan):.3f}, {ratio.get('hi', math.nan):.3f}]")
        elif name == "bench":
            for row in s["rows"]:
                lines.append(f"bench: {row}")
    return lines


# --- carrying the study to a GPU machine -------------------------------------------------------------------------

CARRY_DIR = ".gpu"
CALL_LIMIT = 64 * 2**20  # what one device call may carry, the working tree included
PART_LIMIT = 60 * 2**20
# what the GPU machine's image lacks of what the study imports (found by running an evaluation here and listing
# the distributions of sys.modules; its own torch, transformers, accelerate, pandas, ... are used as they are);
# versions: this environment's, so the device runs what CI tests
DEVICE_WHEELS = ("lm_eval", "datasets", "dill", "multiprocess", "gguf")


def working_tree_bytes() -> int:
    """Bytes of what a device call sends besides carried paths: tracked and untracked-not-ignored files."""

    root = project_root()
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((root / n.decode()).stat().st_size for n in names if n and (root / n.decode()).is_file())


def prepare(models: list[str], folder: str | Path = CARRY_DIR, python_version: str = "3.12") -> dict[str, Any]:
    """Fill the git-ignored ``folder`` with what the GPU machine needs: the device wheels (``pip download`` for
    its Python), the offline data (one tar.gz), and each model's checked GGUF in parts small enough to carry one
    per call. -> the manifest (also written as ``manifest.json``)."""
    import hashlib
    from importlib.metadata import version

    folder = project_root() / folder
    folder.mkdir(parents=True, exist_ok=True)
    ignored = subprocess.run(["git", "check-ignore", "-q", str(folder)], cwd=project_root()).returncode == 0
    if not ignored:
        raise SdlibError(f"{folder} is not git-ignored: add it to .gitignore first (it must not travel as the tree)")
    (folder / "wheels").mkdir(parents=True, exist_ok=True)
    requirements = [f"{name}=={version(name)}" for name in DEVICE_WHEELS]
    platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + [
        "--platform=manylinux2014_x86_64"]
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                           f"--python-version={python_version}", "--implementation=cp", *platforms,
                           "-d", str(folder / "wheels"), *requirements], capture_output=True, text=True)
    if done.returncode != 0:
        raise SdlibError(f"pip could not download the device wheels: {done.stderr.strip().splitlines()[-1:]}")
    data = folder / "data.tar.gz"
    with tarfile.open(data, "w:gz") as tar:
        for relative in OFFLINE_SHA256:
            path = offline_file(relative, relative)
            if path is None:
                raise SdlibError("SDLIB_DATA_DIR is unset: point it at the offline data (../shared/data) to carry it")
            tar.add(path, arcname=relative)
    part_size = min(PART_LIMIT, CALL_LIMIT - working_tree_bytes() - 4 * 2**20)
    gguf_dir = folder / "gguf"
    shutil.rmtree(gguf_dir, ignore_errors=True)
    gguf_dir.mkdir()
    manifest: dict[str, Any] = {"part_size": part_size, "wheels": sorted(p.name for p in (folder / "wheels").glob("*.whl")),
                                "data": data.name, "models": {}}
    for name in models:
        model = packaged(name)
        whole = gguf_path(model, gguf_dir)  # joined and checked (size, sha256)
        parts = []
        with open(whole, "rb") as f:
            for i, block in enumerate(iter(lambda: f.read(part_size), b"")):
                part = gguf_dir / f"{model.gguf_file}.part{i:02d}"
                part.write_bytes(block)
                parts.append({"file": part.name, "bytes": len(block), "sha256": hashlib.sha256(block).hexdigest()})
        whole.unlink()
        manifest["models"][name] = {"gguf_file": model.gguf_file, "bytes": model.size, "sha256": model.sha256,
                                    "parts": parts}
    write_json(folder / "manifest.json", manifest)
    return manifest


def plan(folder: str | Path = CARRY_DIR, budget_s: int = 540) -> list[dict[str, Any]]:
    """The device calls that carry ``folder`` (made by ``prepare``) and run the study: each call's carry list,
    command and timeout, packed so each call stays under the 64 MiB limit with the working tree."""

    root = project_root()
    manifest_path = root / folder / "manifest.json"
    if not manifest_path.exists():
        raise SdlibError(f"{manifest_path} is missing: run `sdlib gpu-study prepare` first")
    manifest = json.loads(manifest_path.read_text())
    room = CALL_LIMIT - working_tree_bytes() - 2**20

    def size(relative: str) -> int:
        path = root / relative
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size

    first = [f"{folder}/wheels", f"{folder}/data.tar.gz", f"{folder}/manifest.json"]
    calls = [{"carry": first, "bytes": sum(size(c) for c in first), "command": "bash scripts/gpu_study.sh probe",
              "timeout_s": 180}]
    for model in manifest["models"].values():
        for part in model["parts"]:
            relative = f"{folder}/gguf/{part['file']}"
            last = calls[-1]
            if len(last["carry"]) < 8 and last["bytes"] + part["bytes"] <= room:
                last["carry"].append(relative)
                last["bytes"] += part["bytes"]
            else:
                calls.append({"carry": [relative], "bytes": part["bytes"], "timeout_s": 120})
    for call in calls:
        parts = [c for c in call["carry"] if "/gguf/" in c]
        if "command" not in call:
            call["command"] = "bash scripts/gpu_study.sh receive " + " ".join(parts)
        elif parts:
            call["command"] += "; bash scripts/gpu_study.sh receive " + " ".join(parts)
    calls.append({"carry": [], "bytes": 0, "timeout_s": min(600, budget_s + 45),
                  "command": f"bash scripts/gpu_study.sh run --budget {budget_s}"})
    return calls


def format_plan(calls: list[dict[str, Any]]) -> str:
    """The steps on the GPU machine, in order: the files each step needs there, its command and a time limit;
    then ``sdlib gpu-study import`` on the folder the last step writes."""
    lines = ["On the GPU machine, in one working copy of this repository, one step after another:", ""]
    for i, call in enumerate(calls, 1):
        files = f" with {', '.join(call['carry'])} copied there ({call['bytes'] / 2**20:.1f} MiB)" if call["carry"] else ""
        lines.append(f"step {i}: `{call['command']}`{files}, within {call['timeout_s']} s")
    lines += ["", "then here: `sdlib gpu-study import <the folder the run step wrote>`. Running the last step again "
              "skips finished stages and continues the rest."]
    return "\n".join(lines)


def import_results(source: str | Path) -> Path:
    """Bring a study's returned files home: ``study.json`` into ``figures/gpu/`` (committed, drawn by the gpu
    profile), the log and records under ``<build>/gpu-study/``. -> the study.json path."""

    source = Path(source)
    if not (source / "study.json").exists():
        raise SdlibError(f"{source} holds no study.json: point at the folder the device returned (files_at)")
    target = figures_dir() / "gpu"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "study.json", target / "study.json")
    home = build_dir() / "gpu-study"
    home.mkdir(parents=True, exist_ok=True)
    for name in ("log.txt", "records.tar.gz"):
        if (source / name).exists():
            shutil.copyfile(source / name, home / name)
    if (home / "records.tar.gz").exists():
        with tarfile.open(home / "records.tar.gz") as tar:
            tar.extractall(home, filter="data")  # no links or paths outside the folder
    return target / "study.json"


def load_study(path: str | Path) -> dict[str, Any]:
    """A study record (``study.json``); one clear error when there is none yet."""

    path = Path(path)
    if not path.is_file():
        raise SdlibError(f"no GPU study results at {path} yet: run the study on a GPU machine (`sdlib gpu-study "
                         "plan` prints the calls) and `sdlib gpu-study import` what comes back")
    return json.loads(path.read_text())
