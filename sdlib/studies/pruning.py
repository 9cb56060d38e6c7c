"""Early exit and layer deletion measured (the paper's stated future work): quality and greedy-decoding speed of
one model after exiting at every layer and after removing n layers by each rule of ``sdlib.pruning``."""

from __future__ import annotations

from typing import Any

from sdlib.cache import cached_record
from sdlib.evaluation.layers import EvalSettings, evaluate_layers
from sdlib.parts import decoder_parts
from sdlib.provenance import provenance
from sdlib.pruning import STRATEGIES, generation_speed, keep_layers, prune
from sdlib.studies.compare import fingerprint, movement, results_folder
from sdlib.studies.profiles import Pair, Profile
from sdlib.types import Role


def pruning_study(profile: Profile, pair: Pair, role: Role, device: str | None = None) -> dict[str, Any]:
    """Quality and greedy-decoding speed after early exit at every layer and after removing n layers by
    each strategy of ``sdlib.pruning`` (the profile's ``pruning`` settings); cached by weights + settings.

    -> {"rows": [{method, layers_removed, kept, removed, lambada_acc, wikitext_word_ppl, tokens_per_s}], ...}
    """

    cfg = {"lambada_openai": 100, "wikitext": 1, "max_length": 512, "removals": [1, 2, 4], "new_tokens": 32,
           **profile.pruning}
    settings = EvalSettings(subset="pruning", limit={t: cfg[t] for t in ("lambada_openai", "wikitext")},
                            max_length=cfg["max_length"])
    D = movement(profile, pair, role, device).D["normed"]

    def quality(results, column):
        return {"lambada_acc": float(results["lambada_openai"].metrics["acc"][column]),
                "wikitext_word_ppl": float(results["wikitext"].metrics["word_perplexity"][column])}

    def compute():
        model, tok = pair.load(role, device)
        n_layers = decoder_parts(model).num_layers
        removals = [n for n in cfg["removals"] if 0 < n < n_layers]
        speeds = {n_layers: generation_speed(model, tok, new_tokens=cfg["new_tokens"])}
        for n in removals:
            speeds[n_layers - n] = generation_speed(keep_layers(model, range(n_layers - n)), tok,
                                                    new_tokens=cfg["new_tokens"])
        tasks = ["lambada_openai", "wikitext"]
        per_layer = evaluate_layers(model, tok, tasks, settings, progress=False)  # early exit = the lens
        rows = [{"method": "early_exit", "layers_removed": n_layers - 1 - k, "kept": k + 1, "removed": [],
                 **quality(per_layer, k), "tokens_per_s": speeds.get(k + 1)} for k in range(n_layers)]
        for strategy in STRATEGIES:
            for n in removals:
                pruned, removed = prune(model, D, n, strategy)
                rows.append({"method": strategy, "layers_removed": n, "kept": n_layers - n, "removed": removed,
                             **quality(evaluate_layers(pruned, tok, tasks, settings, progress=False, layers=[-1]), 0),
                             "tokens_per_s": speeds[n_layers - n]})
        return {"label": pair.label(role), "role": str(role), "rows": rows, "full_tokens_per_s": speeds[n_layers],
                "settings": cfg, "movement_D": D,
                "provenance": provenance(device=next(model.parameters()).device, limits=cfg)}

    key = {"fingerprint": fingerprint(pair, role, device), **cfg, "D": D}
    return cached_record(results_folder(pair, role, "pruning"), "pruning", key, compute)


def layers_removable(rows: list[dict[str, Any]], method: str, fraction: float = 0.95) -> tuple[int, float | None]:
    """Most layers ``method`` removes while LAMBADA accuracy stays >= ``fraction`` of the full model's, and the
    measured decoding speed-up at that point: -> (n, speed-up)."""
    full = next(r for r in rows if r["method"] == "early_exit" and r["layers_removed"] == 0)
    ok = [r for r in rows if r["method"] == method and r["lambada_acc"] >= fraction * full["lambada_acc"]]
    if not ok:
        return 0, 1.0
    best = max(ok, key=lambda r: r["layers_removed"])
    speed = best["tokens_per_s"]
    return best["layers_removed"], (speed / full["tokens_per_s"]) if speed else None



def summary(studies: list[dict[str, Any]], fraction: float = 0.95) -> dict[str, dict[str, dict[str, Any]]]:
    """Per model and method: how many layers go while LAMBADA stays >= ``fraction`` of the full model's, and the
    measured decoding speed-up there."""
    return {s["label"]: {m: dict(zip(("layers_removable_at_95pct", "speedup"), layers_removable(s["rows"], m, fraction)))
                         for m in ("early_exit", "movement", "last")} for s in studies}
