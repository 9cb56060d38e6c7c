"""The ``sdlib`` command (also ``python -m sdlib``). Each subcommand parses its arguments, calls the package
and prints the result; a fixable error is one line (``sdlib: error: ...``) and exit status 2. One module per
group of commands: ``measure`` (measure, eval, analyze, fold, study), ``train`` (train, grid), ``figures`` (compare,
figures, plan) and ``machines`` (models, bundle, gpu-study, lm-eval).

    sdlib train CONFIG [--resume] [--key value ...]   self-distil a model
    sdlib measure MODEL                                D curve and S, both last-state conventions
    sdlib eval MODEL                                   LAMBADA / WikiText at every layer (lm-eval's scoring)
    sdlib lm-eval ...                                  lm-eval's own command line with the sdlib-layer model
    sdlib analyze MODEL                                the convergence atlas of one model
    sdlib fold MODEL --output_dir DIR                  fold the final norm's gain into the head (same outputs)
    sdlib study NAME MODEL [--key value ...]           any registered study (sdlib study list)
    sdlib grid run|train|collect GRID.yaml             the reproduction study's grids
    sdlib compare BASE RUN                             a trained run against its base model, paired
    sdlib figures --profile P                          measure + evaluate a profile's models, run its notebooks
    sdlib plan --profile P                             what run_all.sh will do for a profile
    sdlib models [install NAME]                        the built-in real models
    sdlib gpu-study run|import                         the paper's recipe on a GPU machine in a given time
    sdlib bundle create|join FOLDER                    models, data and wheels for a machine without network
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sdlib import __version__
from sdlib.cli import figures, machines, measure, train
from sdlib.cli.common import DTYPES
from sdlib.errors import SdlibError

__all__ = ["DTYPES", "build_parser", "main"]
TAKES_SETTINGS = ("train", "study")
"""commands whose unknown ``--key value`` words are settings (a config's keys, a study's settings)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdlib", description="Measure how hidden states move layer by layer in a "
                                     "decoder LLM, and self-distil them into convergence (Shibata et al. companion).",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="commands:\n" + "\n".join(__doc__.split("\n")[5:]))
    parser.add_argument("--version", action="version", version=f"sdlib {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (train, measure, figures, machines):
        group.add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["lm-eval"]:
            return machines.lm_eval_main(argv[1:])
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra and args.command not in TAKES_SETTINGS:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args.func(args, extra)
    except SdlibError as err:
        print(f"sdlib: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdlib: interrupted; finished checkpoints and results are kept (rerun to resume)", file=sys.stderr)
        return 130
