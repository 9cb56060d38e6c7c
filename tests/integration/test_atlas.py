"""The atlas: its per-token split of the last step agrees with the measurement, its invariants hold, its
at-initialisation numbers agree with an independent computation, and its record round-trips."""

import math

import pytest
import torch

from sdlib.loss import layer_weights
from sdlib.metrics import monotonicity
from sdlib.models import load
from sdlib.parts import decoder_parts
from sdlib.studies.atlas import AtlasRecord, AtlasSettings, TokenStats, atlas, init_gradients

SETTINGS = AtlasSettings(windows=3, window_len=32, batch_size=2, eval_subset="tiny", init_sequences=2,
                         init_seq_len=16, data="")


def test_token_stats():
    values = torch.tensor([10.0, 1.0, 2.0, 3.0, 20.0, 4.0])
    positions = torch.tensor([0, 1, 2, 3, 0, 1])
    s = TokenStats.of(values, positions)
    assert s.mean == pytest.approx(40 / 6) and s.sink == pytest.approx(15.0)
    assert s.mean_no_sink == pytest.approx(2.5) and s.median_no_sink in (2.0, 3.0)


@pytest.fixture
def tiny_model():
    model, tok = load("tiny-llama", num_layers=3, hidden_size=32)
    with torch.no_grad():  # a gain that rotates, so the final norm's share is not zero
        decoder_parts(model).norm.weight.copy_(torch.linspace(-1.0, 3.0, 32))
    return model, tok


@pytest.mark.data
def test_atlas_agrees_with_the_measurement_and_round_trips(tiny_model, text_file):
    from dataclasses import replace

    settings = replace(SETTINGS, data=str(text_file), text=str(text_file))
    r = atlas("tiny-llama", settings, loaded=tiny_model, progress=False)
    m = r.measurement
    # the last step's split uses the same tokens: its means are the two conventions' D_L
    assert r.last_step["block"].mean == pytest.approx(m.D["pre_norm"][-1], rel=1e-5)
    assert r.last_step["normed"].mean == pytest.approx(m.D["normed"][-1], rel=1e-5)
    assert r.last_step["norm"].mean > 0 and 0 < r.norm_share.median < 1
    assert m.S["normed"] == pytest.approx(monotonicity(m.D["normed"]))
    assert m.S_median["normed"] == pytest.approx(monotonicity(m.D_median["normed"]))
    for c, (lo, hi) in r.S_interval.items():
        assert lo <= hi and r.summary()["S_interval"][c] == [lo, hi]
    assert len(r.top_channel.share_median_no_sink) == r.num_layers + 1
    assert all(0 < v <= 1 for v in r.top_channel.share_median_no_sink)
    top1, top4 = r.top_channel.share_median_no_sink, r.top_channel.top4_share_median_no_sink
    assert all(a <= b <= 1 for a, b in zip(top1, top4))
    assert r.evaluation.layers == list(range(r.num_layers)) and r.evaluation.lambada_n == 16
    # the norms, recomputed here from a plain forward pass over the same windows
    from sdlib.data import read_text, spread_windows

    model, tok = tiny_model
    ids = spread_windows(tok, read_text(str(text_file))[0], settings.windows, settings.window_len)[0]  # the default
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
    prev, last = hs[-2][:, 1:].double().norm(dim=-1), hs[-1][:, 1:].double().norm(dim=-1)
    assert r.state_norms["h_prev"].mean_no_sink == pytest.approx(float(prev.mean()), rel=1e-5)
    assert r.state_norms["h_last"].mean_no_sink == pytest.approx(float(last.mean()), rel=1e-5)
    assert r.state_norms["x_last"].sink > 0
    again = AtlasRecord.from_dict(r.to_dict())
    assert again == r
    cached = atlas("tiny-llama", settings, loaded=tiny_model, progress=False)
    assert cached == r


