"""Drawing helpers whose choices could silently hide data."""

import json
from pathlib import Path
from types import SimpleNamespace

import plotly.graph_objects as go

from sdlib.figures.output import save_figure
from sdlib.figures.plots import atlas_figure, fold_split_figure, for_model, lens_figure, lens_rows
from sdlib.studies.atlas import AtlasRecord
from sdlib.studies.fold_split import FoldSplitRecord
from tests.conftest import ROOT


def test_lens_rows_keep_layer_0_and_the_last_layers():
    assert lens_rows(8, 12) == list(range(8))
    rows = lens_rows(30, 12)
    assert len(rows) == 12 and rows == sorted(set(rows))
    assert rows[0] == 0 and rows[-6:] == list(range(24, 30))


def test_lens_figure_shows_the_chosen_layers_with_their_own_tokens():
    L1, n = 30, 3
    grid = SimpleNamespace(label="m", inputs=["a", " b", "c"], targets=[" b", "c", "\n"], last=2,
                           top_tokens=[[f"t{l}-{i}" for i in range(n)] for l in range(L1)],
                           top_prob=[[l / L1] * n for l in range(L1)],
                           movement_last={"normed": [[0.1] * L1] * 2, "pre_norm": [[0.1] * L1] * 2})
    heat = lens_figure([grid]).data[0]
    shown = lens_rows(L1)
    assert [y.removeprefix("⋮ ") for y in heat.y] == [f"layer {l}" for l in shown]
    # a row that follows skipped layers says so; consecutive rows do not
    assert [y.startswith("⋮") for y in heat.y] == [i > 0 and l - shown[i - 1] > 1 for i, l in enumerate(shown)]
    assert any(y.startswith("⋮") for y in heat.y)
    assert heat.text[-1][0].startswith("t29-0") and heat.text[0][2].startswith("t0-2")
    assert heat.z[-1][0] == 29 / L1 and heat.x[1] == "1: ␣b→c"


def _record(model, role, D):
    return SimpleNamespace(model=model, role=role, label=f"{model} ({role})", D={"normed": D, "pre_norm": D},
                           S={"normed": 0.5, "pre_norm": 0.5})


def test_before_and_after_have_their_own_colours_and_the_change_is_drawn():
    from sdlib.figures.plots import PRETRAINED_GREY, model_colors, movement_figure

    before, after = _record("m", "pretrained", [0.5, 0.1, 0.3]), _record("m", "self_distilled", [0.5, 0.12, 0.2])
    fig = movement_figure([before, after])
    lines = [t for t in fig.data if t.type == "scatter"]
    assert lines[0].line.color == PRETRAINED_GREY and lines[1].line.color != PRETRAINED_GREY
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 2 and list(bars[0].y) == [0.0, 0.12 - 0.1, 0.2 - 0.3]
    assert movement_figure([before]).data[0].type == "scatter" and not [t for t in movement_figure([before]).data
                                                                        if t.type == "bar"]
    # several base models: a hue each, the pretrained one a lighter tint; the same series, the same colour
    colors = model_colors([("a", "pretrained", "a0"), ("a", "self_distilled", "a1"), ("b", "pretrained", "b0"),
                           ("b", "self_distilled", "b1")])
    assert len(set(colors.values())) == 4
    assert model_colors([("b", "self_distilled", "b1"), ("a", "self_distilled", "a1")])["b1"] == colors[
        "a1"]  # colours follow the order of the series given (the profile's pairs)
    # two recipes on one base model: the base model once, in grey; each recipe its own hue and its own change bars
    second = SimpleNamespace(model="m", role="self_distilled", label="m (self-distilled: other)",
                             D={"normed": [0.5, 0.2, 0.1], "pre_norm": [0.5, 0.2, 0.1]}, S={"normed": 0.6, "pre_norm": 0.6})
    fig = movement_figure([before, after, second])
    lines = [t for t in fig.data if t.type == "scatter"]
    assert [t.line.color == PRETRAINED_GREY for t in lines[:3]] == [True, False, False]
    assert lines[1].line.color != lines[2].line.color
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 4 and list(bars[1].y) == [0.0, 0.2 - 0.1, 0.1 - 0.3]


