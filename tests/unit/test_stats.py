"""Bootstrap intervals against textbook approximations, and the pairing that makes differences meaningful."""

import math

import numpy as np
import pytest
import torch

from sdlib.errors import SdlibError
from sdlib.metrics import monotonicity
from sdlib.stats import accuracy_interval, paired_ratio, paired_S_difference


def test_accuracy_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    correct = (rng.random(2000) < 0.3).astype(float)
    p, lo, hi = accuracy_interval(correct, n_boot=4000)
    half = 1.96 * math.sqrt(p * (1 - p) / len(correct))
    assert p == pytest.approx(correct.mean())
    assert lo == pytest.approx(p - half, abs=0.004) and hi == pytest.approx(p + half, abs=0.004)


def test_paired_difference_of_identical_models_is_exactly_zero():
    curves = torch.rand(16, 6, generator=torch.Generator().manual_seed(0))
    assert paired_S_difference(curves, curves) == (0.0, 0.0, 0.0)
    d, lo, hi = paired_S_difference(curves, curves.flip(-1))
    assert d == pytest.approx(monotonicity(curves.flip(-1).mean(0)) - monotonicity(curves.mean(0)))
    assert lo <= d <= hi


def test_pairing_removes_the_shared_window_noise():
    """b = a with its last step lowered on every window: each window's S rises, so the paired interval of the
    difference excludes 0, although the two models' own intervals overlap."""
    from sdlib.stats import bootstrap_monotonicity

    g = torch.Generator().manual_seed(1)
    a = torch.linspace(0.3, 0.1, 8).repeat(40, 1) + 0.08 * torch.rand(40, 8, generator=g)
    a[:, -1] += 0.05
    b = a.clone()
    b[:, -1] -= 0.01
    d, lo, hi = paired_S_difference(a, b)
    assert d > 0 and lo > 0
    (_, a_high), (b_low, _) = bootstrap_monotonicity(a), bootstrap_monotonicity(b)
    assert b_low < a_high  # the separate intervals overlap


def test_paired_ratio():
    a = np.array([1, 1, 0, 1, 0, 1, 1, 0] * 20, dtype=float)
    assert paired_ratio(a, a) == (1.0, 1.0, 1.0)
    b = a.copy()
    b[:40] = 0  # b loses some of a's hits
    r, lo, hi = paired_ratio(a, b)
    assert r == pytest.approx(b.mean() / a.mean()) and lo < r < hi < 1
    with pytest.raises(SdlibError, match="at least two units"):
        paired_ratio(a[:1], b[:1])
