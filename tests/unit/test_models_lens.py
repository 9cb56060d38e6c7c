import pytest
import torch

from sdlib import models
from sdlib.errors import SdlibError
from sdlib.lens import lens_logits, lens_top1
from sdlib.parts import decoder_parts
from sdlib.states import capture_last_layer_output, forward_states, hidden_states


def test_tiny_models_load_and_options_change_shape(tiny):
    model, tokenizer = tiny
    access = decoder_parts(model)
    assert access.num_layers == 3
    assert access.lm_head.weight.shape == (300, 32)
    text = "Hello, wörld!"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text  # byte-level: lossless


def test_tiny_models_are_deterministic():
    a, _ = models.load("tiny-llama", num_layers=2)
    b, _ = models.load("tiny-llama", num_layers=2)
    c, _ = models.load("tiny-llama", num_layers=2, seed=5)
    assert torch.equal(a.lm_head.weight, b.lm_head.weight)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


@pytest.mark.parametrize("convention", ["normed", "pre_norm"])
def test_lens_at_last_layer_equals_logits(tiny, convention):
    model, _ = tiny
    ids = torch.randint(0, 259, (2, 9))
    with torch.no_grad():
        logits = model(ids).logits
        states = hidden_states(model, ids, last_state=convention)
        assert len(states) == decoder_parts(model).num_layers + 1  # h_-1 .. h_L: L + 2 = (L + 1) + 1
        assert torch.allclose(lens_logits(model, states, 2, convention), logits, atol=1e-5)
        mid = lens_logits(model, states, 0, convention)
        assert mid.shape == logits.shape and not torch.allclose(mid, logits)
        ids_top, probs = lens_top1(model, states, slice(3, 6), convention)
        assert ids_top.shape == probs.shape == (3, 3)
        assert torch.equal(ids_top[-1], logits[0, 3:6].argmax(-1))
    with pytest.raises(SdlibError):
        lens_logits(model, states, 3, convention)


def test_conventions_share_all_but_last_state(tiny):
    model, _ = tiny
    ids = torch.randint(0, 259, (1, 6))
    with torch.no_grad():
        both = forward_states(model, ids)
        access = decoder_parts(model)
        for a, b in zip(both["normed"][:-1], both["pre_norm"][:-1]):
            assert a is b
        assert torch.allclose(access.norm(both["pre_norm"][-1]), both["normed"][-1], atol=1e-6)


def test_hooks_are_removed_even_after_errors(tiny):
    model, _ = tiny
    last = decoder_parts(model).layers[-1]
    before = len(last._forward_hooks)  # transformers keeps hooks of its own there
    with pytest.raises(RuntimeError):
        with capture_last_layer_output(model):
            assert len(last._forward_hooks) == before + 1
            raise RuntimeError("boom")
    assert len(last._forward_hooks) == before


def test_unplaceable_model_names_what_was_looked_for():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=50))
    parts = decoder_parts(gpt2)  # GPT-2 places: h, ln_f, lm_head
    assert parts.layers_name == "h" and parts.num_layers == 1
    del gpt2.transformer.ln_f
    with pytest.raises(SdlibError, match="final norm.*looked for norm, final_layer_norm"):
        decoder_parts(gpt2)
    with pytest.raises(SdlibError, match="output head"):
        decoder_parts(torch.nn.Linear(2, 2))


def test_missing_folder_and_bad_options(tmp_path):
    with pytest.raises(SdlibError, match="does not exist"):
        models.load(str(tmp_path / "nope" / "model"))
    with pytest.raises(SdlibError, match="neither a model folder"):
        models.load(str(tmp_path))
    with pytest.raises(SdlibError, match="only apply"):
        models.load("smollm2-135m-instruct", num_layers=3)


def test_unreachable_hub_gives_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SdlibError, match="meta-llama/Llama-3.2-1B.*local folder"):
        models.load("meta-llama/Llama-3.2-1B")


def test_saved_checkpoint_round_trip(tiny, tmp_path):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    loaded, tok2 = models.load(str(tmp_path / "m"))
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert tok2("abc")["input_ids"] == tokenizer("abc")["input_ids"]
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(SdlibError, match="no weights"):
        models.load(str(tmp_path / "m"))
