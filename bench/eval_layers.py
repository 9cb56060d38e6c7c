"""Time the one-pass per-layer evaluator against lm-eval run once per layer, on the same documents.

    python bench/eval_layers.py --model tiny-llama --num-layers 8            # all layers both ways
    python bench/eval_layers.py --model smollm2-135m-instruct --lambada 50 --wikitext 0 --layers-measured 3

With ``--layers-measured K`` the per-layer path runs only K layers (spread over the depth) and its total is
extrapolated to all L + 1 layers; the output says so. Needs SDLIB_DATA_DIR offline (or the hub online).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    import lm_eval

    from sdlib import models
    from sdlib.evaluation.harness import LayerLM
    from sdlib.evaluation.layers import EvalSettings, evaluate_layers
    from sdlib.evaluation.tasks import task_manager
    from sdlib.provenance import device_name

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--num-layers", type=int, default=8, help="decoder layers of a tiny model")
    p.add_argument("--hidden-size", type=int, default=64, help="hidden size of a tiny model")
    p.add_argument("--lambada", type=int, default=50, help="LAMBADA passages (0 = skip)")
    p.add_argument("--wikitext", type=int, default=2, help="WikiText pages (0 = skip)")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--layers-measured", type=int, default=0, help="per-layer path on K layers, extrapolated (0 = all)")
    args = p.parse_args()

    options = {"num_layers": args.num_layers, "hidden_size": args.hidden_size} if args.model.startswith("tiny") else {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = models.load(args.model, device=device, **options)
    limits = {t: n for t, n in (("lambada_openai", args.lambada), ("wikitext", args.wikitext)) if n > 0}
    tasks = list(limits)
    settings = EvalSettings(subset="bench", limit=limits, max_length=args.max_length)

    evaluate_layers(model, tok, tasks, EvalSettings(limit={t: 1 for t in tasks}, max_length=args.max_length),
                    progress=False)  # warm-up: task loading, dataset cache, first-call overheads
    t0 = time.perf_counter()
    ours = evaluate_layers(model, tok, tasks, settings, batch_size=args.batch_size, progress=False)
    one_pass = time.perf_counter() - t0

    n_layers = next(iter(ours.values())).loglikelihood.shape[1]
    layers = list(range(n_layers))
    if 0 < args.layers_measured < n_layers:
        layers = sorted({int(round(x)) for x in np.linspace(0, n_layers - 1, args.layers_measured)})
    t0 = time.perf_counter()
    worst = 0.0
    for layer in layers:
        lm = LayerLM(model, tokenizer=tok, layer=layer, batch_size=args.batch_size, max_length=args.max_length)
        out = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=task_manager(),
                                      samples={t: list(range(n)) for t, n in limits.items()},
                                      bootstrap_iters=0, log_samples=True, verbosity="ERROR")
        for task, result in ours.items():
            for sample in out["samples"][task]:
                theirs = sample["resps"][0][0]
                ll = theirs[0] if isinstance(theirs, (tuple, list)) else theirs
                mine = result.loglikelihood[result.doc_ids.index(sample["doc_id"]), layer]
                worst = max(worst, abs(mine - ll) / max(abs(ll), 1e-12))
    per_layer = (time.perf_counter() - t0) * n_layers / len(layers)
    extrapolated = len(layers) < n_layers
    print(f"device: {device_name(device)}; model {args.model} ({n_layers} decoder layers); "
          f"documents {limits}; max_length {args.max_length}; batch {args.batch_size}")
    print(f"one pass, all {n_layers} layers:     {one_pass:8.1f} s")
    print(f"lm-eval once per layer ({n_layers} runs): {per_layer:8.1f} s"
          + (f"  (extrapolated from {len(layers)} layers: {layers})" if extrapolated else ""))
    print(f"speed-up: {per_layer / one_pass:.1f}x (target (L+1)/2 = {n_layers / 2:.1f}x); "
          f"largest relative log-likelihood difference {worst:.1e}")
    print(json.dumps({"device": device_name(device), "model": args.model, "layers": n_layers, "documents": limits,
                      "max_length": args.max_length, "batch_size": args.batch_size, "one_pass_s": one_pass,
                      "per_layer_s": per_layer, "extrapolated_from": layers if extrapolated else None,
                      "speedup": per_layer / one_pass, "max_rel_loglik_diff": worst}))


if __name__ == "__main__":
    main()
