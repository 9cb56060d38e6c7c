"""Commands that measure one model: ``measure``, ``eval``, ``analyze`` and ``study``."""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Sequence
from dataclasses import replace

from sdlib.cli.common import DTYPES, MODEL_HELP, PLACEMENTS, load_args, load_kwargs, model_args, output_arg
from sdlib.data import TextWindows
from sdlib.errors import SdlibError
from sdlib.evaluation.layers import eval_settings, format_table
from sdlib.evaluation.movement import MeasureSettings, format_measurement
from sdlib.evaluation.subject import Subject
from sdlib.evaluation.tasks import check_tasks
from sdlib.fold import card_text, fold_final_norm, fold_info, save_folded
from sdlib.models import default_device, load
from sdlib.provenance import write_json
from sdlib.studies import registry
from sdlib.studies.atlas import AtlasSettings, atlas, format_atlas
from sdlib.studies.fold_split import compare_outputs


def _measure(args: argparse.Namespace, extra: Sequence[str]) -> int:
    settings = MeasureSettings(text=args.text, windows=args.windows, window_len=args.window_len,
                               placement=args.placement, batch_size=args.batch_size, dtype=args.dtype)
    subject = Subject(args.model, options={"dtype": args.dtype, **load_kwargs(args)}, device=args.device,
                      progress=not args.json)
    record = subject.measurement(settings, use_cache=not args.no_cache)
    out = write_json(args.out or subject.folder("measure") / settings.file_name(), record.to_dict())
    if args.json:
        print(json.dumps({"model": record.model, **{k: getattr(record, k) for k in (
            "D", "S", "S_median", "last_layer_ratio", "n_tokens", "n_windows", "window_len")}}, indent=2))
    else:
        print(format_measurement(record))
        print(f"written: {out}")
    return 0


