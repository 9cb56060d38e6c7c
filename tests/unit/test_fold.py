"""Folding the final norm's gain into the head, on one tiny model per architecture family (tied and untied heads,
a gain that is not 1, a LayerNorm's bias that is not 0): nothing any layer's lens predicts changes, D_0..D_L-1 do
not change, and the folded model's normed D_L is the original's pre-norm D_L (RMSNorm). References are written
from the definitions (cosines, a plain g * x / rms(x)), not from sdlib's metrics."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdlib import models
from sdlib.errors import SdlibError
from sdlib.fold import fold_final_norm, fold_info, norm_form, save_folded
from sdlib.lens import lens_logits
from sdlib.loss import layer_weights, self_distillation_loss
from sdlib.measurement import measure_windows
from sdlib.metrics import jump_rate
from sdlib.parts import decoder_parts
from sdlib.states import forward_states
from sdlib.train import train
from sdlib.train.config import load_config
from tests.conftest import ROOT

SHAPE = dict(num_layers=3, hidden_size=32, vocab_size=300)


def _model(name, tie=False, seed=1):
    """A tiny model whose final norm has a gain far from 1 (some channels negative) and, where it has one, a bias."""
    model, tok = models.load(name, tie_word_embeddings=tie, **SHAPE)
    norm = decoder_parts(model).norm
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(norm.weight.shape, generator=g) * 1.5)
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=g))
    return model, tok


def _cos_D(a, b):
    """D = (1 - cos) / 2 per token, written out."""
    a, b = a.double(), b.double()
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    return (0.5 * (1 - cos)).mean(dim=(0, 1))


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("name", list(models.TINY_MODELS))
def test_the_fold_changes_no_output_and_turns_the_normed_reading_into_the_pre_norm_one(name, tie):
    model, _ = _model(name, tie)
    ids = torch.randint(3, 259, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = forward_states(model, ids, keep_logits=True)
        lens_before = [lens_logits(model, before.normed, layer) for layer in range(before.L + 1)]
    embed_before = model.get_input_embeddings().weight.detach().clone()
    form = norm_form(decoder_parts(model).norm)
    fold_final_norm(model)
    parts = decoder_parts(model)
    with torch.no_grad():
        after = forward_states(model, ids, keep_logits=True)
        for layer, expected in enumerate(lens_before):
            got = lens_logits(model, after.normed, layer)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    torch.testing.assert_close(after.logits, before.logits, rtol=1e-5, atol=1e-5 * float(before.logits.abs().max()))
    for l in range(before.L + 1):  # h_-1 .. h_L-1 and the last block's raw output are the same tensors' values
        torch.testing.assert_close(after.inner[l], before.inner[l], rtol=0, atol=0)
    torch.testing.assert_close(after.pre_norm_last, before.pre_norm_last, rtol=0, atol=0)
    # the folded norm's gain is one constant c in every channel
    gain = parts.norm.weight.detach().double() + form.offset
    assert torch.allclose(gain, gain[0].expand_as(gain)) and float(gain[0]) > 0
    if not form.centred:
        # folded normed h_L = c x_L / rms(x_L): the folded normed D_L is the original's pre-norm D_L
        x = before.pre_norm_last.double()
        assert torch.allclose(after.normed_last.double(),
                              float(gain[0]) * x / x.pow(2).mean(-1, keepdim=True).add(_eps(parts.norm)).sqrt(),
                              rtol=1e-5, atol=1e-6)
        h_prev = before.inner[-1]
        assert float(_cos_D(h_prev, after.normed_last)) == pytest.approx(float(_cos_D(h_prev, before.pre_norm_last)),
                                                                         abs=1e-6)
    info = fold_info(model)
    assert info.untied == tie and info.check_max_logit_diff < 1e-4
    if tie:  # the head has its own weight now; the embedding is left as it was
        assert parts.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
        assert model.config.tie_word_embeddings is False
    torch.testing.assert_close(model.get_input_embeddings().weight, embed_before, rtol=0, atol=0)


def _eps(norm):
    return float(getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", 1e-6))


def test_norm_forms_are_read_off_the_modules():
    assert norm_form(decoder_parts(_model("tiny-llama")[0]).norm).describe() == "RMSNorm, gain weight"
    assert norm_form(decoder_parts(_model("tiny-gemma2")[0]).norm).offset == 1.0
    neox = norm_form(decoder_parts(_model("tiny-gpt-neox")[0]).norm)
    assert neox.centred and neox.bias


def test_a_norm_that_is_neither_form_is_refused_and_the_model_left_alone():
    model, _ = _model("tiny-llama")
    parts = decoder_parts(model)

    class Odd(nn.Module):  # not a per-channel gain on a normalised vector
        def __init__(self, weight):
            super().__init__()
            self.weight = weight

        def forward(self, x):
            return torch.tanh(x) * self.weight

    parts.backbone.norm = Odd(parts.norm.weight)
    head = parts.lm_head.weight.detach().clone()
    with pytest.raises(SdlibError, match="cannot fold"):
        fold_final_norm(model)
    torch.testing.assert_close(parts.lm_head.weight, head, rtol=0, atol=0)


def test_a_fold_that_would_move_a_logit_is_undone_and_refused(monkeypatch):
    from sdlib import fold as fold_module

    model, _ = _model("tiny-qwen2", tie=True)
    parts = decoder_parts(model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(fold_module, "fold_tolerance", lambda dtype: -1.0)  # any change at all counts as one
    with pytest.raises(SdlibError, match="refused"):
        fold_final_norm(model)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert model.config.tie_word_embeddings is True
    assert parts.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert fold_info(model) is None


def test_a_layernorm_bias_with_a_zero_gain_channel_is_refused():
    model, _ = _model("tiny-gpt-neox")
    norm = decoder_parts(model).norm
    with torch.no_grad():
        norm.weight[3] = 0.0
    with pytest.raises(SdlibError, match="bias cannot be folded"):
        fold_final_norm(model)


def test_the_folded_folder_loads_measures_and_trains_a_step(tmp_path, text_file):
    model, tok = _model("tiny-llama", tie=True)
    ids = torch.randint(3, 259, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits
        original = measure_windows(model, ids)
    fold_final_norm(model)
    out = save_folded(model, tok, tmp_path / "folded", "card")
    with pytest.raises(SdlibError, match="not an empty folder"):
        save_folded(model, tok, out, "card")
    loaded, _ = models.load(out)
    assert fold_info(loaded) is not None and loaded.config.tie_word_embeddings is False
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, expected, rtol=1e-5, atol=1e-5)
        folded = measure_windows(loaded, ids)
    assert folded.D["normed"][:-1] == pytest.approx(original.D["normed"][:-1], abs=1e-6)
    assert folded.D["normed"][-1] == pytest.approx(original.D["pre_norm"][-1], abs=1e-6)
    config = load_config(ROOT / "configs" / "tiny.yaml", {
        "model": str(out), "model_options": {}, "output_dir": str(tmp_path / "run"), "data": str(text_file),
        "eval_text": str(text_file), "max_tokens": 512, "save_every": 0})
    run = train(config, progress=False)
    assert (run / "log.jsonl").exists()


def test_training_can_fold_first_and_freeze_the_ends(tmp_path, text_file):
    config = load_config(ROOT / "configs" / "tiny.yaml", {
        "output_dir": str(tmp_path / "run"), "data": str(text_file), "eval_text": str(text_file), "max_tokens": 1024,
        "save_every": 0, "fold_final_norm": True, "freeze": ["embeddings", "final_norm", "lm_head"]})
    start, _ = models.load("tiny-llama", **config.model_options)
    run = train(config, progress=False)
    trained, _ = models.load(run)
    assert fold_info(trained) is not None
    before, after = decoder_parts(start), decoder_parts(trained)
    torch.testing.assert_close(after.embed.weight, before.embed.weight, rtol=0, atol=0)
    assert torch.allclose(after.norm.weight, after.norm.weight[0].expand_as(after.norm.weight))  # still folded
    assert not torch.equal(after.layers[0].mlp.up_proj.weight, before.layers[0].mlp.up_proj.weight)


def test_jump_rate_by_hand():
    D = [0.1, 0.3, 0.2, 0.25, 0.6]  # rises: +0.2 (l=1), -, +0.05 (l=3), +0.35 (l=4)
    assert jump_rate(D) == pytest.approx([60.0, 40.0, 40.0, 35.0])
    assert jump_rate([0.5, 0.4, 0.3]) == [0.0, 0.0]


def test_last_weight_sets_the_final_kl_weight_and_scales_the_rest():
    torch.manual_seed(0)
    L1, d, V = 4, 8, 20
    states = [torch.randn(2, 5, d) for _ in range(L1 + 1)]
    norm, head = nn.RMSNorm(d), nn.Linear(d, V, bias=False)
    teacher = torch.randn(2, 5, V)
    parts = self_distillation_loss(states, norm, head, teacher, alpha=0.0, last_weight=0.5)
    w = layer_weights(L1, 0.25)
    expected = torch.cat([w[:-1] / w[:-1].sum() * 0.5, torch.tensor([0.5], dtype=w.dtype)])
    kl = [F.kl_div(torch.log_softmax(head(norm(h)).detach(), -1), torch.log_softmax(teacher, -1), log_target=True,
                   reduction="none").sum(-1).mean() for h in states[1:]]
    assert float(parts.zeta1) == pytest.approx(float(sum(e * k for e, k in zip(expected, kl))), rel=1e-5)
    with pytest.raises(SdlibError, match="last_weight"):
        self_distillation_loss(states, norm, head, teacher, last_weight=1.0)


@pytest.mark.data
def test_the_fold_split_study_splits_the_normed_last_step():
    from sdlib.studies import registry

    model, tok = _model("tiny-qwen2", tie=True)
    study = registry.get("fold-split")
    r = study.run("tiny-qwen2-gain", study.settings_from({"windows": 4, "window_len": 64, "eval_subset": "tiny"}),
                  loaded=(model, tok), progress=False)
    assert r.S["folded"][0] == pytest.approx(r.S["pre_norm"][0], abs=1e-6)
    assert r.D["folded"][:-1] == pytest.approx(r.D["normed"][:-1], abs=1e-7)
    assert r.gain_part + r.block_part == pytest.approx(r.D_last["normed"], abs=1e-12)
    assert r.block_part == pytest.approx(r.D_last["pre_norm"], abs=1e-6) and abs(r.gain_part) > 1e-3
    assert r.S_folded_vs_normed[0] == pytest.approx(r.S["folded"][0] - r.S["normed"][0], abs=1e-9)
    # jump rate at the last layer: 100 * the last step's rise, by hand
    assert r.jump_rate["normed"][-1] == pytest.approx(100 * max(0.0, r.D["normed"][-1] - r.D["normed"][-2]))
    assert r.max_logit_diff < 1e-4 * r.max_logit and r.top1_agreement == 1.0 and r.info["positions"] == 256
    assert r.lambada_n == 16 and r.lambada_changed == 0 and r.fold["untied"]
    assert fold_info(model) is None  # the study folds a copy; the model it was given is left as it was
