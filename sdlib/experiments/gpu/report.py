"""The GPU study's results read: its headline lines, and its returned files brought home."""

from __future__ import annotations

import math
import shutil
import tarfile
from pathlib import Path

from sdlib.errors import SdlibError
from sdlib.experiments.gpu.records import STAGES, TRAINING_STAGES, GpuStudy
from sdlib.paths import build_dir, figures_dir
from sdlib.stats import Interval


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
                         "LAMBADA final {:.4f} [{:.4f}, {:.4f}]".format(*b.evaluation.lambada(-1)))
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