def _eval(args: argparse.Namespace, extra: Sequence[str]) -> int:
    tasks = check_tasks(args.tasks)
    for flag, value in (("--limit", args.limit), ("--max-length", args.max_length), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise SdlibError(f"{flag} must be at least 1, got {value}")
    device = default_device(args.device)
    settings = eval_settings(args.subset, device, limit=args.limit, max_length=args.max_length, dtype=args.dtype,
                             tasks=tasks)
    print(f"evaluating {args.model} on {', '.join(tasks)}: subset {settings.subset}, "
          f"limit {settings.limit or 'none'}, max_length {settings.max_length or 'the model maximum'}, {device}")
    subject = Subject(args.model, options={"dtype": args.dtype, **load_kwargs(args)}, device=device)
    scores, path = subject.layer_scores(tasks, settings, batch_size=args.batch_size or 8, use_cache=not args.no_cache,
                                        out_dir=args.out)
    print(format_table(scores.table))
    print(f"written: {path} (and results.json beside it)")
    return 0


def _analyze(args: argparse.Namespace, extra: Sequence[str]) -> int:
    settings = replace(AtlasSettings(), windows=args.windows, window_len=args.window_len, text=args.text,
                       eval_subset=args.subset)
    record = atlas(args.model, settings, device=args.device, use_cache=not args.no_cache, progress=not args.json)
    print(json.dumps(record.to_dict(), indent=2, default=str) if args.json else format_atlas(record))
    return 0


def _fold(args: argparse.Namespace, extra: Sequence[str]) -> int:
    where = TextWindows(text=args.text, windows=args.windows, window_len=args.window_len)
    model, tokenizer = load(args.model, dtype=args.dtype, device=default_device(args.device))
    folded = fold_final_norm(copy.deepcopy(model), scale=args.scale or None)
    info = fold_info(folded)
    print(f"folded {args.model}'s final norm ({info.norm}) into its head: c = {info.scale:.6g}"
          + ("; the tied head is now a weight of its own" if info.untied else ""))
    comparison, _ = compare_outputs(model, folded, where.ids(tokenizer), args.batch_size, progress=True)
    checks = comparison.describe(where.describe())
    out = save_folded(folded, tokenizer, args.output_dir, card_text(args.model, info, checks))
    print(checks)
    print(f"written: {out} (a Hugging Face folder: sdlib measure / eval / train and the notebooks read it)")
    return 0


def _study(args: argparse.Namespace, extra: Sequence[str]) -> int:
    if args.name == "list":
        for study in registry.STUDIES.values():
            print(f"{study.name:12s} {study.help}\n{study.settings_help()}")
        return 0
    study = registry.get(args.name)
    if not args.model:
        raise SdlibError(f"name the model to study: `sdlib study {study.name} MODEL`")
    settings = study.settings_from(list(extra))
    record = study.run(args.model, settings, device=args.device, use_cache=not args.no_cache, progress=not args.json)
    print(json.dumps(record.to_dict(), indent=2, default=str) if args.json else study.describe(record))
    print(f"cached under: {study.folder(Subject(args.model))}")
    return 0


def add(sub) -> None:
    for add_command in (_add_measure, _add_eval, _add_analyze, _add_fold, _add_study):
        add_command(sub)


def _add_measure(sub) -> None:
    p = sub.add_parser("measure", help="D curve and S (both last-state conventions) of a model or checkpoint")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="float32 (default), bfloat16, float16")
    p.add_argument("--text", default="wikitext-test", help="wikitext-test (default), wikitext-valid or a file")
    p.add_argument("--windows", type=int, default=64, help="number of windows (default 64)")
    p.add_argument("--window-len", "--window_len", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--placement", default="spread", choices=PLACEMENTS,
                   help="spread (default): windows evenly spaced over the whole text; first: its first tokens")
    p.add_argument("--batch-size", "--batch_size", type=int, default=8, help="windows per forward pass")
    output_arg(p, "JSON output path (default: <build>/results/<model>/measure/<text>-<windows>x<len>-<placement>-<dtype>"
                  ".json: one file per setting)")
    load_args(p)
    model_args(p)
    p.set_defaults(func=_measure)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="LAMBADA / WikiText scores of every layer (logit lens), scored as lm-eval does")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--tasks", default="lambada_openai,wikitext",
                   help="lambada_openai and/or wikitext, comma-separated (lm-eval's task names)")
    p.add_argument("--subset", default="auto",
                   help="auto (cpu-subset on a CPU, full elsewhere), cpu-subset, full, or a YAML file")
    p.add_argument("--limit", type=int, default=None, help="first N documents of each task (as lm-eval's --limit)")
    p.add_argument("--max-length", "--max_length", type=int, default=None,
                   help="rolling-window length (default: the subset's)")
    p.add_argument("--batch-size", "--batch_size", type=int, default=None, help="requests per forward pass (default 8)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="float32 (default), bfloat16, float16")
    output_arg(p, "output folder, as lm-eval's --output_path (default: <build>/results/<model>/eval)")
    load_args(p)
    model_args(p)
    p.set_defaults(func=_eval)


def _add_analyze(sub) -> None:
    p = sub.add_parser("analyze", help="the convergence atlas of a model (the atlas study): D and S, the last step "
                                       "split into block and final norm, channel shares, per-layer evaluation, "
                                       "zeta1/zeta2 at initialisation")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p.add_argument("--text", default="wikitext-test", help="measurement text (default wikitext-test)")
    p.add_argument("--windows", type=int, default=64, help="measurement windows (default 64)")
    p.add_argument("--window-len", "--window_len", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--subset", default=AtlasSettings.eval_subset,
                   help=f"evaluation subset (default {AtlasSettings.eval_subset}; cpu-subset, full, tiny)")
    model_args(p)
    p.set_defaults(func=_analyze)


def _add_fold(sub) -> None:
    p = sub.add_parser("fold", help="fold the final norm's per-channel gain into the head (outputs unchanged) and "
                                    "write the folded model as a Hugging Face folder")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--output_dir", "--output-dir", required=True, help="a new folder for the folded model")
    p.add_argument("--scale", type=float, default=0.0, help="the folded norm's gain c (default: the RMS of the gain)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="float32 (default), bfloat16, float16")
    p.add_argument("--text", default="wikitext-test", help="text of the output check (default wikitext-test)")
    p.add_argument("--windows", type=int, default=64, help="windows of the output check (default 64)")
    p.add_argument("--window-len", "--window_len", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--batch-size", "--batch_size", type=int, default=8, help="windows per forward pass")
    model_args(p, cache=False)
    p.set_defaults(func=_fold)


def _add_study(sub) -> None:
    p = sub.add_parser("study", help="run a registered study on a model (`sdlib study list` shows them)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="studies and their settings (pass any as --key value):\n" + "\n".join(
                           f"{s.name}: {s.help}\n{s.settings_help()}" for s in registry.STUDIES.values()))
    p.add_argument("name", help="a study name, or list")
    p.add_argument("model", nargs="?", help=MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    model_args(p)
    p.set_defaults(func=_study)
