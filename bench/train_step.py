"""Time one training step and its peak memory: the plain reference loss vs sdlib's chunked loss.

    python bench/train_step.py --model tiny-llama --micro-batch 4 --seq-len 256
    python bench/train_step.py --shape llama-3.2-1b --micro-batch 2 --seq-len 1024 --device cuda

``--shape`` builds a random-init model with a paper model's configuration (no download), so its speed
and memory can be measured without its weights. Prints one JSON line per loss, then the ratios.

Memory: on CUDA the peak allocated during the timed steps; on the CPU each loss runs in its own process and
the peak is the growth of its maximum resident set over the steps (ru_maxrss), i.e. what the step adds on top
of the weights. MFU (CUDA): model FLOPs per token = 6 x non-embedding params + 6 x (L + 1) x d x V (the
lenses) + 2 x params (the teacher's forward), against the device's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from sdlib import models
from sdlib.experiments.throughput import model_flops_per_token, peak_flops
from sdlib.loss import self_distillation_loss
from sdlib.provenance import device_name
from sdlib.train import distillation_loss
from sdlib.train.config import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the plain reference loss (references/)
from references.loss import reference_self_distillation_loss  # noqa: E402

SHAPES = {  # the paper models' configurations (from their config.json), for random-init timing
    "llama-3.2-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True,
                         max_position_embeddings=131072, rope_theta=500000.0),
    "qwen2-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                       max_position_embeddings=32768),
}


def build(args):
    """(student, teacher): the teacher is a copy of the student's starting weights, as in training."""
    if args.shape:
        from transformers import AutoConfig, AutoModelForCausalLM

        spec = dict(SHAPES[args.shape])
        config = AutoConfig.for_model(spec.pop("model_type"), **spec)
        torch.manual_seed(0)
        student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    else:
        student = models.load(args.model, **({"vocab_size": args.vocab_size} if args.vocab_size else {}))[0]
    return student, copy.deepcopy(student)


def step_fn(student, teacher, ids, loss_fn, autocast, config):
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast):
        parts = distillation_loss(student, teacher, ids, None, config, loss_fn=loss_fn)
        parts.total.backward()
    return float(parts.total.detach())


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--shape", choices=sorted(SHAPES), default=None)
    p.add_argument("--vocab-size", type=int, default=None, help="tiny models only (e.g. 32768)")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--chunk", type=int, default=TrainConfig.chunk_size)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--losses", default="reference,chunked")
    p.add_argument("--in-process", action="store_true", help="CPU: run the losses in this process (no memory numbers)")
    args = p.parse_args()
    names = args.losses.split(",")
    if args.device == "cpu" and len(names) > 1 and not args.in_process:
        results = {}
        for name in names:  # one process per loss, so each one's peak resident memory is its own
            done = subprocess.run([sys.executable, __file__, *_without_losses(sys.argv[1:]), "--losses", name],
                                  capture_output=True, text=True, check=True)
            line = done.stdout.strip().splitlines()[-1]
            print(line, flush=True)
            results[name] = json.loads(line)
        _print_ratios(results)
        return
    dev = torch.device(args.device)
    student, teacher = build(args)
    student.to(dev).train()
    teacher.to(dev).requires_grad_(False)
    autocast = dev.type == "cuda"
    if autocast:
        teacher.to(torch.bfloat16)
    vocab = models.decoder_parts(student).lm_head.weight.shape[0]
    ids = torch.randint(0, vocab, (args.micro_batch, args.seq_len), device=dev,
                        generator=torch.Generator(dev).manual_seed(0))
    tokens = args.micro_batch * args.seq_len
    config = TrainConfig(chunk_size=args.chunk)
    results = {}
    for name in args.losses.split(","):
        fn = {"reference": reference_self_distillation_loss, "chunked": self_distillation_loss}[name]
        try:
            rss_before = _rss_gb()
            step_fn(student, teacher, ids, fn, autocast, config)  # warm-up
            student.zero_grad(set_to_none=True)
            if dev.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                loss = step_fn(student, teacher, ids, fn, autocast, config)
                student.zero_grad(set_to_none=True)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            seconds = (time.perf_counter() - t0) / args.steps
            peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None
            if dev.type == "cpu":
                peak = _rss_gb() - rss_before
            results[name] = {"tokens_per_s": tokens / seconds, "peak_gb": peak, "loss": loss}
            if peak_flops(dev):
                results[name]["mfu"] = tokens / seconds * model_flops_per_token(student) / peak_flops(dev)
        except torch.OutOfMemoryError:
            results[name] = {"tokens_per_s": None, "peak_gb": "OOM"}
            torch.cuda.empty_cache()
        print(json.dumps({"loss_fn": name, "model": args.shape or args.model, "device": device_name(dev),
                          "micro_batch": args.micro_batch, "seq_len": args.seq_len, **results[name]}), flush=True)
    _print_ratios(results)


def _without_losses(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--losses":
            skip = True
        elif not a.startswith("--losses="):
            out.append(a)
    return out


def _print_ratios(results: dict) -> None:
    if {"reference", "chunked"} <= set(results) and all(results[k].get("tokens_per_s") for k in ("reference", "chunked")):
        r, c = results["reference"], results["chunked"]
        ratio = {"speedup": c["tokens_per_s"] / r["tokens_per_s"]}
        if isinstance(r.get("peak_gb"), float) and isinstance(c.get("peak_gb"), float) and r["peak_gb"] > 0:
            ratio["memory_ratio"] = c["peak_gb"] / r["peak_gb"]
        print(json.dumps(ratio))


if __name__ == "__main__":
    main()
