"""Whole training steps of a real model on this machine, side by side, and where a step's time goes.

    python bench/step_profile.py                                  # qwen2.5-coder-0.5b-instruct, 1 x 256, every row
    python bench/step_profile.py --rows ce,exact --steps 3
    python bench/step_profile.py --rows reference,chunked --seq-len 128   # the loss alone, plain vs sdlib
    python bench/step_profile.py --model tiny-llama --data corpus.txt --steps 1 --seq-len 32   # a smoke run

Rows (each in its own process, so each peak resident memory is its own):

* ``ce``: the plain cross-entropy fine-tuning step (student forward + backward + AdamW): the floor;
* ``exact``: sdlib's self-distillation step as the recipe runs it (teacher forward, student forward, the chunked
  loss with every lens layer, backward, clipping, AdamW);
* ``sampled``: the same with ``lens_samples: 4``;
* ``reference`` / ``chunked``: the self-distillation step with the plain reference loss (every layer's logits
  materialized, ``references/loss.py``) or sdlib's chunked loss, without the optimizer.

Each row prints one JSON line: tokens/s (median over ``--steps`` timed steps after one warm-up), the process's
peak resident memory (and its growth over the set-up's peak: what the step adds), the step's FLOPs (counted
from the shapes: 2 per multiply-add, matmuls only) and the achieved GFLOP/s next to the matmul peak measured in
the same process (a ``torch.mm`` of the step's largest shape, [tokens, d] x [d, vocab]). ``--profile`` adds the
step split by part: teacher forward, student forward, the lens matmuls, the lens elementwise passes
(log-softmax, KL, its gradient), zeta2, backward, optimizer (AdamW as the recipe builds it: fused where torch
has the kernel).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from sdlib import loss as loss_module
from sdlib.experiments.grid_config import load_grid
from sdlib.parts import decoder_parts
from sdlib.provenance import device_name
from sdlib.states import forward_states
from sdlib.train.recipe import SelfDistillation, fused_adamw, student_loss, teacher_head

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the plain reference loss (references/)
from references.loss import reference_self_distillation_loss  # noqa: E402

ROWS = ("ce", "exact", "sampled", "reference", "chunked")
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::addmm_")  # the lm_head gradient accumulates in place (addmm_)
GRID = Path(__file__).resolve().parents[1] / "configs" / "ablations" / "qwen-cpu.yaml"


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def matmul_peak(tokens: int, d: int, vocab: int, repeats: int = 5) -> float:
    """GFLOP/s of ``torch.mm`` on the step's largest shape ([tokens, d] x [d, vocab]), best of ``repeats``."""
    a, b = torch.randn(tokens, d), torch.randn(d, vocab)
    out = torch.empty(tokens, vocab)
    torch.mm(a, b, out=out)
    best = min(_timed(lambda: torch.mm(a, b, out=out)) for _ in range(repeats))
    return 2 * tokens * d * vocab / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def step_flops(model, tokens: int, row: str, lens_layers: int) -> float:
    """Matmul FLOPs of one step (2 per multiply-add). Blocks: forward 2 N, backward 4 N per token (N the decoder
    blocks' weights); the head's [d, V] matmul: forward 2, backward 4 per token for ``ce``; for self-distillation
    the teacher's blocks forward 2 N and head 2 d V once, then per lens layer z = h W^T, dL/dh = g W and
    dL/dW = g^T h: 6 d V per token."""
    parts = decoder_parts(model)
    blocks = sum(p.numel() for p in parts.layers.parameters())
    d, vocab = parts.lm_head.weight.shape[1], parts.lm_head.weight.shape[0]
    head = d * vocab
    if row == "ce":
        return tokens * (6 * blocks + 6 * head)
    return tokens * (6 * blocks + 2 * blocks + 2 * head + 6 * head * lens_layers)


