"""LayerScores: the per-layer evaluation table read back by task and metric, in layer order."""

import numpy as np
import pandas as pd
import pytest

from sdlib.errors import SdlibError
from sdlib.evaluation.layers import LayerScores


def _table():
    rows = [{"task": "lambada_openai", "metric": "acc", "layer": layer, "value": v, "lo": v - 0.1, "hi": v + 0.1, "n": 4}
            for layer, v in [(2, 0.75), (0, 0.25), (1, 0.5)]]  # not in layer order
    rows += [{"task": "wikitext", "metric": "word_perplexity", "layer": layer, "value": v, "lo": np.nan, "hi": np.nan,
              "n": 2} for layer, v in [(1, 30.0), (0, 90.0), (2, 12.0)]]
    return pd.DataFrame(rows)


GREEDY = {"lambada_openai": np.array([[0, 0, 1], [0, 1, 1], [1, 1, 1], [0, 0, 0]], dtype=bool)}


def test_curves_come_in_layer_order_with_their_intervals():
    s = LayerScores(_table(), GREEDY)
    assert s.curve("lambada_openai", "acc") == [0.25, 0.5, 0.75]
    assert s.curve("lambada_openai", "acc", intervals=True)[2] == pytest.approx((0.75, 0.65, 0.85))
    assert s.curve("wikitext", "word_perplexity") == [90.0, 30.0, 12.0]
    assert s.n("lambada_openai") == 4 and s.n("wikitext") == 2
    assert s.final_correct("lambada_openai").tolist() == [1.0, 1.0, 1.0, 0.0]


def test_a_missing_task_is_named():
    s = LayerScores(_table()[lambda t: t.task == "lambada_openai"], GREEDY)
    with pytest.raises(SdlibError, match="no wikitext word_perplexity in this evaluation"):
        s.curve("wikitext", "word_perplexity")
    with pytest.raises(SdlibError, match="wikitext has no per-document outcomes"):
        s.final_correct("wikitext")