def test_a_uniform_gain_does_not_rotate(text_file):
    from sdlib.data import read_text, text_windows
    from sdlib.measurement import measure_windows
    from sdlib.studies.atlas import _TokenObserver

    model, tok = load("tiny-llama", num_layers=2, hidden_size=32)
    with torch.no_grad():
        decoder_parts(model).norm.weight.fill_(2.5)
    observer = _TokenObserver()
    m = measure_windows(model, text_windows(tok, read_text(str(text_file))[0], 2, 32), observers=[observer])
    last_step, share, _ = observer.summarise(decoder_parts(model).norm_gain())
    assert last_step["norm"].mean == pytest.approx(0.0, abs=1e-6) and share.median == pytest.approx(0.0, abs=1e-3)
    assert m.D["normed"][-1] == pytest.approx(m.D["pre_norm"][-1], abs=1e-6)


def test_init_gradients_against_an_independent_computation(tiny_model, text_file):
    from dataclasses import replace

    model, tok = tiny_model
    settings = replace(SETTINGS, data=str(text_file), alpha=0.5)
    z = init_gradients(model, tok, settings)
    parts = decoder_parts(model)
    # independent: plain logit lens KL(teacher || lens_l) with teacher = the model's own output
    from sdlib.data import PackedSequences, training_documents

    ids = PackedSequences(training_documents(str(text_file))[0], tok, 16).batch(0, 2)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        logp = torch.log_softmax(out.logits.double(), -1)
        kls = []
        for l, h in enumerate(out.hidden_states[1:]):
            z_l = parts.lm_head(h if l == len(out.hidden_states) - 2 else parts.norm(h))
            logq = torch.log_softmax(z_l.double(), -1)
            kls.append(float((logp.exp() * (logp - logq)).sum(-1).mean()))
    w = layer_weights(len(kls), settings.k).double()
    assert z.kl_per_layer == pytest.approx(kls, rel=1e-4, abs=1e-6)  # fp32: KL = sum p log p - sum p log q
    assert z.zeta1 == pytest.approx(float((w * torch.tensor(kls, dtype=torch.float64)).sum()), rel=1e-3)
    assert z.kl_per_layer[-1] == pytest.approx(0.0, abs=1e-6)  # student = teacher at initialisation
    # what each term can reach: zeta2 never touches lm_head; pre-norm zeta2 never the final norm; zeta1 not
    # the last block (its only lens, layer L, has zero KL and zero gradient at initialisation)
    g = z.grad_norms
    assert g["zeta2_normed"]["lm_head"] == 0 and g["zeta2_pre_norm"]["lm_head"] == 0
    assert g["zeta2_pre_norm"]["final_norm"] == 0 and g["zeta2_normed"]["final_norm"] > 0
    assert g["zeta1"]["last_block"] == pytest.approx(0.0, abs=1e-9) and g["zeta1"]["blocks"] > 0
    assert math.isnan(z.cosine["pre_norm"]["final_norm"]) and -1 <= z.cosine["normed"]["all"] <= 1
    assert z.alpha_zeta2["normed"] == pytest.approx(sum(z.alpha_zeta2_per_layer["normed"]), rel=1e-5)
    assert set(z.groups) == {"embeddings", "blocks", "last_block", "final_norm", "lm_head"}


def test_records_round_trip_through_json(tiny_model, tmp_path):
    import json

    from sdlib.evaluation.movement import MeasureRecord, MeasureSettings, measure_model
    from sdlib.studies.lens_grid import LensGrid, lens_grid_of
    from sdlib.train.runlog import EvalRecord, StepRecord, from_dict, to_line

    model, tok = tiny_model
    text = "the cat sat on the mat and the dog slept by the fire " * 4
    path = tmp_path / "t.txt"
    path.write_text(text)
    record = measure_model(model, tok, MeasureSettings(str(path), 2, 16), name="tiny-llama", role="pretrained")
    again = MeasureRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record and again.role == "pretrained"
    grid = lens_grid_of(model, tok, text, label="tiny")
    assert LensGrid.from_dict(json.loads(json.dumps(grid.to_dict()))) == grid
    step = StepRecord(step=1, tokens=8, epochs=0.5, loss=1.0, zeta1=0.5, zeta2=0.5, kl_per_layer=[0.1, None],
                      zeta2_per_layer=[0.2], lr=1e-4, grad_norm=0.3, skipped_steps=0, tokens_per_s=9.0, seconds=1.0)
    evaluation = EvalRecord(step=1, D={"normed": [0.1]}, S={"normed": 1.0}, tokens=8)
    assert from_dict(json.loads(to_line(step))) == step and from_dict(json.loads(to_line(evaluation))) == evaluation
