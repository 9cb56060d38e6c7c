"""Built-in names say what the weights are (``-instruct``); the shorter names of earlier versions stay aliases
everywhere a name is read: loading, configs, resuming, model cards, a profile's install list."""

from sdlib import packaged
from sdlib.train.config import load_config, resume_differences

OLD_TO_NEW = {"smollm2-135m": "smollm2-135m-instruct", "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct",
              "qwen2.5-coder-1.5b": "qwen2.5-coder-1.5b-instruct"}


def test_instruction_tuned_releases_say_so_in_their_names():
    for name, model in packaged.PACKAGED.items():
        tuned = "Instruct" in model.base_model
        assert name.endswith("-instruct") == tuned, name


def test_an_old_name_is_the_same_model():
    for old, new in OLD_TO_NEW.items():
        assert old not in packaged.PACKAGED and new in packaged.PACKAGED
        assert packaged.packaged(old) is packaged.packaged(new)
        assert packaged.cached_dir(old) == packaged.cached_dir(new)
        assert packaged.is_packaged(old) and packaged.canonical(old) == new
    assert packaged.canonical("meta-llama/Llama-3.2-1B") == "meta-llama/Llama-3.2-1B"


def test_a_checkpoint_saved_with_an_old_name_resumes_under_the_new_one():
    new = load_config(None, {"model": "qwen2.5-coder-0.5b-instruct", "name": "r"})
    saved = load_config(None, {"model": "qwen2.5-coder-0.5b", "name": "r"}).to_dict()
    saved["model"] = "qwen2.5-coder-0.5b"  # as an older run.json holds it
    assert new.model == "qwen2.5-coder-0.5b-instruct"
    assert resume_differences(saved, new) == []
    other = load_config(None, {"model": "smollm2-135m", "name": "r"})
    assert [d[0] for d in resume_differences(saved, other)] == ["model"]


def test_figures_name_a_built_in_model_with_its_quantization():
    assert packaged.display_name("qwen2.5-coder-0.5b") == "qwen2.5-coder-0.5b-instruct Q4_K_M"
    assert packaged.display_name("smollm2-135m-instruct") == "smollm2-135m-instruct Q4_1"
    assert packaged.display_name("meta-llama/Llama-3.2-1B") == "meta-llama/Llama-3.2-1B"
