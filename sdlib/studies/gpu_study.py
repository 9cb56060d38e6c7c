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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sdlib.cache import Record
from sdlib.data import TextWindows
from sdlib.errors import SdlibError
from sdlib.evaluation.layers import evaluate_cached, load_subset
from sdlib.models import load
from sdlib.paths import build_dir, configs_dir, figures_dir, project_root
from sdlib.provenance import device_name, package_versions, write_json
from sdlib.stats import paired_ratio, paired_S_difference
from sdlib.studies.measure import measure_text
from sdlib.studies.throughput import StepTiming, measure_step
from sdlib.train import LOG_FILE, train
from sdlib.train.config import load_config, read_yaml
from sdlib.train.runlog import StopRecord, evals, read_log
from sdlib.train.runlog import steps as steps_of
from sdlib.types import LAST_STATES

STAGES = ("throughput", "baseline", "recipe", "cosine")
TRAINING_STAGES = ("recipe", "cosine")
PAPER_TOKENS = 10_000_000
# seconds a stage needs at the least before it is worth starting (real / dry run)
MIN_SECONDS = {"throughput": (60, 1), "baseline": (90, 1), "recipe": (180, 1), "cosine": (180, 1)}


@dataclass
class ModelScores(Record):
    """One model measured and evaluated: S and D in both conventions (and of the per-token median curve), and
    LAMBADA accuracy (with its 95% interval) and WikiText word perplexity at every layer."""

    S: dict[str, float]
    S_median_curve: dict[str, float]
    D: dict[str, list[float]]
    D_median: dict[str, list[float]]
    last_layer_ratio: dict[str, float]
    tokens: int
    lambada_acc: list[float]
    lambada_lo: list[float]
    lambada_hi: list[float]
    lambada_n: int
    wikitext_word_ppl: list[float]
    wikitext_n: int
    eval_subset: str
    model: str = ""


@dataclass
class PairedData(Record):
    """What paired statistics need (kept in the records, out of the summary): the per-window D curves and the
    per-passage LAMBADA outcomes [n_docs, L + 1]."""

    per_window_D: dict[str, list[list[float]]]
    greedy: list[list[bool]]
    window_documents: list[int] = field(default_factory=list)


@dataclass
class Interval(Record):
    value: float
    lo: float
    hi: float


@dataclass
class StageResult(Record):
    """One stage: whether it finished (or why not) and its numbers. ``throughput`` fills ``timings``, ``baseline``
    ``scores``, a training stage the run's fields, ``before`` / ``after`` and the ``paired`` statistics."""

    done: bool
    seconds: float = 0.0
    reason: str | None = None
    error: str | None = None
    model: str | None = None
    timings: list[StepTiming] = field(default_factory=list)
    scores: ModelScores | None = None
    config: dict[str, Any] | None = None
    """the training config as run (its batch sized to the time)"""
    steps: int = 0
    planned_steps: int = 0
    sequences_per_step: int = 0
    tokens: int = 0
    fraction_of_paper_tokens: float = 0.0
    epochs_of_data: float | None = None
    zeta1: str = ""
    train_seconds: float = 0.0
    tokens_per_s: list[float] = field(default_factory=list)
    S_over_training: list[dict[str, float]] = field(default_factory=list)
    loss: list[dict[str, float]] = field(default_factory=list)
    stopped: str | None = None
    run_dir: str = ""
    before: ModelScores | None = None
    after: ModelScores | None = None
    paired: dict[str, Interval] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageResult:
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        values["timings"] = [StepTiming.from_dict(t) for t in data.get("timings") or []]
        for name in ("scores", "before", "after"):
            values[name] = ModelScores.from_dict(data[name]) if data.get(name) else None
        values["paired"] = {k: Interval.from_dict(v) for k, v in (data.get("paired") or {}).items()}
        return cls(**values)


@dataclass
class GpuStudy(Record):
    """The study's record (``study.json``): the machine and its packages, and each stage's result."""

    environment: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, StageResult] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GpuStudy:
        return cls(dict(data.get("environment") or {}),
                   {k: StageResult.from_dict(v) for k, v in (data.get("stages") or {}).items()})

    def finished(self, name: str) -> bool:
        return name in self.stages and self.stages[name].done