def test_the_late_layer_panel_leaves_the_final_layer_out():
    import pandas as pd

    from sdlib.figures.plots import layer_metric_figure

    rows = [{"task": "lambada_openai", "metric": "acc", "layer": l, "value": v, "lo": None, "hi": None, "n": 5,
             "max_length": 64, "label": f"m ({role})", "role": role, "base_model": "m"}
            for role in ("pretrained", "self_distilled") for l, v in enumerate([0, 0, 0, 0, 0.01, 0.05, 0.3])]
    fig = layer_metric_figure(pd.DataFrame(rows), "lambada_openai", "acc", zoom=True)
    zoomed = [t for t in fig.data if t.xaxis == "x2"]
    assert zoomed and all(list(t.x) == [4, 5] for t in zoomed)  # layers 2L/3 .. L-1 of 7
    assert len(layer_metric_figure(pd.DataFrame(rows), "lambada_openai", "acc").data) == 2


def test_a_partial_utf8_token_shows_its_bytes():
    from sdlib.studies.lens_grid import _show_bytes

    assert _show_bytes("ok €".encode()) == "ok €"
    assert _show_bytes(b"a\xe2\x80") == "a⟨e2 80⟩" and _show_bytes(b"\x91") == "⟨91⟩"
    assert _show_bytes(b"\\x41") == "\\x41"  # a literal backslash stays text


def test_a_shallow_model_gets_no_late_layer_panel():
    import pandas as pd

    from sdlib.figures.plots import layer_metric_figure

    rows = [{"task": "t", "metric": "acc", "layer": l, "value": 0.1 * l, "lo": None, "hi": None, "n": 5,
             "max_length": 64, "label": "m", "role": "pretrained", "base_model": "m"} for l in range(4)]
    assert all(t.xaxis == "x" for t in layer_metric_figure(pd.DataFrame(rows), "t", "acc", zoom=True).data)


def test_a_long_table_entry_wraps_to_its_column_instead_of_widening_it():
    import pandas as pd

    from sdlib.figures.plots import table_figure

    header = "a-model-name-of-thirty-four-chars (pretrained)"
    setting = "wikitext-test, 64 x 512 tokens spread over the text"
    short = table_figure(pd.DataFrame({"metric": ["S"], header: ["0.685 [0.683, 0.687]"]}))
    wrapped = table_figure(pd.DataFrame({"metric": ["S", "S measured on"], header: ["0.685 [0.683, 0.687]", setting]}))
    assert wrapped.data[0].columnwidth[1] == short.data[0].columnwidth[1]  # the model column: as wide as its header
    entry = wrapped.data[0].cells.values[1][1]
    assert entry.replace("<br>", " ") == setting and entry.count("<br>") == 1
    assert wrapped.layout.height > short.layout.height + 26  # the extra line has room


def _pruning(label, role, with_intervals=True):
    from sdlib.studies.early_exit import PrunedModel, PruningStudy

    def row(method, removed, acc):
        lo, hi = (acc - 0.05, acc + 0.04) if with_intervals else (None, None)
        return PrunedModel(method, removed, 4 - removed, [], acc, 30.0 + removed, 10.0 - removed, lo, hi)

    rows = [row("early_exit", n, 0.5 - 0.1 * n) for n in range(4)]
    rows += [row(m, n, 0.45 - 0.1 * n) for m in ("movement", "last") for n in (1, 2)]
    return PruningStudy(label=label, role=role, rows=rows, full_tokens_per_s=10.0,
                        settings={"lambada_openai": 100, "wikitext": 1, "max_length": 512}, movement_D=[0.1] * 4,
                        model="m")


