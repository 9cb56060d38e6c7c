"""The reproduction study's grid: per cell, S (both conventions, bootstrap interval over the measurement
windows) and LAMBADA accuracy at every layer, relative to the pretrained model; collected into one table.

    python -m sdlib.figures.ablation configs/ablations/00-base.yaml     # measure + evaluate one cell (cached)
    python -m sdlib.figures.ablation --collect configs/ablations/*.yaml # -> build/results/ablations.csv
"""

from __future__ import annotations

import sys
from pathlib import Path

from sdlib.config import load_config
from sdlib.profiles import Pair, Profile

EVAL_SUBSET = "cpu-subset"  # 500 LAMBADA passages: the grid compares cells, it does not report the full task
MEASURE = {"text": "wikitext-test", "windows": 64, "window_len": 512}


def cell_profile(config_path: str, eval_subset: str = EVAL_SUBSET) -> tuple[Profile, Pair]:
    pair = Pair(config_path, load_config(config_path))
    return Profile("ablation", [pair], eval_subset, dict(MEASURE)), pair


def cell_row(config_path: str, which: str = "trained", eval_subset: str = EVAL_SUBSET) -> dict:
    """Measure and evaluate one cell's model (cached); -> one row of the grid table."""
    import json

    from sdlib.figures import compute
    from sdlib.metrics import bootstrap_monotonicity

    profile, pair = cell_profile(config_path, eval_subset)
    m = compute.movement(profile, pair, which)
    scores = compute.layer_scores(profile, pair, which, tasks=["lambada_openai"])
    acc = scores[scores.metric == "acc"].sort_values("layer")["value"].tolist()
    c = pair.config
    row = {"cell": Path(config_path).stem if which == "trained" else "pretrained", "model": c.model,
           "alpha": c.alpha, "k": c.k, "lr": c.lr, "kl_direction": c.kl_direction, "last_state": c.last_state,
           "zeta2_form": c.zeta2_form, "tokens": c.total_steps * c.batch_size * c.seq_len if which == "trained" else 0,
           "lambada_final": acc[-1], "lambada_penultimate": acc[-2], "lambada_n": int(scores["n"].iloc[0])}
    for conv in ("normed", "pre_norm"):
        lo, hi = bootstrap_monotonicity(m["per_window_D"][conv])
        row |= {f"S_{conv}": m["S"][conv], f"S_{conv}_lo": lo, f"S_{conv}_hi": hi, f"last_D_{conv}": m["D"][conv][-1]}
    if which == "trained":
        log = [json.loads(line) for line in (c.run_dir() / "log.jsonl").read_text().splitlines()]
        steps = [r for r in log if "loss" in r]
        row |= {"epochs": steps[-1].get("epochs"), "train_seconds": sum(r["seconds"] for r in steps),
                "final_loss": steps[-1]["loss"]}
    return row


def collect(config_paths: list[str], eval_subset: str = EVAL_SUBSET):
    import pandas as pd

    from sdlib.paths import results_dir
    from sdlib.provenance import atomic_path

    rows = [cell_row(config_paths[0], "baseline", eval_subset)] + [cell_row(p, "trained", eval_subset)
                                                                   for p in config_paths]
    table = pd.DataFrame(rows)
    base = table.iloc[0]
    table["lambada_final_vs_pretrained"] = table["lambada_final"] / base["lambada_final"]
    out = results_dir() / "ablations.csv"
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    return table, out


def main(argv: list[str]) -> int:
    from sdlib.errors import SdlibError

    try:
        if argv[:1] == ["--collect"]:
            table, out = collect(argv[1:])
            print(table.to_string(float_format=lambda v: f"{v:.4g}"))
            print(f"written: {out}")
        else:
            for path in argv:
                print(cell_row(path))
    except SdlibError as err:
        print(f"sdlib: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