class Study:
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

        if model is None:
            model, tokenizer = load(source, device=self.device, **options)
        where = TextWindows("wikitext-test", self.spec["measure"]["windows"], self.spec["measure"]["window_len"])
        m = measure_text(model, tokenizer, where)
        write_json(self.records() / label / "measure.json", m.to_dict())
        self.log(f"{label}: S normed {m.S['normed']:.4f}, pre_norm {m.S['pre_norm']:.4f} ({m.n_tokens} tokens)")
        settings = load_subset(self.spec["eval_subset"], self.device)
        scores, _ = evaluate_cached(source, ["lambada_openai", "wikitext"], settings, device=self.device,
                                    loaded=(model, tokenizer), out_dir=self.records() / label / "eval", progress=False)
        lam, ppl = scores.curve("lambada_openai", "acc", intervals=True), scores.curve("wikitext", "word_perplexity")
        self.log(f"{label}: LAMBADA final {lam[-1][0]:.4f} (n {scores.n('lambada_openai')}), WikiText word ppl "
                 f"final {ppl[-1]:.3f}")
        paired = PairedData(m.per_window_D, scores.greedy["lambada_openai"].tolist(), m.window_documents)
        write_json(self.records() / label / "paired.json", paired.to_dict())
        summary = ModelScores(S=m.S, S_median_curve=m.S_median, D=m.D, D_median=m.D_median,
                              last_layer_ratio=m.last_layer_ratio, tokens=m.n_tokens,
                              lambada_acc=[v for v, _, _ in lam], lambada_lo=[lo for _, lo, _ in lam],
                              lambada_hi=[hi for _, _, hi in lam], lambada_n=scores.n("lambada_openai"),
                              wikitext_word_ppl=ppl, wikitext_n=scores.n("wikitext"), eval_subset=settings.subset,
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
        config.validate()
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


def paired_statistics(before: PairedData, after: PairedData) -> dict[str, Interval]:
    """The change of S per convention (paired over windows) and the ratio of final-layer LAMBADA accuracy (paired
    over passages), each with its 95% interval."""
    stats = {f"S_{c}_difference": Interval(*paired_S_difference(before.per_window_D[c], after.per_window_D[c],
                                                                 documents=before.window_documents or None))
             for c in LAST_STATES}
    b, a = np.asarray(before.greedy, dtype=float), np.asarray(after.greedy, dtype=float)
    stats["lambada_final_ratio"] = Interval(*paired_ratio(b[:, -1], a[:, -1]))
    return stats


def sized_batch(exact: StepTiming, sampled: StepTiming, batch: int, steps: int, seconds: float
                ) -> tuple[StepTiming, int]:
    """(the timing to use, sequences per step) so that ``steps`` steps fit in ``seconds``: the exact zeta1 when a
    step of at least one of its measured micro-batches fits, else the sampled one; at most ``batch`` sequences and
    at least one, a multiple of the micro-batch when larger than it."""
    def per_sequence(timing: StepTiming) -> float:
        return timing.seconds_per_micro_batch / timing.micro_batch

    fits = int(seconds / steps / per_sequence(exact))
    use = exact if fits >= exact.micro_batch or exact is sampled else sampled
    n = max(1, min(batch, int(seconds / steps / per_sequence(use))))
    micro = use.micro_batch
    return use, (n // micro) * micro if n > micro else n


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


def summary_lines(results: GpuStudy) -> list[str]:
    """The headline numbers of a study record, for the terminal and the closing note."""
    env, stages = results.environment, results.stages
    versions = env.get("versions", {})
    lines = [f"device: {env.get('device')}; torch {versions.get('torch')}, transformers {versions.get('transformers')}"]
    nan = Interval(math.nan, math.nan, math.nan)
    for name in STAGES:
        s = stages.get(name)
        if s is None:
            lines.append(f"{name}: not run")
        elif not s.done:
            lines.append(f"{name}: not done ({s.reason or s.error})")
        elif name == "throughput":
            for t in s.timings:
                mfu = "n/a" if t.mfu is None else f"{t.mfu:.1%}"
                lines.append(f"throughput ({s.model}): lens_samples {t.lens_samples}: "
                             f"{t.tokens_per_s:,.0f} tokens/s, step {t.step_seconds:.1f} s, MFU {mfu}")
        elif name == "baseline":
            b = s.scores
            lines.append(f"baseline ({s.model}): S normed {b.S['normed']:.4f}, pre_norm {b.S['pre_norm']:.4f}; "
                         f"LAMBADA final {b.lambada_acc[-1]:.4f} [{b.lambada_lo[-1]:.4f}, {b.lambada_hi[-1]:.4f}]")
        elif name in TRAINING_STAGES:
            d, r = s.paired.get("S_normed_difference", nan), s.paired.get("lambada_final_ratio", nan)
            lines.append(f"{name}: {s.steps} steps x {s.sequences_per_step} sequences, {s.tokens:,} tokens "
                         f"({s.fraction_of_paper_tokens:.1%} of 10M), {s.zeta1}; S normed {s.after.S['normed']:.4f} "
                         f"(paired diff {d.value:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]), pre_norm "
                         f"{s.after.S['pre_norm']:.4f}; LAMBADA final ratio {r.value:.3f} [{r.lo:.3f}, {r.hi:.3f}]")
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


def load_study(path: str | Path) -> GpuStudy:
    """A study record (``study.json``); one clear error when there is none yet."""

    path = Path(path)
    if not path.is_file():
        raise SdlibError(f"no GPU study results at {path} yet: run `sdlib gpu-study run` on a GPU machine and "
                         "`sdlib gpu-study import` the folder it wrote")
    return GpuStudy.from_dict(json.loads(path.read_text()))
