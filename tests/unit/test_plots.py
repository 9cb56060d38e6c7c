"""Drawing helpers whose choices could silently hide data."""

from types import SimpleNamespace

from sdlib.figures.plots import lens_figure, lens_rows


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
    assert list(heat.y) == [f"layer {l}" for l in lens_rows(L1)]
    assert heat.text[-1][0].startswith("t29-0") and heat.text[0][2].startswith("t0-2")
    assert heat.z[-1][0] == 29 / L1 and heat.x[1] == "1: ␣b→c"
