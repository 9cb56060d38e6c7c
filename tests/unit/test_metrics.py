import math

import numpy as np
import pytest
import torch

from sdlib.errors import SdlibError
from sdlib.metrics import last_layer_ratio, layer_movement, monotonicity, movement, token_movement


def test_movement_range_and_extremes():
    x = torch.randn(50, 16)
    y = torch.randn(50, 16)
    d = movement(x, y)
    assert ((d >= 0) & (d <= 1)).all()
    assert torch.allclose(movement(x, x), torch.zeros(50), atol=1e-6)
    assert torch.allclose(movement(x, -x), torch.ones(50), atol=1e-6)
    assert torch.allclose(movement(x, 3.5 * x), torch.zeros(50), atol=1e-6)  # scale invariant
    orth = movement(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]))
    assert orth.item() == pytest.approx(0.5)


def test_movement_matches_numpy_reference():
    x, y = np.random.default_rng(0).normal(size=(2, 20, 8))
    cos = (x * y).sum(-1) / np.linalg.norm(x, axis=-1) / np.linalg.norm(y, axis=-1)
    expected = 1 - (1 + cos) / 2
    got = movement(torch.tensor(x), torch.tensor(y)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_layer_movement_indexing_and_mask():
    torch.manual_seed(1)
    states = [torch.randn(2, 5, 8) for _ in range(4)]  # h_-1, h_0, h_1, h_2 -> D_0..D_2
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    D = layer_movement(states, mask)
    assert D.shape == (3,)
    per_token = token_movement(states)
    assert per_token.shape == (3, 2, 5)
    for l in range(3):  # D_l is the step h_{l-1} -> h_l, averaged over the 8 real tokens
        expected = torch.cat([movement(states[l][0, :3], states[l + 1][0, :3]),
                              movement(states[l][1], states[l + 1][1])]).mean()
        assert D[l].item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.allclose(layer_movement(states), per_token.mean(dim=(1, 2)))


def test_layer_movement_errors():
    with pytest.raises(SdlibError):
        layer_movement([torch.randn(1, 2, 3)])
    with pytest.raises(SdlibError):
        layer_movement([torch.randn(1, 2, 3)] * 2, torch.zeros(1, 2))


def test_monotonicity_cases():
    assert monotonicity([0.5, 0.4, 0.3, 0.1]) == 1.0  # never rises
    assert monotonicity([0.1, 0.2, 0.3, 0.5]) == 0.0  # never falls
    # worked example: diffs -0.2, +0.1, -0.1, +0.3 -> rises 0.4 of |total| 0.7 -> S = 1 - 4/7
    assert monotonicity([0.5, 0.3, 0.4, 0.3, 0.6]) == pytest.approx(1 - 0.4 / 0.7)
    assert monotonicity([0.2, 0.2, 0.2]) == 1.0  # denominator 0: nothing rises
    assert monotonicity([0.3]) == 1.0
    assert monotonicity(torch.tensor([0.3, 0.1, 0.2])) == pytest.approx(1 - 0.1 / 0.3)


def test_monotonicity_bounds_random():
    rng = np.random.default_rng(0)
    for _ in range(100):
        s = monotonicity(rng.random(rng.integers(2, 30)))
        assert 0.0 <= s <= 1.0


def test_last_layer_ratio():
    assert last_layer_ratio([0.1, 0.05, 0.2]) == pytest.approx(4.0)
    assert math.isnan(last_layer_ratio([0.1, 0.0, 0.2]))


def test_bootstrap_interval_of_s():
    from sdlib.metrics import monotonicity
    from sdlib.stats import bootstrap_monotonicity

    g = torch.Generator().manual_seed(0)
    base = torch.tensor([0.4, 0.3, 0.2, 0.25, 0.1], dtype=torch.float64)
    windows = base + 0.03 * torch.randn(32, 5, generator=g, dtype=torch.float64)
    lo, hi = bootstrap_monotonicity(windows, seed=1)
    s = monotonicity(windows.mean(0))
    assert lo <= s <= hi and hi - lo > 0
    assert (lo, hi) == bootstrap_monotonicity(windows, seed=1)
    same = base.expand(8, 5)
    assert bootstrap_monotonicity(same) == pytest.approx((monotonicity(base),) * 2)
    with pytest.raises(SdlibError):
        bootstrap_monotonicity(base[None])


def test_measure_windows_equals_layer_movement_of_the_whole_batch():
    """What every published S comes from (measure_windows, batched and summed in two conventions) equals the
    plain definition on the same tokens: layer_movement of all windows at once."""
    from sdlib import models
    from sdlib.measurement import measure_windows
    from sdlib.parts import decoder_parts
    from sdlib.states import hidden_states

    model, _ = models.load("tiny-llama", num_layers=3, hidden_size=32)
    with torch.no_grad():
        decoder_parts(model).norm.weight.copy_(torch.linspace(-2, 2, 32))  # the conventions differ
    windows = torch.randint(3, 259, (5, 24), generator=torch.Generator().manual_seed(0))
    m = measure_windows(model, windows, batch_size=2)
    with torch.no_grad():
        for convention in ("normed", "pre_norm"):
            D = layer_movement(hidden_states(model, windows, last_state=convention))
            assert m.D[convention] == pytest.approx(D.tolist(), rel=1e-6, abs=1e-9)
            assert m.S[convention] == pytest.approx(monotonicity(D), abs=1e-6)
    assert m.D["normed"][-1] != pytest.approx(m.D["pre_norm"][-1])
    assert m.n_tokens == 5 * 24 and len(m.per_window_D["normed"]) == 5
