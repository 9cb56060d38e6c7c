"""Per-layer evaluation: the one-pass evaluator against lm-eval's own per-layer path, the CLI, the data checks."""

import json
import math
import os
import re

import numpy as np
import pytest
import torch

from sdlib import models
from sdlib.errors import SdlibError
from sdlib.evaluation.harness import LayerLM
from sdlib.evaluation.layers import EvalSettings, evaluate_layers
from sdlib.evaluation.tasks import offline_task_dir, task_manager, wikitext_pages
from tests.integration.test_cli import _sdlib

LAMBADA_DOCS, WIKI_DOCS = 4, 2


def _memorized_tiny(n_docs: int):
    """A tiny model trained to recite the first LAMBADA passages, so greedy flags differ across layers."""
    model, tok = models.load("tiny-llama", num_layers=3, hidden_size=64, vocab_size=300)
    path = os.path.join(os.environ["SDLIB_DATA_DIR"], "lambada_openai", "test.jsonl")
    with open(path) as f:
        texts = [json.loads(next(f))["text"] for _ in range(n_docs)]
    enc = [tok(t)["input_ids"] for t in texts]
    ids = torch.full((n_docs, max(map(len, enc))), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, x in enumerate(enc):
        ids[i, : len(x)], mask[i, : len(x)] = torch.tensor(x), 1
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(250):
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok


@pytest.mark.data
def test_one_pass_equals_lm_eval_per_layer():
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import get_task_dict

    model, tok = _memorized_tiny(LAMBADA_DOCS)
    settings = EvalSettings(limit={"lambada_openai": LAMBADA_DOCS, "wikitext": WIKI_DOCS}, max_length=512)
    ours = evaluate_layers(model, tok, ["lambada_openai", "wikitext"], settings, batch_size=3, progress=False)
    lam = ours["lambada_openai"]
    assert lam.loglikelihood.shape == (LAMBADA_DOCS, 3) and ours["wikitext"].loglikelihood.shape == (WIKI_DOCS, 3)
    assert lam.greedy[:, -1].any() and not lam.greedy[:, 0].all(), "the check needs both greedy outcomes"
    tasks = get_task_dict(["lambada_openai", "wikitext"], task_manager())  # built once, scored per layer by lm-eval
    samples = {"lambada_openai": list(range(LAMBADA_DOCS)), "wikitext": list(range(WIKI_DOCS))}
    for layer in (0, 1, 2):
        lm = LayerLM(model, tokenizer=tok, layer=layer, batch_size=2, max_length=512)
        out = evaluate(lm, tasks, samples=samples, bootstrap_iters=0, log_samples=True, verbosity="ERROR")
        for task, result in ours.items():
            for sample in out["samples"][task]:
                row = result.doc_ids.index(sample["doc_id"])
                theirs = sample["resps"][0][0]
                ll = theirs[0] if task == "lambada_openai" else theirs
                # rel 1e-5 with an absolute part: a log-likelihood near 0 differs by the fp32 order of a reduction
                assert result.loglikelihood[row, layer] == pytest.approx(ll, rel=1e-5, abs=1e-6), (task, layer, row)
                if task == "lambada_openai":
                    assert bool(result.greedy[row, layer]) == theirs[1], (layer, row)
            for metric, values in result.metrics.items():
                expected = out["results"][task][f"{metric},none"]
                assert values[layer] == pytest.approx(expected, rel=1e-5, abs=1e-6), (task, metric)


@pytest.mark.data
def test_offline_tasks_are_lm_evals_with_local_data():
    from sdlib.evaluation.tasks import load_tasks

    tasks = load_tasks(["lambada_openai", "wikitext"])
    pages = list(tasks["wikitext"].test_docs())
    assert len(pages) == 62 and pages[0]["page"].startswith(" = Robert Boulter = \n \n Robert Boulter is")
    assert len(list(tasks["lambada_openai"].test_docs())) == 5153
    assert offline_task_dir() is not None
    # the index holds sdlib's tasks' folders only, not lm-eval's ~15,000 tasks (~20 s of every evaluating process)
    assert set(task_manager().all_tasks) == {"lambada", "lambada_openai", "lambada_standard", "wikitext"}


def test_wikitext_pages_follow_the_document_level_rule():
    raw = " = A = \n line a\n = = Sub = = \n more\n\n = B = \n b text\n"
    assert wikitext_pages(raw) == [" = A = \n line a\n = = Sub = = \n more\n", " = B = \n b text\n"]
    assert wikitext_pages("\n = A = \n x") == [" = A = \n x"]  # a blank first page is dropped


@pytest.mark.data
def test_eval_cli_writes_a_tidy_table_and_reuses_its_cache(tmp_path):
    import pandas as pd

    args = ("eval", "tiny-llama", "--limit", "3", "--max-length", "64", "--out", str(tmp_path / "ev"))
    first = _sdlib(*args, env_extra={"HF_DATASETS_CACHE": str(tmp_path / "hf")})  # the local copies built afresh
    assert first.returncode == 0, first.stderr
    # a WikiText page longer than the model's positions is scored in rolling windows, as lm-eval means it to be
    assert "Token indices sequence length" not in first.stderr, "transformers' warning about indexing errors"
    # every evaluation bar shows a total ("evaluate wikitext: 100%| 3/3 [..."), none a bare count ("0req [...")
    assert "evaluate lambada_openai:" in first.stderr and "evaluate wikitext:" in first.stderr
    assert not re.search(r"\d+req \[", first.stderr), "an evaluation bar without a total"
    assert "examples [" not in first.stderr, "datasets' bar without a total (building the local copies)"
    table = pd.read_csv(tmp_path / "ev" / "results.csv")
    assert {"model", "checkpoint", "task", "layer", "metric", "value", "n", "max_length", "limit",
            "lm_eval_version"} <= set(table.columns)
    assert set(table["metric"]) == {"acc", "perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"}
    assert sorted(table["layer"].unique()) == [0, 1, 2, 3] and (table["n"] == 3).all()
    assert all(math.isfinite(v) for v in table["value"])
    caches = sorted((tmp_path / "ev" / "cache").iterdir())
    assert len(caches) == 2 and not [p for p in (tmp_path / "ev").rglob("*.tmp")]
    stamps = [p.stat().st_mtime_ns for p in caches]
    second = _sdlib(*args)
    assert second.returncode == 0 and [p.stat().st_mtime_ns for p in caches] == stamps
    assert pd.read_csv(tmp_path / "ev" / "results.csv").equals(table)
    # one task at a time: each evaluation adds its task's rows and keeps the other's
    one = ("eval", "tiny-llama", "--limit", "3", "--max-length", "64", "--out", str(tmp_path / "one"))
    assert _sdlib(*one, "--tasks", "lambada_openai").returncode == 0
    assert _sdlib(*one, "--tasks", "wikitext").returncode == 0
    merged = pd.read_csv(tmp_path / "one" / "results.csv")
    assert set(merged["task"]) == {"lambada_openai", "wikitext"} and len(merged) == len(table)
    assert set(json.loads((tmp_path / "one" / "results.json").read_text())["tasks"]) == {"lambada_openai", "wikitext"}


@pytest.mark.parametrize("args, message", [
    (("--limit", "0"), "--limit must be at least 1"),
    (("--tasks", "hellaswag"), "unknown task(s) hellaswag"),
    (("--subset", "nope"), "evaluation subset 'nope' not found"),
])
def test_eval_cli_bad_input_is_one_line(args, message, tmp_path):
    done = _sdlib("eval", "tiny-llama", *args, "--out", str(tmp_path / "ev"))
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("content, message", [
    (None, "has no lambada_openai/test.jsonl"),
    (b"", "is empty"),
    (b'{"text": "a b"}\n', "not the expected"),
])
def test_damaged_offline_data_is_named(tmp_path, monkeypatch, content, message):
    data = tmp_path / "data"
    (data / "lambada_openai").mkdir(parents=True)
    if content is not None:
        (data / "lambada_openai" / "test.jsonl").write_bytes(content)
    monkeypatch.setenv("SDLIB_DATA_DIR", str(data))
    with pytest.raises(SdlibError, match=message):
        offline_task_dir()


@pytest.mark.slow
@pytest.mark.data
def test_smollm2_one_pass_equals_lm_eval_on_a_few_passages():
    import lm_eval

    model, tok = models.load("smollm2-135m-instruct")
    settings = EvalSettings(limit={"lambada_openai": 3})
    ours = evaluate_layers(model, tok, ["lambada_openai"], settings, progress=False)["lambada_openai"]
    for layer in (20, 29):
        out = lm_eval.simple_evaluate(model=LayerLM(model, tokenizer=tok, layer=layer), tasks=["lambada_openai"],
                                      task_manager=task_manager(), limit=3, bootstrap_iters=0, log_samples=True,
                                      verbosity="ERROR")
        for sample in out["samples"]["lambada_openai"]:
            ll, greedy = sample["resps"][0][0]
            assert ours.loglikelihood[sample["doc_id"], layer] == pytest.approx(ll, rel=1e-5, abs=1e-6)
            assert bool(ours.greedy[sample["doc_id"], layer]) == greedy
    assert np.isfinite(ours.metrics["perplexity"]).all()


@pytest.mark.data
def test_the_wikitext_bar_has_a_total_that_its_batches_reach():
    from sdlib.evaluation.harness import AllLayersLM
    from sdlib.evaluation.tasks import load_tasks

    model, tok = models.load("tiny-llama", num_layers=2)
    done = []
    lm = AllLayersLM(model, tokenizer=tok, batch_size=4, max_length=64, on_batch=done.append)
    task = load_tasks(["wikitext"])["wikitext"]
    task.build_all_requests(limit=2, rank=0, world_size=1)
    total = lm.rolling_windows(task.instances)
    lm.loglikelihood_rolling(task.instances, disable_tqdm=True)
    assert total > len(task.instances) and sum(done) == total
