"""Model cards: huggingface_hub reads them back, with the base model a user would find on the hub and what the
starting weights really are."""

from huggingface_hub import ModelCard

from sdlib.train.card import model_card
from sdlib.train.config import load_config
from sdlib.train.runlog import EvalRecord


def _card(model: str, **kw) -> ModelCard:
    config = load_config(None, {"model": model, "name": "c"})
    return ModelCard(model_card(config, None, None, 4, **kw))


def test_a_built_in_model_names_its_release_and_says_it_is_dequantized():
    card = _card("smollm2-135m-instruct")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.library_name == "transformers" and "sdlib" in card.data.tags
    assert "Q4_1 GGUF" in card.text and "dequantized to float32" in card.text
    assert "https://github.com/)" not in card.text and "Improving the internal behaviour" in card.text
    assert _card("qwen2.5-coder-0.5b-instruct").data.base_model == "Qwen/Qwen2.5-Coder-0.5B-Instruct"


def test_a_hub_model_is_its_own_base_and_a_tiny_one_has_none():
    assert _card("meta-llama/Llama-3.2-1B").data.base_model == "meta-llama/Llama-3.2-1B"
    assert _card("tiny-llama").data.base_model is None


def test_the_card_says_where_S_was_measured():
    config = load_config(None, {"model": "tiny-llama", "name": "c"})
    first = EvalRecord(step=0, D={"normed": [0.1], "pre_norm": [0.1]}, S={"normed": 0.5, "pre_norm": 0.7}, tokens=2048)
    last = EvalRecord(step=4, D={"normed": [0.1], "pre_norm": [0.1]}, S={"normed": 0.6, "pre_norm": 0.8}, tokens=2048)
    text = ModelCard(model_card(config, first, last, 4)).text
    assert "| normed | 0.5000 | 0.6000 |" in text
    assert f"{config.eval_text}, {config.eval_windows} windows of {config.eval_window_len} tokens" in text
