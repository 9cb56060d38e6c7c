"""Loading your own model as transformers does: weights read in the requested dtype (never through float32),
revision and device_map passed on, and a folder without tokenizer files answered in one line or given a
tokenizer by name."""

import pytest
import torch

from sdlib.cli import main
from sdlib.errors import SdlibError
from sdlib.models import TOKENIZER_FILES, load


@pytest.fixture()
def folder(tmp_path):
    model, tok = load("tiny-llama", num_layers=2)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_a_folder_is_read_in_the_requested_dtype(folder, monkeypatch):
    import transformers

    seen = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(source, **kwargs):
        seen.update(kwargs)
        return real(source, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    model, _ = load(folder, dtype="bfloat16")
    assert seen["dtype"] == torch.bfloat16 and seen["device_map"] is None and "revision" not in seen
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    load(folder, revision="main")
    assert seen["revision"] == "main"


def test_a_folder_without_a_tokenizer_is_one_line_or_takes_one(folder, capsys):
    for name in TOKENIZER_FILES:
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(SdlibError, match="has no tokenizer files .*pass --tokenizer"):
        load(folder)
    model, tok = load(folder, tokenizer="tiny-llama")
    assert tok("ab")["input_ids"] and model.config.num_hidden_layers == 2
    assert main(["measure", str(folder), "--windows", "2", "--window-len", "32", "--out", str(folder / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sdlib: error:") and "--tokenizer" in err and "\n" not in err
    assert main(["measure", str(folder), "--windows", "2", "--window-len", "32", "--tokenizer", "tiny-llama",
                 "--text", str(_text(folder)), "--out", str(folder / "x.json")]) == 0


def test_built_in_models_refuse_hub_only_options():
    with pytest.raises(SdlibError, match="revision and device_map apply to hub ids and folders"):
        load("tiny-llama", revision="v1")


def _text(folder):
    path = folder.parent / "text.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    return path
