"""Commands that draw: ``figures`` and ``plan``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from sdlib.cli.common import PROFILES, model_args
from sdlib.figures.run import DEFAULT_NOTEBOOKS, prepare, run_notebooks
from sdlib.studies.profiles import DEFAULT_PROFILE, load_profile
from sdlib.train import run_state


def _figures(args: argparse.Namespace, extra: Sequence[str]) -> int:
    timings = {} if args.no_prepare or args.redraw else prepare(args.profile, device=args.device)
    only = [n.strip() for n in args.only.split(",")] if args.only else None
    timings |= run_notebooks(args.profile, only, {"device": args.device} if args.device else None,
                             compute=not args.redraw)
    print("wall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
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
    for pair in p.pairs:
        c = pair.config
        print(f"  train {pair.config_path}: {c.model}, {c.total_steps} steps x {c.batch_size * c.seq_len} tokens "
              f"-> {c.run_dir()} ({run_state(c)})")
    if p.pairs:
        print(f"  measure + evaluate (subset {p.eval_subset}) the pretrained and self-distilled models; cached by "
              "weights + settings")
    if p.packaged_models():
        print(f"  real models used: {', '.join(p.packaged_models())} (installed by ./scripts/setup.sh --models)")
    print(f"  draw {', '.join(p.notebooks or DEFAULT_NOTEBOOKS)} -> {p.figures_dir()}")
    return 0


def add(sub) -> None:
    p = sub.add_parser("figures", help="measure + evaluate a profile's models (cached), then run its notebooks")
    p.add_argument("--profile", default=DEFAULT_PROFILE, choices=PROFILES,
                   help="qwen (default; writes figures/), quick, atlas (writes figures/atlas.*), tiny, paper or gpu")
    p.add_argument("--only", default=None, help="comma-separated notebook names (default: the profile's)")
    p.add_argument("--no-prepare", "--no_prepare", action="store_true", help="skip the measure/evaluate step")
    p.add_argument("--redraw", action="store_true",
                   help="redraw each figure from its saved JSON in the profile's figures folder, at this commit: no "
                        "model is loaded (seconds); each JSON's provenance keeps the commits that computed it")
    model_args(p, cache=False)
    p.set_defaults(func=_figures)

    p = sub.add_parser("plan", help="what run_all.sh will do for a profile")
    p.add_argument("--profile", default=DEFAULT_PROFILE, choices=PROFILES, help=", ".join(PROFILES) + " (default qwen)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--configs", action="store_true", help="print only the training configs, one per line")
    group.add_argument("--models", action="store_true", help="print only the built-in real models it needs")
    group.add_argument("--figures-dir", "--figures_dir", action="store_true", help="print only where its figures go")
    p.set_defaults(func=_plan)
