"""Layer pruning and early exit: early exit is the logit lens; pruned models are plain transformers models."""

import pytest
import torch

from sdlib import models
from sdlib.errors import SdlibError
from sdlib.lens import lens_logits
from sdlib.parts import decoder_parts
from sdlib.pruning import choose_layers, generation_speed, keep_layers, prune
from sdlib.states import hidden_states


@pytest.mark.parametrize("name", models.TINY_DEFAULTS)
def test_early_exit_is_the_logit_lens(name):
    model, _ = models.load(name, num_layers=4, hidden_size=32, vocab_size=300)
    ids = torch.randint(0, 259, (2, 9))
    states = hidden_states(model, ids)
    for k in range(4):
        exited = keep_layers(model, range(k + 1))
        with torch.no_grad():
            assert torch.allclose(exited(ids).logits, lens_logits(model, states, k), atol=1e-5), k
    assert decoder_parts(model).num_layers == 4  # the original is untouched


def test_choose_layers():
    D = [0.30, 0.05, 0.20, 0.01, 0.10, 0.50]  # layers 0..5; layer 5 is L
    assert choose_layers(D, 2, "movement") == [1, 3]
    assert choose_layers(D, 3, "movement") == [1, 3, 4]
    assert choose_layers(D, 2, "last") == [3, 4]
    assert choose_layers(D, 0, "movement") == []
    with pytest.raises(SdlibError):
        choose_layers(D, 6, "movement")
    with pytest.raises(SdlibError):
        choose_layers(D, 1, "random")


def test_pruned_model_saves_loads_and_decodes_with_cache(tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = models.load("tiny-qwen2", num_layers=5, hidden_size=32, vocab_size=300)
    pruned, removed = prune(model, [0.3, 0.1, 0.2, 0.05, 0.4, 0.6], 2, "movement")
    assert removed == [1, 3] and pruned.config.num_hidden_layers == 3 and len(pruned.config.layer_types) == 3
    pruned.save_pretrained(tmp_path / "pruned")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    ids = torch.randint(0, 259, (1, 7))
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, pruned(ids).logits, atol=1e-6)
        cached = pruned.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = pruned.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_generation_speed_is_new_tokens_per_second():
    """Each forward pass made to take 20 ms: 4 new tokens take 4 passes, so the speed is at most 50 tokens/s; and
    it is new tokens over the time of a ``generate`` call timed here independently (counting the prompt's tokens
    too, or timing something else, would be several times off). No bound depends on how busy the machine is."""
    import time

    model, tok = models.load("tiny-llama", num_layers=2, hidden_size=32, vocab_size=300)
    model.register_forward_pre_hook(lambda *a: time.sleep(0.02))
    speed = generation_speed(model, tok, new_tokens=4, repeats=2)
    ids = tok("The history of the city begins", return_tensors="pt")["input_ids"]
    fastest = float("inf")
    for _ in range(5):  # the fastest of several calls, as busy cores slow any one call (and the function's best of 2)
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
        fastest = min(fastest, time.perf_counter() - t0)
    independent = 4 / fastest
    assert speed < 50.5
    assert independent / 3 < speed < independent * 3
