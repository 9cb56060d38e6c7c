"""The last-layer analysis: the D_L bound against brute force, the norm-rotation invariants, weight edits."""

import json

import numpy as np
import pytest
import torch

from sdlib.metrics import monotonicity, movement
from sdlib.models import load
from sdlib.parts import decoder_parts
from sdlib.studies.last_layer import (
    LastLayerReport,
    channel_energy_share,
    final_norm_rotation,
    final_norm_weight,
    last_layer_report,
    max_last_movement,
)


@pytest.mark.parametrize("seed", range(30))
def test_max_last_movement_is_the_threshold_of_S(seed):
    rng = np.random.default_rng(seed)
    D = list(rng.uniform(0, 0.3, size=int(rng.integers(3, 12))))
    target = float(rng.uniform(0.3, 0.95))
    bound = max_last_movement(D, target)
    if bound is None:  # even a last step of 0 misses the target
        assert monotonicity(D[:-1] + [0.0]) < target
        return
    assert monotonicity(D[:-1] + [bound]) == pytest.approx(target, abs=1e-9)
    assert monotonicity(D[:-1] + [bound + 1e-3]) < target
    assert monotonicity(D[:-1] + [max(bound - 1e-3, 0.0)]) >= target - 1e-12


def test_max_last_movement_edges():
    assert max_last_movement([0.5, 0.4, 0.3, 0.9], 0.0) == float("inf")
    assert max_last_movement([0.5, 0.4, 0.3, 0.9], 1.0) == pytest.approx(0.3)  # any rise breaks S = 1
    assert max_last_movement([0.1, 0.5, 0.2, 0.9], 1.0) is None  # layer 1 already rises


def test_final_norm_rotation_is_the_normed_states_movement():
    model, _ = load("tiny-llama", num_layers=2, hidden_size=32)
    norm = decoder_parts(model).norm
    with torch.no_grad():
        norm.weight.copy_(torch.randn(32))
    x = torch.randn(3, 5, 32) * torch.rand(3, 5, 1) * 10
    with torch.no_grad():
        expected = movement(x, norm(x))
    torch.testing.assert_close(final_norm_rotation(x, norm.weight.detach()), expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(final_norm_rotation(x, torch.full((32,), 2.5)), torch.zeros(3, 5), atol=1e-6)
    share = channel_energy_share(x)
    assert share.shape == (32,) and share.sum().item() == pytest.approx(1.0, abs=1e-5) and (share >= 0).all()


def test_final_norm_weight_is_always_restored():
    model, _ = load("tiny-llama", num_layers=2, hidden_size=32)
    before = decoder_parts(model).norm.weight.detach().clone()
    with pytest.raises(RuntimeError):
        with final_norm_weight(model, torch.zeros(32)):
            assert decoder_parts(model).norm.weight.abs().sum() == 0
            raise RuntimeError("inside")
    assert torch.equal(decoder_parts(model).norm.weight.detach(), before)


def test_last_layer_report_invariants():
    model, _ = load("tiny-llama", num_layers=3, hidden_size=32)
    with torch.no_grad():
        decoder_parts(model).norm.weight.copy_(torch.randn(32, generator=torch.Generator().manual_seed(0)))
    windows = torch.randint(0, 512, (4, 24), generator=torch.Generator().manual_seed(1))
    report = last_layer_report(model, windows, target=0.85, top=3)
    edits = {e.final_norm_weight: e for e in report.edits}
    as_trained = edits["as trained"]
    assert as_trained.S_normed == pytest.approx(report.S["normed"], abs=1e-6)
    assert as_trained.D_L == pytest.approx(report.D_L["normed"], abs=1e-6)
    # a uniform weight does not rotate: the normed D_L becomes the pre-norm one
    assert edits["uniform (mean |g|)"].D_L == pytest.approx(report.D_L["pre_norm"], abs=1e-5)
    assert report.block_rotation == pytest.approx(report.D_L["pre_norm"], abs=1e-5)
    assert len(report.channels) == 3 and report.norm_rotation > 0
    assert [c.share_pre_norm for c in report.channels] == sorted(
        (c.share_pre_norm for c in report.channels), reverse=True)
    assert LastLayerReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
