"""Commands that compare and draw: ``compare``, ``figures`` and ``plan``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from sdlib import timings
from sdlib.cli.common import model_args, output_arg
from sdlib.errors import SdlibError
from sdlib.evaluation.tasks import check_tasks
from sdlib.experiments.compare import measured_pair, paired_result
from sdlib.experiments.grid import markdown_table
from sdlib.experiments.profiles import DEFAULT_PROFILE, Pair, Profile, load_profile
from sdlib.figures.run import plan, prepare, run_notebooks
from sdlib.models import resolve_checkpoint
from sdlib.paths import results_dir, slug
from sdlib.provenance import provenance, write_json
from sdlib.runs import CONFIG_FILE
from sdlib.timings import machine
from sdlib.train.config import load_config
from sdlib.types import Role


def _run_config(run: Path) -> Path:
    """The config file a run folder's latest checkpoint was written with."""
    config = resolve_checkpoint(run) / CONFIG_FILE
    if not config.is_file():
        raise SdlibError(f"{run} is not an sdlib training run (no {CONFIG_FILE} in its checkpoint): pass the folder "
                         "`sdlib train` wrote")
    return config


def _compare(args: argparse.Namespace, extra: Sequence[str]) -> int:
    tasks = check_tasks(args.tasks)
    run = Path(args.run).expanduser().resolve()
    pair = Pair(str(run), load_config(_run_config(run), {"model": args.base}), str(run), "")
    profile = Profile("compare", [pair], args.subset, {"text": args.text, "windows": args.windows,
                                                       "window_len": args.window_len})
    base = measured_pair(profile, pair, Role.PRETRAINED, tasks)
    rows = [paired_result(Role.PRETRAINED, base),
            paired_result(Role.SELF_DISTILLED, measured_pair(profile, pair, Role.SELF_DISTILLED, tasks), base)]
    rows[0].cell, rows[1].cell = args.base, str(run)
    rows[1].tokens = pair.config.train_tokens
    rows[1].add_training_log(run)
    print(f"{args.base} vs {run}: S measured on {rows[0].setting}; LAMBADA {rows[0].evaluation.lambada_n} passages "
          f"(subset {args.subset}); changes and ratios paired over the same windows and passages")
    print(markdown_table(pd.DataFrame([r.row() for r in rows])))
    out = write_json(args.out or results_dir() / slug(str(run)) / "compare.json",
                     {"base": args.base, "run": str(run), "pretrained": rows[0].to_dict(),
                      "trained": rows[1].to_dict(), "provenance": provenance()})
    print(f"written: {out}")
    return 0


OWN_NOTEBOOKS = ["fig03_movement", "fig04_pca", "fig05_lambada", "fig06_wikitext", "fig07_logit_lens", "table_summary"]
"""what ``sdlib figures --model ... --trained ...`` draws: the paper's Figs. 3-7 and the summary table"""


def _own_profile(args: argparse.Namespace) -> str:
    """A profile of one base model and its trained runs, written as ``<output_dir>/profile.yaml``; -> its path."""
    if not args.trained or not args.output_dir:
        raise SdlibError("--model needs --trained RUN (one or more) and --output_dir DIR")
    out = Path(args.output_dir).expanduser().resolve()
    configs = []
    for run in args.trained:
        run = Path(run).expanduser().resolve()
        configs.append({"config": str(_run_config(run)), "label": run.name, "trained": str(run),
                        "model": args.model})
    entry = {"configs": configs, "eval_subset": args.subset, "notebooks": OWN_NOTEBOOKS, "figures": str(out),
             "measure": {"text": "wikitext-test", "windows": args.windows, "window_len": args.window_len}}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "profile.yaml"
    path.write_text(yaml.safe_dump({slug(args.model): entry}, sort_keys=False))
    print(f"profile: {path} (pass it as --profile to draw again)")
    return str(path)


