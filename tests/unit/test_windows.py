"""Where a measurement reads: windows spread evenly over the whole text, each tagged with its document, and
intervals that resample documents."""

import pytest
import torch

from sdlib.data import TextWindows, document_starts, spread_windows, text_windows
from sdlib.errors import SdlibError
from sdlib.models import byte_tokenizer
from sdlib.stats import bootstrap_monotonicity, by_document, paired_S_difference

ARTICLES = "".join(f" = Title {i} = \n \n" + f" body of article {i} . " * (5 + i) + "\n = = A section = = \n more .\n"
                   for i in range(6))


def test_documents_are_articles_not_sections():
    starts = document_starts(ARTICLES)
    assert len(starts) == 6 and starts[0] == 0
    assert all(ARTICLES[s:].startswith(" = Title") for s in starts)
    assert document_starts("no titles here") == [0]


def test_spread_windows_cover_the_text_without_overlap():
    tok = byte_tokenizer()
    ids = tok(ARTICLES, verbose=False)["input_ids"]
    windows, docs = spread_windows(tok, ARTICLES, 5, 40)
    assert windows.shape == (5, 40)
    starts = [next(s for s in range(len(ids) - 39) if ids[s:s + 40] == w.tolist()) for w in windows]
    assert starts[0] == 0 and starts[-1] == len(ids) - 40  # first at the start, last at the end
    assert all(b - a >= 40 for a, b in zip(starts, starts[1:]))  # never overlapping
    assert docs[0] == 0 and docs[-1] == 5 and docs == sorted(docs)
    first = text_windows(tok, ARTICLES, 5, 40)
    assert torch.equal(first[0], windows[0]) and not torch.equal(first[1], windows[1])
    assert spread_windows(tok, ARTICLES, 10**6, 40)[0].shape[0] == len(ids) // 40  # no more than fit


def test_settings_name_the_placement_and_refuse_others():
    assert TextWindows().placement == "spread" and "spread over the text" in TextWindows().describe()
    assert "first tokens" in TextWindows(placement="first").describe()
    with pytest.raises(SdlibError, match="window placement"):
        TextWindows(placement="middle")


def test_document_bootstrap_equals_a_plain_cluster_bootstrap():
    g = torch.Generator().manual_seed(0)
    curves = torch.rand(9, 5, generator=g, dtype=torch.float64)
    docs = [0, 0, 0, 1, 2, 2, 3, 3, 3]
    means, counts = by_document([curves], docs)
    assert counts.tolist() == [3, 1, 2, 3] and torch.allclose(means[1], curves[3])
    lo, hi = bootstrap_monotonicity(curves, n_boot=500, documents=docs)
    # independent: draw documents, pool their windows, S of the pooled mean curve
    from sdlib.metrics import monotonicity

    draw = torch.randint(0, 4, (500, 4), generator=torch.Generator().manual_seed(0))
    groups = [[i for i, d in enumerate(docs) if d == k] for k in range(4)]
    stats = torch.tensor([monotonicity(curves[[i for k in row for i in groups[k]]].mean(0)) for row in draw.tolist()],
                         dtype=torch.float64)
    want = torch.quantile(stats, torch.tensor([0.025, 0.975], dtype=torch.float64))
    assert (lo, hi) == pytest.approx(tuple(want.tolist()), abs=1e-12)
    # one window per document: the same as resampling windows
    assert bootstrap_monotonicity(curves, n_boot=300, documents=list(range(9))) == bootstrap_monotonicity(curves,
                                                                                                        n_boot=300)
    d, lo, hi = paired_S_difference(curves, curves, documents=docs)
    assert d == lo == hi == 0.0


def test_windows_of_one_document_are_resampled_as_windows():
    curves = torch.rand(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert bootstrap_monotonicity(curves, n_boot=200, documents=[0] * 6) == bootstrap_monotonicity(curves, n_boot=200)
