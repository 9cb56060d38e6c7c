"""The GPU study: the paper's recipe on a paper-family model, sized to one short GPU window.

Stages, in order of information per minute (``configs/gpu/study.yaml`` names the configs):

1. ``throughput``: one timed micro-batch of the training configuration with the largest micro-batch that
   fits, for the exact zeta1 and for zeta1 from 4 sampled lens layers; tokens/s, step time and MFU.
2. ``baseline``: S in both conventions (and of the per-token median curve) on the default measurement text,
   LAMBADA and WikiText at every layer on the full tasks.
3. ``recipe``: the paper's recipe, with as many steps (up to its 10M tokens) as the time left allows at the
   measured step time; then the same measurement and evaluation, and paired statistics against the baseline.
4. ``cosine``: arm B, beyond this paper: the same with the angular zeta2 of the same authors' follow-up
   (``zeta2_form: cosine``), paired against the same baseline.

Both training stages keep the paper's 76 optimizer steps and size the batch (sequences per step) to the time
they get, from the measured time per sequence; exact zeta1 when at least one probe micro-batch of sequences fits
in each step, else zeta1 from 4 sampled lens layers. The probe of the largest micro-batch that fits starts at 16
sequences. A machine without network gets the models and data from ``sdlib bundle``.

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
import tarfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from sdlib.errors import SdlibError
from sdlib.evaluation.layers import LayerScores, evaluate_cached, load_subset
from sdlib.models import load
from sdlib.paths import build_dir, configs_dir, figures_dir, project_root
from sdlib.provenance import device_name, package_versions, write_json
from sdlib.stats import paired_ratio, paired_S_difference
from sdlib.studies.measure import measure_text
from sdlib.studies.throughput import measure_step
from sdlib.train import LOG_FILE, train
from sdlib.train.config import load_config, read_yaml
from sdlib.train.runlog import StopRecord, evals, read_log
from sdlib.train.runlog import steps as steps_of
from sdlib.types import LAST_STATES

STAGES = ("throughput", "baseline", "recipe", "cosine")
TRAINING_STAGES = ("recipe", "cosine")
PAPER_TOKENS = 10_000_000
PAPER_STEPS = 76
# seconds a stage needs at the least before it is worth starting (real / dry run)
MIN_SECONDS = {"throughput": (60, 1), "baseline": (90, 1), "recipe": (180, 1), "cosine": (180, 1)}


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
        """Train ``which`` for the config's number of optimizer steps with as many sequences per step (up to the
        config's batch) as the time left allows; ``sized_batch`` says how."""

        config = self.config(which)
        exact, sampled = self._timing(config, which)
        # the time left, shared with the training stages still to come, each keeping its reserve back
        to_come = [name for name in TRAINING_STAGES[TRAINING_STAGES.index(which):]
                   if not self.results["stages"].get(name, {}).get("done")]
        available = (self.left() - len(to_come) * (reserve_s + (20 if not self.dry_run else 0))) / len(to_come)
        steps = config.total_steps
        use, batch = sized_batch(exact, sampled, config.batch_size, steps, available)
        config = replace(config, batch_size=batch, micro_batch=min(use["micro_batch"], batch),
                         lens_samples=use["lens_samples"], max_tokens=steps * batch * config.seq_len,
                         max_minutes=max(available, 1) / 60)
        config.validate()
        tokens_per_step = batch * config.seq_len
        self.log(f"{which}: {steps} steps x {batch} sequences x {config.seq_len} = {steps * tokens_per_step:,} tokens "
                 f"({steps * tokens_per_step / PAPER_TOKENS:.1%} of the paper's 10M), lens_samples {config.lens_samples}, "
                 f"micro-batch {config.micro_batch}, about "
                 f"{steps * batch * use['seconds_per_micro_batch'] / use['micro_batch']:.0f} s")
        run = train(config, resume=True, progress=False)
        log = read_log(run)
        (self.records() / which).mkdir(exist_ok=True)
        shutil.copyfile(run / LOG_FILE, self.records() / which / LOG_FILE)
        shutil.copyfile(run / "run.json", self.records() / which / "run.json")
        trained = steps_of(log)
        last = trained[-1] if trained else None
        return {"config": config.to_dict(), "steps": len(trained), "planned_steps": steps, "sequences_per_step": batch,
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
        if which in ("recipe", "cosine") and stage.get("done"):
            timings = stage["timings"]
        else:

            model, _ = load(config.model, device=self.device, **config.model_options)
            timings = [t.to_dict() for t in measure_step(model, config, lens_samples=(0, 4))]
            del model
        by_lens = {t["lens_samples"]: t for t in timings}
        return by_lens[0], by_lens.get(4, by_lens[0])

    def recipe(self) -> dict[str, Any]:
        return self._distil("recipe", self.results["stages"].get("baseline", {}))

    def cosine(self) -> dict[str, Any]:
        return self._distil("cosine", self.results["stages"].get("baseline", {}))

    def _distil(self, which: str, baseline: dict[str, Any], baseline_label: str = "baseline") -> dict[str, Any]:

        reserve = self.spec["reserve_s"]
        training = self._train_sized(which, reserve)
        after = self._measure_and_evaluate(training["run_dir"], which)
        paired_path = self.records() / baseline_label / "paired.json"
        stats: dict[str, Any] = {}
        if paired_path.exists():
            before = json.loads(paired_path.read_text())
            for last_state in LAST_STATES:
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

def sized_batch(exact: dict[str, Any], sampled: dict[str, Any], batch: int, steps: int, seconds: float
                ) -> tuple[dict[str, Any], int]:
    """(the timing to use, sequences per step) so that ``steps`` steps fit in ``seconds``: the exact zeta1 when a
    step of at least one of its measured micro-batches fits, else the sampled one; at most ``batch`` sequences and
    at least one, a multiple of the micro-batch when larger than it."""
    def per_sequence(timing: dict[str, Any]) -> float:
        return timing["seconds_per_micro_batch"] / timing["micro_batch"]

    fits = int(seconds / steps / per_sequence(exact))
    use = exact if fits >= exact["micro_batch"] or exact is sampled else sampled
    n = max(1, min(batch, int(seconds / steps / per_sequence(use))))
    micro = use["micro_batch"]
    return use, (n // micro) * micro if n > micro else n


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
        elif name in TRAINING_STAGES:
            a, p = s["after"], s.get("paired", {})
            diff = p.get("S_normed_difference", {})
            ratio = p.get("lambada_final_ratio", {})
            lines.append(f"{name}: {s['steps']} steps x {s.get('sequences_per_step', '?')} sequences, "
                         f"{s['tokens']:,} tokens ({s['fraction_of_paper_tokens']:.1%} of 10M), "
                         f"{s['zeta1']}; S normed {a['S']['normed']:.4f} (paired diff {diff.get('value', math.nan):+.4f} "
                         f"[{diff.get('lo', math.nan):+.4f}, {diff.get('hi', math.nan):+.4f}]), pre_norm "
                         f"{a['S']['pre_norm']:.4f}; LAMBADA final ratio {ratio.get('value', math.nan):.3f} "
                         f"[{ratio.get('lo', math.nan):.3f}, {ratio.get('hi', math.nan):.3f}]")
    return lines


def import_results(source: str | Path) -> Path:
    """Bring a study's returned files home: ``study.json`` into ``figures/gpu/`` (committed, drawn by the gpu
    profile), the log and records under ``<build>/gpu-study/``. -> the study.json path."""

    source = Path(source)
    if not (source / "study.json").exists():
        raise SdlibError(f"{source} holds no study.json: point at the folder the study wrote (its --out)")
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
        raise SdlibError(f"no GPU study results at {path} yet: run `sdlib gpu-study run` on a GPU machine and "
                         "`sdlib gpu-study import` the folder it wrote")
    return json.loads(path.read_text())
