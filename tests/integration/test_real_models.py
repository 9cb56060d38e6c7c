"""Opt-in (SDLIB_SLOW=1): the built-in real models, offline, fp32 on the CPU.

For each: ``sdlib measure`` agrees with an independent computation (plain transformers, a hook of the test's
own, numpy cosines and the paper's formula for S); ``sdlib eval`` agrees with lm-eval's own HF model on a few
LAMBADA passages at the final layer; and the measured S are pinned (regression numbers: a change in loading,
dequantization or measurement shows up here).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, hang_guard

REAL = ["smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct"]
# S on the first 4 windows of 256 WikiText-2 test tokens (fp32, CPU), measured with sdlib at the commit that
# added this test; numbers of dequantized 4-5 bit GGUFs, not of the hub's bf16 releases
GOLDEN_S = {
    "smollm2-135m-instruct": {"normed": 0.48122789968161317, "pre_norm": 0.7264907168079526},
    "gemma3-270m": {"normed": 0.5110140252921728, "pre_norm": 0.6936666417767731},
    "qwen2.5-coder-0.5b-instruct": {"normed": 0.6761676476795249, "pre_norm": 0.9142659275743731},
}
# final-layer LAMBADA accuracy on the first 50 passages (lm-eval's lambada_openai scoring)
GOLDEN_LAMBADA_50 = {"smollm2-135m-instruct": 0.30, "gemma3-270m": 0.40, "qwen2.5-coder-0.5b-instruct": 0.34}

pytestmark = [pytest.mark.slow, pytest.mark.data]


def _sdlib(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "sdlib", *args], capture_output=True, text=True, env=env,
                          timeout=hang_guard(3600))
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _independent_S(D):
    """Definition 2 of the paper, written out."""
    rises = sum(max(0.0, D[l] - D[l - 1]) for l in range(1, len(D)))
    total = sum(abs(D[l] - D[l - 1]) for l in range(1, len(D)))
    return 1.0 if total == 0 else 1.0 - rises / total


@pytest.mark.parametrize("name", REAL)
def test_measure_agrees_with_an_independent_computation(name, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sdlib.packaged import model_dir

    out = tmp_path / "m.json"
    _sdlib("measure", name, "--windows", "4", "--window-len", "256", "--out", str(out))
    record = json.loads(out.read_text())

    folder = model_dir(name)  # the dequantized copy; loaded here with plain transformers
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    text = open(os.path.join(os.environ["SDLIB_DATA_DIR"], "wikitext-2-raw-v1", "wiki.test.raw"), encoding="utf-8").read()
    ids = torch.tensor(tok(text)["input_ids"][: 4 * 256]).view(4, 256)
    raw = {}
    def keep(module, args, output):
        raw["x"] = output[0] if isinstance(output, tuple) else output

    handle = model.model.layers[-1].register_forward_hook(keep)
    with torch.no_grad():
        hs = [h.double().numpy() for h in model(ids, output_hidden_states=True).hidden_states]
    handle.remove()

    def D_between(a, b):
        cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        return float(np.mean(1 - (1 + cos) / 2))

    normed = [D_between(a, b) for a, b in zip(hs[:-1], hs[1:])]
    pre_norm = normed[:-1] + [D_between(hs[-2], raw["x"].double().numpy())]
    for convention, D in (("normed", normed), ("pre_norm", pre_norm)):
        assert record["D"][convention] == pytest.approx(D, abs=2e-5)
        assert record["S"][convention] == pytest.approx(_independent_S(D), abs=1e-4)
        assert record["S"][convention] == pytest.approx(GOLDEN_S[name][convention], abs=1e-6)
    assert record["n_tokens"] == 1024 and len(record["D"]["normed"]) == model.config.num_hidden_layers  # D_0 .. D_L


@pytest.mark.parametrize("name", REAL[1:])
def test_eval_agrees_with_lm_eval_at_the_final_layer(name, tmp_path):
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from sdlib.evaluation.tasks import task_manager
    from sdlib.models import load

    _sdlib("eval", name, "--tasks", "lambada_openai", "--limit", "12", "--out", str(tmp_path / "ev"))
    rows = json.loads((tmp_path / "ev" / "results.json").read_text())["tasks"]["lambada_openai"]["rows"]
    ours = {(r["layer"], r["metric"]): r["value"] for r in rows}
    n_layers = 1 + max(layer for layer, _ in ours)
    model, tok = load(name)
    out = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tok, batch_size=4), tasks=["lambada_openai"],
                                  task_manager=task_manager(), limit=12, bootstrap_iters=0, verbosity="ERROR")
    theirs = out["results"]["lambada_openai"]
    assert ours[(n_layers - 1, "acc")] == pytest.approx(theirs["acc,none"], abs=1e-9)
    assert ours[(n_layers - 1, "perplexity")] == pytest.approx(theirs["perplexity,none"], rel=1e-4)


@pytest.mark.parametrize("name", REAL)
def test_final_layer_lambada_on_50_passages_is_pinned(name, tmp_path):
    _sdlib("eval", name, "--tasks", "lambada_openai", "--limit", "50", "--out", str(tmp_path / "ev"))
    rows = json.loads((tmp_path / "ev" / "results.json").read_text())["tasks"]["lambada_openai"]["rows"]
    final = max(r["layer"] for r in rows)
    acc = next(r["value"] for r in rows if r["layer"] == final and r["metric"] == "acc")
    assert acc == pytest.approx(GOLDEN_LAMBADA_50[name], abs=1e-9) and rows[0]["n"] == 50