def run_row(row: str, args) -> dict:
    grid = load_grid(GRID)
    config = replace(grid.config("00-paper"), name="bench", output_dir="/tmp/sdlib-bench", seq_len=args.seq_len,
                     micro_batch=args.micro_batch, batch_size=args.micro_batch, eval_every=0, eval_steps=[],
                     save_every=0, lens_samples=4 if row == "sampled" else 0, chunk_size=args.chunk,
                     max_tokens=10**9, model=args.model, data=args.data,
                     # a local training file is also the held-out text the recipe sets up: no other data is read
                     **({"eval_text": args.data} if Path(args.data).is_file() else {}))
    recipe = SelfDistillation(config, progress=False)
    recipe.setup()
    student, teacher = recipe.unwrapped, recipe.teacher
    ids = recipe.stream.batch(0, config.micro_batch)
    tokens = ids.numel()
    n_layers = decoder_parts(student).num_layers  # the lens layers: one per decoder layer (0..L)
    if row in ("exact", "sampled"):
        step = recipe.train_step
    elif row == "ce":
        optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, fused=fused_adamw(student, "cpu"))

        def step():
            out = student(input_ids=ids, labels=ids, use_cache=False)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    else:
        fn = {"reference": reference_self_distillation_loss, "chunked": loss_module.self_distillation_loss}[row]

        def step():
            parts = student_loss(student, ids, None, teacher_head(teacher, ids, None), config, loss_fn=fn)
            parts.total.backward()
            student.zero_grad(set_to_none=True)
    rss_setup = _rss_gb()
    step()  # warm-up (allocations, the first AdamW state)
    times = [_timed(step) for _ in range(args.steps)]
    seconds = statistics.median(times)
    lens_layers = 4 if row == "sampled" else n_layers
    flops = step_flops(student, tokens, row, lens_layers if row != "ce" else 0)
    d, vocab = decoder_parts(student).lm_head.weight.shape[1], decoder_parts(student).lm_head.weight.shape[0]
    peak = matmul_peak(tokens, d, vocab)
    result = {"row": row, "model": args.model, "device": device_name("cpu"), "tokens": tokens,
              "seq_len": args.seq_len, "micro_batch": args.micro_batch, "chunk_size": args.chunk,
              "seconds": times, "tokens_per_s": tokens / seconds, "peak_rss_gb": _rss_gb(),
              "step_rss_gb": _rss_gb() - rss_setup,
              "step_gflop": flops / 1e9, "achieved_gflop_s": flops / seconds / 1e9, "matmul_peak_gflop_s": peak,
              "of_peak": flops / seconds / 1e9 / peak}
    if args.profile and row in ("exact", "sampled"):
        result["profile"] = profile_step(student, teacher, ids, config)
    return result


def profile_step(student, teacher, ids, config) -> dict[str, float]:
    """Seconds of one self-distillation step by part (optimizer: AdamW over every parameter, timed apart)."""
    parts_time: dict[str, float] = {}
    zeta2_time = [0.0]
    original = loss_module.zeta2_terms

    def timed_zeta2(*a, **k):
        t0 = time.perf_counter()
        out = original(*a, **k)
        zeta2_time[0] += time.perf_counter() - t0
        return out

    loss_module.zeta2_terms = timed_zeta2
    try:
        t0 = time.perf_counter()
        head = teacher_head(teacher, ids, None)
        parts_time["teacher forward"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        states = forward_states(student, ids, None).pre_norm
        parts_time["student forward (blocks)"] = time.perf_counter() - t0
        p = decoder_parts(student)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            out = loss_module.self_distillation_loss(states, p.norm, p.lm_head, head, config.loss(),
                                                     logit_transform=p.transform)
            loss_seconds = time.perf_counter() - t0
        matmuls = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in MATMUL_OPS) / 1e6
        parts_time["lens matmuls"] = matmuls
        parts_time["lens elementwise (log-softmax, KL, gradient)"] = max(loss_seconds - matmuls - zeta2_time[0], 0.0)
        parts_time["zeta2"] = zeta2_time[0]
        t0 = time.perf_counter()
        out.total.backward()
        parts_time["backward (blocks; the lens gradient is already computed)"] = time.perf_counter() - t0
        optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, fused=fused_adamw(student, "cpu"))
        optimizer.step()  # its first step allocates the state: time the second
        t0 = time.perf_counter()
        optimizer.step()
        parts_time["optimizer (AdamW)"] = time.perf_counter() - t0
        student.zero_grad(set_to_none=True)
    finally:
        loss_module.zeta2_terms = original
    return parts_time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--data", default="fineweb-edu", help="training text: fineweb-edu (default) or a local file")
    p.add_argument("--rows", default="ce,exact,sampled", help=f"comma-separated, from {', '.join(ROWS)}")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--profile", action="store_true", help="also split a self-distillation step by part")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one row in this process
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_row(args.one, args)), flush=True)
        return
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        sys.exit(f"step_profile: unknown row(s) {', '.join(unknown)}: use {', '.join(ROWS)}")
    results = {}
    for row in rows:  # one process per row: each peak resident memory is its own
        done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one", row], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"step_profile: row {row} failed: {done.stderr.strip().splitlines()[-1:]}")
        results[row] = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(results[row]), flush=True)
    floor = results.get("ce")
    for row, r in results.items():
        ratio = f", {r['tokens_per_s'] / floor['tokens_per_s']:.2f}x the CE floor's tokens/s" if floor else ""
        print(f"{row:>9}: {r['tokens_per_s']:.1f} tokens/s, peak {r['peak_rss_gb']:.1f} GB "
              f"(+{r['step_rss_gb']:.1f} GB over the set-up), "
              f"{r['achieved_gflop_s']:.0f} GFLOP/s = {r['of_peak']:.0%} of the {r['matmul_peak_gflop_s']:.0f} "
              f"GFLOP/s matmul peak{ratio}")
        for part, seconds in r.get("profile", {}).items():
            print(f"{'':>11}{part:<58} {seconds:7.2f} s")


if __name__ == "__main__":
    main()
