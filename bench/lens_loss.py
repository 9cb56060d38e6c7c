"""Time sdlib's loss alone (forward + backward) at a real model's head shape, against an earlier revision of it.

    python bench/lens_loss.py --against HEAD~1                      # Qwen2.5-0.5B's head: d 896, vocab 151,936
    python bench/lens_loss.py --against HEAD~1 --lens-samples 4 --tokens 512

No model is loaded: the states are random [tokens, d] tensors for the model's 24 decoder layers (plus the
embedding output), the final norm an RMSNorm and lm_head an untied [vocab, d] linear with random weights, so the numbers
are the lens's own cost (its matmuls and the element-wise passes over the [chunk, vocab] buffers) and fit next
to a training run in memory. ``--against REV`` loads ``sdlib/loss.py`` as it was at git revision REV into this
process and times both implementations in turn, on the same inputs, alternating, so their ratio is measured
side by side (absolute times on shared cores are indicative only). Prints one JSON line per implementation and
the values and gradients' largest difference between them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from sdlib import loss as current

ROOT = Path(__file__).resolve().parents[1]


def load_revision(rev: str):
    """sdlib/loss.py at git revision ``rev``, imported as a separate module."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:sdlib/loss.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "loss_at_revision.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("loss_at_revision", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def inputs(args):
    g = torch.Generator().manual_seed(0)
    states = [torch.randn(1, args.tokens, args.d, generator=g).requires_grad_() for _ in range(args.layers + 1)]
    norm = nn.RMSNorm(args.d, eps=1e-6)
    head = nn.Linear(args.d, args.vocab, bias=False)
    with torch.no_grad():
        head.weight.normal_(0, 0.05, generator=g)
        teacher = torch.randn(args.tokens, args.d, generator=g)
    return states, norm, head, teacher


def step(module, states, norm, head, teacher, args):
    for t in (*states, head.weight):
        t.grad = None
    parts = module.self_distillation_loss(states, norm, head, module.TeacherHead(teacher, head.weight),
                                          chunk_size=args.chunk, lens_samples=args.lens_samples,
                                          generator=torch.Generator().manual_seed(1))
    parts.total.backward()
    return parts.total.detach(), [t.grad.clone() for t in (head.weight, states[1], states[-1])]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--against", default=None, help="a git revision whose sdlib/loss.py is timed beside this one")
    p.add_argument("--d", type=int, default=896)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--layers", type=int, default=24, help="decoder layers (one lens layer each)")
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--lens-samples", type=int, default=0, help="0: the exact zeta1")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    impls = {"current": current}
    if args.against:
        impls[args.against] = load_revision(args.against)
    data = inputs(args)
    times: dict[str, list[float]] = {name: [] for name in impls}
    results = {}
    for name, module in impls.items():  # warm-up (first-touch page faults, thread pools)
        results[name] = step(module, *data, args)
    for _ in range(args.repeats):
        for name, module in impls.items():
            t0 = time.perf_counter()
            step(module, *data, args)
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        print(json.dumps({"impl": name, "tokens": args.tokens, "vocab": args.vocab, "lens_layers": args.layers,
                          "lens_samples": args.lens_samples, "threads": torch.get_num_threads(),
                          "seconds": [round(t, 3) for t in ts], "tokens_per_s": round(args.tokens / min(ts), 1)}))
    if args.against:
        (v0, g0), (v1, g1) = results["current"], results[args.against]
        print(json.dumps({"speedup": round(min(times[args.against]) / min(times["current"]), 2),
                          "value_diff": abs(float(v0 - v1)),
                          "grad_rel_diff": max(float((a - b).norm() / b.norm()) for a, b in zip(g0, g1))}))


if __name__ == "__main__":
    sys.exit(main())
