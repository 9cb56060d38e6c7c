"""The GPU study's stages run in order within a time budget (see ``sdlib.experiments.gpu``)."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from sdlib.evaluation.layers import load_subset
from sdlib.evaluation.movement import MeasureSettings
from sdlib.evaluation.subject import Subject
from sdlib.experiments.gpu.records import (
    PAPER_TOKENS,
    STAGES,
    TRAINING_STAGES,
    GpuStudy,
    ModelScores,
    PairedData,
    StageResult,
    paired_statistics,
)
from sdlib.experiments.gpu.sizing import sized_batch
from sdlib.experiments.throughput import StepTiming, measure_step
from sdlib.models import load
from sdlib.paths import configs_dir, project_root
from sdlib.provenance import device_name, package_versions, write_json
from sdlib.settings import read_yaml
from sdlib.train import LOG_FILE, train
from sdlib.train.config import load_config
from sdlib.train.runlog import StopRecord, evals, read_log
from sdlib.train.runlog import steps as steps_of

# seconds a stage needs at the least before it is worth starting (real / dry run)
MIN_SECONDS = {"throughput": (60, 1), "baseline": (90, 1), "recipe": (180, 1), "cosine": (180, 1)}


class GpuStudyRunner:
    """Runs the GPU study's stages in order within a time budget, writing each stage's result as it ends."""

    def __init__(self, out: str | Path, work: str | Path, budget_s: float, dry_run: bool = False):

        self.t0 = time.monotonic()
        self.out, self.work, self.budget_s, self.dry_run = Path(out), Path(work), float(budget_s), dry_run
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.spec = read_yaml(configs_dir() / "gpu" / "study.yaml", "GPU study file")["dry_run" if dry_run else "real"]
        self.path = self.work / "study.json"
        self.results = GpuStudy.from_dict(json.loads(self.path.read_text())) if self.path.exists() else GpuStudy()
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

        write_json(self.path, self.results.to_dict())
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

    def run(self, only: list[str] | None = None) -> GpuStudy:

        self.results.environment = {"device": device_name(self.device), "versions": package_versions(),
                                    "dry_run": self.dry_run, "budget_s": self.budget_s, "hf_caches": _hf_caches()}
        self.log(f"device {self.results.environment['device']}; budget {self.budget_s:.0f} s")
        for name in only or STAGES:
            if self.results.finished(name):
                self.log(f"{name}: results exist, skipped")
                continue
            need = MIN_SECONDS[name][1 if self.dry_run else 0]
            if self.left() < need:
                self.log(f"{name}: not started ({self.left():.0f} s left, needs {need} s)")
                self.results.stages[name] = StageResult(False, reason=f"{self.left():.0f} s left of the budget")
                continue
            start = time.monotonic()
            self.log(f"{name}: start")
            try:
                result = getattr(self, name)()
            except Exception as err:  # a failed stage is recorded and the next one still runs
                self.log(f"{name}: failed: {type(err).__name__}: {err}\n{traceback.format_exc()}")
                result = StageResult(False, error=f"{type(err).__name__}: {str(err)[:500]}")
            result.seconds = time.monotonic() - start
            self.results.stages[name] = result
            self.log(f"{name}: {'done' if result.done else 'not done'} in {result.seconds:.0f} s")
            self.save()
        self.save()
        return self.results

    # --- stages --------------------------------------------------------------------------------------------

    def throughput(self) -> StageResult:

        config = self.config("recipe")
        model, _ = load(config.model, device=self.device, **config.model_options)
        timings = measure_step(model, config, lens_samples=(0, 4))
        for t in timings:
            self.log(f"throughput: lens_samples {t.lens_samples}: micro-batch {t.micro_batch} x {t.seq_len}, "
                     f"{t.tokens_per_s:,.0f} tokens/s, step {t.step_seconds:.1f} s, MFU {t.mfu}")
        return StageResult(True, model=config.model, timings=timings)

    def _measure_and_evaluate(self, source: str, label: str, model=None, tokenizer=None, **options
                              ) -> tuple[ModelScores, PairedData]:
        """S (both conventions, median curve) and the per-layer evaluation of one model, and the per-window curves
        and per-passage outcomes for paired statistics (also kept in ``records/<label>/paired.json``, where a later
        stage reads the baseline's)."""

        subject = Subject(str(source), options=options, results=self.records() / label, device=self.device,
                          progress=False, loaded=None if model is None else (model, tokenizer))
        where = MeasureSettings("wikitext-test", self.spec["measure"]["windows"], self.spec["measure"]["window_len"])
        m = subject.measurement(where)
        write_json(self.records() / label / "measure.json", m.to_dict())
        self.log(f"{label}: S normed {m.S['normed']:.4f}, pre_norm {m.S['pre_norm']:.4f} ({m.n_tokens} tokens)")
        settings = load_subset(self.spec["eval_subset"], self.device)
        scores, _ = subject.layer_scores(["lambada_openai", "wikitext"], settings)
        evaluation = scores.evaluation()
        self.log(f"{label}: LAMBADA final {evaluation.lambada_acc[-1]:.4f} (n {evaluation.lambada_n}), WikiText word "
                 f"ppl final {evaluation.wikitext_word_ppl[-1]:.3f}")
        paired = PairedData(m.per_window_D, scores.greedy["lambada_openai"].tolist(), m.window_documents)
        write_json(self.records() / label / "paired.json", paired.to_dict())
        summary = ModelScores(S=m.S, S_median_curve=m.S_median, D=m.D, D_median=m.D_median,
                              last_layer_ratio=m.last_layer_ratio, tokens=m.n_tokens, evaluation=evaluation,
                              model=str(source))
        return summary, paired

    def baseline(self) -> StageResult:
        config = self.config("recipe")
        return StageResult(True, model=config.model,
                           scores=self._measure_and_evaluate(config.model, "baseline", **config.model_options)[0])

    def _train_sized(self, which: str, reserve_s: float) -> StageResult:
        """Train ``which`` for the config's number of optimizer steps with as many sequences per step (up to the
        config's batch) as the time left allows; ``sized_batch`` says how."""

        config = self.config(which)
        exact, sampled = self._timing(config, which)
        # the time left, shared with the training stages still to come, each keeping its reserve back
        to_come = [name for name in TRAINING_STAGES[TRAINING_STAGES.index(which):] if not self.results.finished(name)]
        available = (self.left() - len(to_come) * (reserve_s + (20 if not self.dry_run else 0))) / len(to_come)
        steps = config.total_steps
        use, batch = sized_batch(exact, sampled, config.batch_size, steps, available)
        config = replace(config, batch_size=batch, micro_batch=min(use.micro_batch, batch),
                         lens_samples=use.lens_samples, max_tokens=steps * batch * config.seq_len,
                         max_minutes=max(available, 1) / 60)
        tokens_per_step = batch * config.seq_len
        self.log(f"{which}: {steps} steps x {batch} sequences x {config.seq_len} = {steps * tokens_per_step:,} tokens "
                 f"({steps * tokens_per_step / PAPER_TOKENS:.1%} of the paper's 10M), lens_samples {config.lens_samples}, "
                 f"micro-batch {config.micro_batch}, about "
                 f"{steps * batch * use.seconds_per_micro_batch / use.micro_batch:.0f} s")
        run = train(config, resume=True, progress=False)
        log = read_log(run)
        (self.records() / which).mkdir(exist_ok=True)
        shutil.copyfile(run / LOG_FILE, self.records() / which / LOG_FILE)
        shutil.copyfile(run / "run.json", self.records() / which / "run.json")
        trained = steps_of(log)
        last = trained[-1] if trained else None
        return StageResult(
            True, model=config.model, config=config.to_dict(), steps=len(trained), planned_steps=steps,
            sequences_per_step=batch, tokens=last.tokens if last else 0,
            fraction_of_paper_tokens=(last.tokens if last else 0) / PAPER_TOKENS,
            epochs_of_data=last.epochs if last else None,
            zeta1="exact (every lens layer)" if config.lens_samples == 0 else
                  f"estimated from {config.lens_samples} lens layers sampled per micro-batch",
            train_seconds=sum(r.seconds for r in trained), tokens_per_s=[r.tokens_per_s for r in trained],
            S_over_training=[{"step": r.step, **r.S} for r in evals(log)],
            loss=[{"step": r.step, "loss": r.loss, "zeta1": r.zeta1, "zeta2": r.zeta2} for r in trained],
            stopped=next((r.reason for r in log if isinstance(r, StopRecord)), None), run_dir=str(run))

    def _timing(self, config, which: str) -> tuple[StepTiming, StepTiming]:
        """(exact, sampled) step timings for ``config``: the throughput stage's for the recipe, measured here for
        another model."""
        if which in TRAINING_STAGES and self.results.finished("throughput"):
            timings = self.results.stages["throughput"].timings
        else:
            model, _ = load(config.model, device=self.device, **config.model_options)
            timings = measure_step(model, config, lens_samples=(0, 4))
            del model
        by_lens = {t.lens_samples: t for t in timings}
        return by_lens[0], by_lens.get(4, by_lens[0])

    def recipe(self) -> StageResult:
        return self._distil("recipe")

    def cosine(self) -> StageResult:
        return self._distil("cosine")

    def _distil(self, which: str, baseline_label: str = "baseline") -> StageResult:
        result = self._train_sized(which, self.spec["reserve_s"])
        result.after, after = self._measure_and_evaluate(result.run_dir, which)
        baseline = self.results.stages.get(baseline_label)
        result.before = baseline.scores if baseline is not None else None
        paired_path = self.records() / baseline_label / "paired.json"
        if paired_path.exists():
            before = PairedData.from_dict(json.loads(paired_path.read_text()))
            result.paired = paired_statistics(before, after)
            d, r = result.paired["S_normed_difference"], result.paired["lambada_final_ratio"]
            self.log(f"{which}: S normed {result.before.S['normed'] if result.before else '?'} -> "
                     f"{result.after.S['normed']:.4f} (paired diff {d.value:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]); LAMBADA "
                     f"final ratio {r.value:.3f} [{r.lo:.3f}, {r.hi:.3f}]")
        return result


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


