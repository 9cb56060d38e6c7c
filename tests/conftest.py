import os
from pathlib import Path

import pytest
import torch

from sdlib import models

ROOT = Path(__file__).resolve().parents[1]


def hang_guard(seconds: float) -> float:
    """A subprocess timeout that only guards against a hang: generous, and scaled by SDLIB_TEST_TIMEOUT_SCALE on a
    machine whose cores are shared (a test must never fail because the machine is busy)."""
    return seconds * float(os.environ.get("SDLIB_TEST_TIMEOUT_SCALE", "1"))


def pytest_collection_modifyitems(config, items):
    slow_ok = os.environ.get("SDLIB_SLOW") == "1"
    data_ok = bool(os.environ.get("SDLIB_DATA_DIR"))
    for item in items:
        if "slow" in item.keywords and not slow_ok:
            item.add_marker(pytest.mark.skip(reason="slow test: opt in with SDLIB_SLOW=1 (./run_tests.sh --slow)"))
        if "data" in item.keywords and not data_ok:
            item.add_marker(pytest.mark.skip(reason="needs SDLIB_DATA_DIR (e.g. export SDLIB_DATA_DIR=../shared/data)"))


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """Every test writes runs/results under its own tmp folder."""
    monkeypatch.setenv("SDLIB_BUILD_DIR", str(tmp_path / "build"))
    monkeypatch.setenv("SDLIB_RECORDS_DIR", str(tmp_path / "records"))
    torch.manual_seed(0)


@pytest.fixture
def text_file(tmp_path):
    """A local training/eval text: no network and no data directory needed."""
    words = ("the cat sat on the mat while the dog slept by the warm fire and the bird sang "
             "a song about rivers mountains and the long road home ").split()
    text = "\n".join(" ".join(words[(i * 7) % len(words):] + words[:(i * 7) % len(words)]) for i in range(200))
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    return path


@pytest.fixture(params=list(models.TINY_DEFAULTS))
def tiny(request):
    model, tokenizer = models.load(request.param, num_layers=3, hidden_size=32, vocab_size=300)
    return model, tokenizer