def _figures(args: argparse.Namespace, extra: Sequence[str]) -> int:
    profile = _own_profile(args) if args.model else args.profile
    timings = {} if args.no_prepare or args.redraw else prepare(profile, device=args.device)
    only = [n.strip() for n in args.only.split(",")] if args.only else None
    timings |= run_notebooks(profile, only, {"device": args.device} if args.device else None, compute=not args.redraw)
    print("wall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print(f"figures in {load_profile(profile).figures_dir()}")
    return 0


def _plan(args: argparse.Namespace, extra: Sequence[str]) -> int:
    p = load_profile(args.profile)
    if args.configs:
        print("\n".join(pair.config_path for pair in p.pairs))
        return 0
    if args.models:
        print(",".join(p.packaged_models()))
        return 0
    if args.figures_dir:
        print(p.figures_dir())
        return 0
    stages = plan(args.profile)
    estimates = [stage.estimate() for stage in stages]
    width = max(len(stage.what) for stage in stages)
    print(f"plan for the {p.name} profile on this machine ({machine()}):")
    for stage, estimate in zip(stages, estimates):
        print(f"  {stage.what:<{width}}  {estimate.text()}")
    print(f"  {timings.total_line(estimates)}; figures go to {p.figures_dir()}")
    print("  (estimates: this machine's own timings of earlier runs, else configs/timings.yaml, measured on a 2-core "
          "CPU from a fresh clone; cached results take seconds)")
    return 0


def add(sub) -> None:
    p = sub.add_parser("compare", help="a trained run against its base model: S in both readings with the paired "
                                       "change, D_L and its ratio, LAMBADA final and L-1 with the paired ratio")
    p.add_argument("base", help="the base model the run was trained from (a name, hub id or folder)")
    p.add_argument("run", help="the run folder `sdlib train` wrote")
    p.add_argument("--tasks", default="lambada_openai,wikitext", type=lambda s: s.split(","),
                   help="lambada_openai (required) and wikitext (default: both)")
    p.add_argument("--subset", default="cpu-short",
                   help="evaluation subset: cpu-short (default: the first 500 LAMBADA passages, 2 WikiText pages), "
                        "cpu-subset, full, tiny, quick or a YAML file")
    p.add_argument("--text", default="wikitext-test", help="measurement text (default wikitext-test)")
    p.add_argument("--windows", type=int, default=64, help="measurement windows (default 64)")
    p.add_argument("--window-len", "--window_len", type=int, default=512, help="tokens per window (default 512)")
    output_arg(p, "JSON output path (default: <build>/results/<run>/compare.json)")
    p.set_defaults(func=_compare)

    p = sub.add_parser("figures", help="measure + evaluate a profile's models (cached), then run its notebooks")
    p.add_argument("--profile", default=DEFAULT_PROFILE,
                   help=f"a profile of configs/profiles.yaml (default {DEFAULT_PROFILE}: writes figures/jump/; qwen "
                        "and atlas write figures/, tiny, quick and paper build/figures/)")
    p.add_argument("--model", default=None,
                   help="your own base model (a name, hub id or folder): with --trained and --output_dir, the paper's "
                        "Figs. 3-7 and the summary table for it and its runs, instead of a profile")
    p.add_argument("--trained", action="append", default=[], help="a run folder trained from --model (repeatable)")
    p.add_argument("--output_dir", "--output-dir", default=None, help="where --model's figures go")
    p.add_argument("--subset", default="cpu-short", help="--model's evaluation subset (default cpu-short; full, tiny "
                                                          "or a YAML file)")
    p.add_argument("--windows", type=int, default=64, help="--model's measurement windows (default 64)")
    p.add_argument("--window-len", "--window_len", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--only", default=None, help="comma-separated notebook names (default: the profile's)")
    p.add_argument("--no-prepare", "--no_prepare", action="store_true", help="skip the measure/evaluate step")
    p.add_argument("--redraw", action="store_true",
                   help="redraw each figure from its saved JSON in the profile's figures folder, at this commit: no "
                        "model is loaded (seconds); each JSON's provenance keeps the commits that computed it")
    model_args(p, cache=False)
    p.set_defaults(func=_figures)

    p = sub.add_parser("plan", help="what run_all.sh will do for a profile")
    p.add_argument("--profile", default=DEFAULT_PROFILE,
                   help=f"a profile of configs/profiles.yaml (default {DEFAULT_PROFILE})")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--configs", action="store_true", help="print only the training configs, one per line")
    group.add_argument("--models", action="store_true", help="print only the built-in real models it needs")
    group.add_argument("--figures-dir", "--figures_dir", action="store_true", help="print only where its figures go")
    p.set_defaults(func=_plan)
