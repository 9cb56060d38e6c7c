"""What the commands share: the device / cache flags and the choices they validate."""

from __future__ import annotations

import argparse

from sdlib.types import WindowPlacement

DTYPES = ("float32", "bfloat16", "float16")
PLACEMENTS = tuple(str(p) for p in WindowPlacement)
MODEL_HELP = "smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct, tiny-llama, a hub id, a model or run folder"


def model_args(p: argparse.ArgumentParser, cache: bool = True) -> None:
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    if cache:
        p.add_argument("--no-cache", action="store_true", help="recompute even when a cached result matches")


def load_args(p: argparse.ArgumentParser) -> None:
    """How a hub id or folder is read (``sdlib.models.load``)."""
    p.add_argument("--revision", default=None, help="a hub branch, tag or commit (default: the main branch)")
    p.add_argument("--tokenizer", default=None,
                   help="a tokenizer by name, hub id or folder (default: the model's own; a folder without "
                        "tokenizer files needs this, e.g. the base model's name)")
    p.add_argument("--device-map", "--device_map", dest="device_map", default=None,
                   help="transformers' device_map (e.g. auto: spread a large model over the GPUs and the CPU)")


def load_kwargs(args: argparse.Namespace) -> dict:
    """``load_args``'s flags as ``sdlib.models.load`` keywords (only those given)."""
    return {k: getattr(args, k) for k in ("revision", "tokenizer", "device_map") if getattr(args, k, None)}


def output_arg(p: argparse.ArgumentParser, what: str) -> None:
    """lm-eval's spelling (``--output_path``) and the hyphenated one."""
    p.add_argument("--output_path", "--output-path", "--out", dest="out", default=None, help=what)
