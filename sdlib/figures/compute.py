"""The numbers behind each figure, computed from a profile's baseline/self-distilled pairs and cached by
model content and settings (``sdlib.cache``). Plotting lives in ``sdlib.figures.plots``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sdlib.profiles import WHICH, Pair, Profile, Which

# Paper, Fig. 7's sentence.
FIG7_SENTENCE = ("The curious cat climbed up the tall tree, carefully balancing on each thin branch, until it "
                 "suddenly noticed a small bird sitting quietly at the top.")

# The paper's reported numbers (Shibata et al.), for the summary table; None where it gives none.
PAPER = {
    "Llama-3.2-1B": {"S_before": 0.56, "S_after": 0.90, "last_D_before": 0.27, "last_D_after": 0.058,
                     "ratio_before": 4.14, "ratio_after": 1.69, "lambada_drop_before": 0.38,
                     "lambada_drop_after": 0.09},
    "Llama-3.2-3B": {"S_before": 0.66, "S_after": 0.89},
}


def fingerprint(pair: Pair, which: Which, device: str | None = None) -> str:
    from sdlib.cache import model_fingerprint

    return model_fingerprint(*pair.load(which, device))


def _folder(pair: Pair, which: Which, kind: str):
    from sdlib.paths import results_dir, slug

    if which == "trained":
        name = pair.source(which)
    else:  # a plain model name shares its folder (and caches) with `python -m sdlib eval|measure NAME`
        name = pair.model if not pair.config.model_options else f"{pair.name}-baseline"
    return results_dir() / slug(name) / kind


def movement(profile: Profile, pair: Pair, which: Which, device: str | None = None) -> dict[str, Any]:
    """D_l per layer and S in both conventions (``sdlib.measure``), on the profile's measurement text."""
    from sdlib.cache import cached_record
    from sdlib.measure import measure_text
    from sdlib.provenance import provenance

    settings = {"text": "wikitext-test", "windows": 64, "window_len": 512, **profile.measure}

    def compute():
        model, tok = pair.load(which, device)
        m = measure_text(model, tok, settings["text"], settings["windows"], settings["window_len"], progress=True)
        return {"label": pair.label(which), "source": pair.source(which), **m.to_dict(),
                "provenance": provenance(device=next(model.parameters()).device, data=m.info.get("data"),
                                         limits=settings)}

    key = {"fingerprint": fingerprint(pair, which, device), **settings}
    return cached_record(_folder(pair, which, "measure"), "movement", key, compute)


def layer_scores(profile: Profile, pair: Pair, which: Which, tasks=("lambada_openai", "wikitext"),
                 device: str | None = None):
    """The per-layer evaluation table (``sdlib.evaluation``) on the profile's subset, with a ``which`` column."""
    from sdlib.evaluation.layers import evaluate_cached, load_subset

    model, tok = pair.load(which, device)
    settings = load_subset(profile.eval_subset, str(next(model.parameters()).device))
    table, _ = evaluate_cached(pair.source(which), list(tasks), settings, loaded=(model, tok),
                               out_dir=_folder(pair, which, "eval"), device=str(next(model.parameters()).device))
    return table.assign(which=which, label=pair.label(which))


def layer_scores_both(profile: Profile, pair: Pair, **kw):
    import pandas as pd

    return pd.concat([layer_scores(profile, pair, which, **kw) for which in WHICH], ignore_index=True)


@torch.no_grad()
def pca_trajectories(pair: Pair, text: str = FIG7_SENTENCE, convention: str = "normed", n_components: int = 3,
                     device: str | None = None):
    """Every token's states h_{-1}..h_L of ``text`` in both models, projected on one PCA fitted to all of them.

    -> (DataFrame: which, label, token_index, token, layer, pc1..pcK; explained variance ratios [K]).
    """
    import pandas as pd
    from sklearn.decomposition import PCA

    from sdlib.states import hidden_states

    per_model = {}
    for which in WHICH:
        model, tok = pair.load(which, device)
        ids = tok(text, return_tensors="pt")["input_ids"].to(next(model.parameters()).device)
        states = hidden_states(model, ids, last_state=convention)
        per_model[which] = (torch.stack([s[0] for s in states]).float().cpu().numpy(),  # [L + 2, T, d]
                            [tok.decode([i]) for i in ids[0].tolist()])
    stacked = np.concatenate([s.reshape(-1, s.shape[-1]) for s, _ in per_model.values()])
    pca = PCA(n_components=n_components, random_state=0).fit(stacked)
    rows = []
    for which, (s, tokens) in per_model.items():
        proj = pca.transform(s.reshape(-1, s.shape[-1])).reshape(s.shape[0], s.shape[1], n_components)
        for layer in range(s.shape[0]):
            for t, token in enumerate(tokens):
                rows.append({"which": which, "label": pair.label(which), "token_index": t, "token": token,
                             "layer": layer - 1, **{f"pc{i + 1}": float(proj[layer, t, i]) for i in range(n_components)}})
    return pd.DataFrame(rows), pca.explained_variance_ratio_


def lens_grid(pair: Pair, which: Which, text: str = FIG7_SENTENCE, n_positions: int = 8, n_last: int = 3,
              device: str | None = None) -> dict[str, Any]:
    """``lens_grid_of`` for one model of a pair."""
    return lens_grid_of(*pair.load(which, device), text, pair.label(which), n_positions, n_last)