def test_the_pruning_figure_colours_models_and_shows_the_intervals_and_the_setting():
    from sdlib.figures.plots import PRETRAINED_GREY, pruning_figure

    studies = [_pruning("m (pretrained)", "pretrained"), _pruning("m (recipe A)", "self_distilled"),
               _pruning("m (recipe B)", "self_distilled")]
    fig = pruning_figure(studies)
    colour = {}
    for trace in fig.data:
        colour.setdefault(trace.legendgroup.split(": ")[0], set()).add(trace.line.color)
    assert all(len(c) == 1 for c in colour.values()), "every trace of one model has that model's colour"
    assert colour["m (pretrained)"] == {PRETRAINED_GREY} and len(set.union(*colour.values())) == 3
    lambada = [t for t in fig.data if t.xaxis == "x"]
    assert len(lambada) == 9 and all(t.error_y.array is not None for t in lambada)
    early = next(t for t in lambada if t.name == "m (recipe A): early exit (logit lens)")
    assert all(abs(a - 0.04) < 1e-9 for a in early.error_y.array)
    assert "LAMBADA first 100 passages" in fig.layout.title.text and "WikiText 1 page," in fig.layout.title.text
    # a record made before intervals were kept still draws, without bars
    old = pruning_figure([_pruning("m (pretrained)", "pretrained", with_intervals=False)])
    assert old.data[0].error_y.array is None and "interval" not in old.layout.title.text
    assert "LAMBADA first 100 passages (95% intervals)" in fig.layout.title.text


def test_a_figure_is_rewritten_when_its_drawing_changes_and_kept_when_nothing_but_its_stamp_would(tmp_path):
    def draw(title):
        return go.Figure(go.Scatter(x=[0, 1], y=[0.5, 0.25]), layout={"title": title})

    numbers = {"S": 0.5}
    paths = save_figure(draw("one"), "f", numbers, tmp_path, png=False)
    before = {k: p.read_bytes() for k, p in paths.items()}
    stamp = json.loads(paths["json"].read_text())["provenance"] | {"git_commit": "a" * 40, "created": "2026-01-01"}
    save_figure(draw("one"), "f", numbers, tmp_path, provenance=stamp, png=False)
    assert {k: p.read_bytes() for k, p in paths.items()} == before  # the same drawing of the same numbers
    save_figure(draw("two"), "f", numbers, tmp_path, provenance=stamp, png=False)
    assert "two" in paths["html"].read_text() and '"git_commit": "' + "a" * 40 in paths["json"].read_text()


def test_the_atlas_shows_lambada_with_its_intervals_and_says_what_it_was_evaluated_on():
    saved = json.loads((ROOT / "figures" / "atlas.json").read_text())
    records = [AtlasRecord.from_dict(r) for r in saved["records"]]
    fig = atlas_figure(records)
    titles = [a.text for a in fig.layout.annotations]
    e = records[0].evaluation
    assert f"LAMBADA accuracy per layer [95%], {e.lambada_n} passages" in titles
    assert f"WikiText word perplexity per layer, {e.wikitext_n} page(s)" in titles
    lambada = [t for t in fig.data if t.xaxis == "x4" and t.name == records[0].model]
    assert len(lambada) == 1
    bars = lambada[0].error_y
    assert list(bars.array) == [h - a for h, a in zip(e.lambada_hi, e.lambada_acc)]
    assert list(bars.arrayminus) == [a - lo for a, lo in zip(e.lambada_acc, e.lambada_lo)]
    assert all(lo <= a <= h for a, lo, h in zip(e.lambada_acc, e.lambada_lo, e.lambada_hi))


def test_a_run_saved_from_another_clone_keeps_its_name_and_colour_in_the_fold_split():
    saved = json.loads((ROOT / "figures" / "jump" / "fold_split.json").read_text())
    records = [FoldSplitRecord.from_dict(r) for r in saved["records"]]
    runs = [r.model for r in records if "/" in r.model]
    assert runs, "the jump profile's fold-split has trained runs"
    here = {f"/elsewhere/build/runs/{Path(m).name}": (f"recipe {i}", f"#00000{i}") for i, m in enumerate(runs)}
    fig = fold_split_figure(records, labels={k: v[0] for k, v in here.items()}, colors={k: v[1] for k, v in here.items()})
    shown = {t.legendgroup: t.line.color for t in fig.data if t.type == "scatter"}
    assert {f"recipe {i}": f"#00000{i}" for i in range(len(runs))}.items() <= shown.items()
    assert not any("/" in g for g in shown)
    assert for_model({"/a/x": 1, "/b/x": 2}, "/c/x") is None  # two folders of that name: no guess
