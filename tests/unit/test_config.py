import math

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sdlib.errors import SdlibError
from sdlib.settings import parse_overrides
from sdlib.train.config import TrainConfig, config_from_dict, load_config

ROOT_CONFIGS = ["configs/tiny.yaml", "configs/smol.yaml"]


@pytest.mark.parametrize("path", ROOT_CONFIGS)
def test_shipped_configs_load(path):
    from tests.conftest import ROOT

    config = load_config(ROOT / path)
    assert config.total_steps >= 1


def test_paper_configs_load():
    from tests.conftest import ROOT

    paths = sorted((ROOT / "configs" / "paper").glob("*.yaml"))
    assert len(paths) == 5
    for path in paths:
        c = load_config(path)
        assert (c.alpha, c.k, c.lr, c.batch_size, c.seq_len, c.kl_direction) == (1.0, 0.25, 1e-4, 128, 1024, "forward")
        assert c.total_steps == 76


def test_unknown_key_is_an_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("alpha: 1.0\nlearning_rate: 0.1\n")
    with pytest.raises(SdlibError, match="unknown config key 'learning_rate'"):
        load_config(p)
    with pytest.raises(SdlibError, match="unknown config key 'bogus'"):
        load_config(None, ["--bogus", "1"])


@pytest.mark.parametrize("override, message", [
    (["--lr", "0"], "lr must be"), (["--lr", "-1e-4"], "lr must be"), (["--alpha", "-1"], "alpha must be"),
    (["--k", ".nan"], "k must be finite"), (["--k", ".inf"], "k must be finite"),
    (["--seq_len", "abc"], "must be int"), (["--batch_size", "12", "--micro_batch", "5"], "multiple"),
    (["--kl_direction", "up"], "'kl_direction' in the command line must be one of forward, reverse"),
        (["--last_state", "x"], "'last_state' in the command line must be one of normed, pre_norm"),
    (["--max_tokens", "10"], "below one step"), (["--lr"], "needs a value"),
])
def test_bad_values(override, message):
    with pytest.raises(SdlibError, match=message):
        load_config(None, override)


def test_overrides_parse_yaml_scalars():
    assert parse_overrides(["--lr", "3e-4", "--name=x", "--model_options", "{num_layers: 2}"]) == {
        "lr": 3e-4, "name": "x", "model_options": {"num_layers": 2}}
    c = load_config(None, ["--max_tokens", "1e6", "--lr", "1e-3"])
    assert c.max_tokens == 1_000_000 and c.lr == 1e-3


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(SdlibError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("alpha: [1\n")
    with pytest.raises(SdlibError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(SdlibError, match="mapping"):
        load_config(bad)


_values = st.one_of(st.integers(-10**9, 10**9), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=8), st.booleans(), st.none())


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["lr", "alpha", "k", "seq_len", "batch_size", "micro_batch", "name",
                                        "max_tokens", "chunk_size", "kl_direction", "bogus"]), _values, max_size=5))
def test_loader_accepts_only_valid_configs(values):
    """Property: the loader either returns a config that satisfies every invariant, or raises SdlibError."""
    try:
        c = config_from_dict(values)
    except SdlibError:
        return
    assert isinstance(c, TrainConfig) and "bogus" not in values
    assert c.lr > 0 and math.isfinite(c.lr) and c.alpha >= 0 and math.isfinite(c.k)
    assert c.batch_size % c.micro_batch == 0 and c.total_steps >= 1
    assert isinstance(c.seq_len, int) and isinstance(c.name, str)
    assert yaml.safe_load(yaml.safe_dump(c.to_dict())) == c.to_dict()


def test_lr_multipliers_and_shuffle_are_validated():
    from sdlib.train.config import load_config

    c = load_config(None, {"lr_multipliers": {"final_norm": 100}, "shuffle": True})
    assert c.lr_multipliers == {"final_norm": 100} and c.shuffle is True
    for bad, message in (({"final_nrom": 2}, "unknown group 'final_nrom'"), ({"final_norm": 0}, "finite number > 0"),
                         ({"final_norm": "x"}, "finite number > 0")):
        with pytest.raises(SdlibError, match=message):
            load_config(None, {"lr_multipliers": bad})


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "run name"])
def test_a_run_name_cannot_leave_the_runs_folder(name):
    with pytest.raises(SdlibError, match="may hold only letters"):
        load_config(None, {"name": name})


def test_renamed_key_still_reads():
    assert load_config(None, {"lens_layers": 4}).lens_samples == 4


def test_a_bad_override_is_blamed_on_the_command_line_not_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("lr: 1.0e-4\n")
    with pytest.raises(SdlibError, match="config key 'lr' in the command line must be float, got 'abc'"):
        load_config(p, ["--lr", "abc"])
    p.write_text("lr: abc\n")
    with pytest.raises(SdlibError, match=f"config key 'lr' in {p} must be float"):
        load_config(p)


def test_the_budget_line_says_steps_tokens_and_what_is_beyond_the_paper():
    paper = TrainConfig().budget()
    assert "76 optimizer steps x 128 sequences x 1024 tokens = 131,072 tokens per step" in paper
    assert "the paper's 10M tokens" in paper and "beyond the paper" not in paper
    mine = TrainConfig(max_tokens=2048, batch_size=4, micro_batch=2, seq_len=64, last_weight=0.5).budget()
    assert mine.endswith("8 optimizer steps x 4 sequences x 64 tokens = 256 tokens per step, 2,048 tokens in all; "
                         "beyond the paper: last_weight 0.5")


def test_a_grid_given_as_a_config_is_named_as_a_grid():
    from tests.conftest import ROOT

    with pytest.raises(SdlibError, match=r"is a grid .*00-paper.*sdlib train .*:CELL"):
        load_config(ROOT / "configs" / "ablations" / "smol-jump.yaml")