@torch.no_grad()
def lens_grid_of(model, tok, text: str = FIG7_SENTENCE, label: str = "", n_positions: int = 8, n_last: int = 3
                 ) -> dict[str, Any]:
    """Top-1 lens token and probability at every layer for the positions predicting the last ``n_positions``
    tokens, and the movement D_l (both conventions) of the positions predicting the last ``n_last``."""
    from sdlib.lens import lens_top1
    from sdlib.metrics import token_movement
    from sdlib.states import forward_states
    from sdlib.types import LAST_STATES

    ids = tok(text, return_tensors="pt")["input_ids"].to(next(model.parameters()).device)
    T = ids.shape[1]
    if T < 2:
        from sdlib.errors import SdlibError

        raise SdlibError(f"the text has {T} token(s): at least two are needed for the lens grid")
    n_positions = min(n_positions, T - 1)
    positions = torch.arange(T - 1 - n_positions, T - 1, device=ids.device)  # position p predicts token p + 1
    states = forward_states(model, ids)
    top_ids, top_p = lens_top1(model, states.normed, positions)
    tokens = [tok.decode([i]) for i in ids[0].tolist()]
    movement = {c: token_movement(states[c])[:, 0, positions[-n_last:]].double().cpu().numpy().T.tolist()
                for c in LAST_STATES}
    return {"label": label, "inputs": [tokens[p] for p in positions.tolist()],
            "targets": [tokens[p + 1] for p in positions.tolist()], "last": n_last,
            "top_tokens": [[tok.decode([int(i)]) for i in row] for row in top_ids.cpu().tolist()],
            "top_prob": top_p.cpu().numpy().tolist(), "movement_last": movement}


def summary(profile: Profile, device: str | None = None):
    """One row per model and state: S (both conventions), last-layer D and its ratio, LAMBADA final vs
    penultimate accuracy and the relative drop (final - penultimate) / final, final-layer WikiText word
    perplexity; the paper's beside."""
    import pandas as pd

    rows = []
    for pair in profile.pairs:
        scores = layer_scores_both(profile, pair, device=device)
        for which in WHICH:
            m = movement(profile, pair, which, device)
            s = scores[scores["which"] == which]
            acc = s[(s.task == "lambada_openai") & (s.metric == "acc")].sort_values("layer")["value"].to_numpy()
            ppl = s[(s.task == "wikitext") & (s.metric == "word_perplexity")].sort_values("layer")["value"].to_numpy()
            rows.append({"model": pair.model, "state": "pretrained" if which == "baseline" else "self-distilled",
                         "S_normed": m["S"]["normed"], "S_pre_norm": m["S"]["pre_norm"],
                         "last_D_normed": m["D"]["normed"][-1], "last_D_pre_norm": m["D"]["pre_norm"][-1],
                         "ratio_normed": m["last_layer_ratio"]["normed"],
                         "ratio_pre_norm": m["last_layer_ratio"]["pre_norm"],
                         "lambada_final": acc[-1], "lambada_penultimate": acc[-2],
                         # the paper's "drop": how much lower the penultimate layer is, relative to the final
                         "lambada_drop": (acc[-1] - acc[-2]) / acc[-1] if acc[-1] > 0 else float("nan"),
                         "wikitext_word_ppl_final": ppl[-1], "source": "sdlib (measured)"})
    for model, p in PAPER.items():  # the paper does not say which last state; its numbers get their own columns
        for state, suffix in (("pretrained", "before"), ("self-distilled", "after")):
            rows.append({"model": model, "state": state, "S_paper": p.get(f"S_{suffix}"),
                         "last_D_paper": p.get(f"last_D_{suffix}"), "ratio_paper": p.get(f"ratio_{suffix}"),
                         "lambada_drop": p.get(f"lambada_drop_{suffix}"), "source": "paper (reported)"})
    return pd.DataFrame(rows)


def pruning_study(profile: Profile, pair: Pair, which: Which, device: str | None = None) -> dict[str, Any]:
    """Quality and greedy-decoding speed after early exit at every layer and after removing n layers by
    each strategy of ``sdlib.pruning`` (the profile's ``pruning`` settings); cached by weights + settings.

    -> {"rows": [{method, layers_removed, kept, removed, lambada_acc, wikitext_word_ppl, tokens_per_s}], ...}
    """
    from sdlib.cache import cached_record
    from sdlib.evaluation.layers import EvalSettings, evaluate_layers
    from sdlib.models import decoder_parts
    from sdlib.provenance import provenance
    from sdlib.pruning import STRATEGIES, generation_speed, keep_layers, prune

    cfg = {"lambada_openai": 100, "wikitext": 1, "max_length": 512, "removals": [1, 2, 4], "new_tokens": 32,
           **profile.pruning}
    settings = EvalSettings(subset="pruning", limit={t: cfg[t] for t in ("lambada_openai", "wikitext")},
                            max_length=cfg["max_length"])
    D = movement(profile, pair, which, device)["D"]["normed"]

    def quality(results, column):
        return {"lambada_acc": float(results["lambada_openai"].metrics["acc"][column]),
                "wikitext_word_ppl": float(results["wikitext"].metrics["word_perplexity"][column])}

    def compute():
        model, tok = pair.load(which, device)
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
        return {"label": pair.label(which), "rows": rows, "full_tokens_per_s": speeds[n_layers],
                "settings": cfg, "movement_D": D,
                "provenance": provenance(device=next(model.parameters()).device, limits=cfg)}

    key = {"fingerprint": fingerprint(pair, which, device), **cfg, "D": D}
    return cached_record(_folder(pair, which, "pruning"), "pruning", key, compute)


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

