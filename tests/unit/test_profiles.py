"""Profiles list configs, grid cells and labelled recipes; two recipes on one base model measure and draw the base
model once, and a grid cell named in a profile is the grid's own run."""

import pytest

from sdlib.cli import main
from sdlib.errors import SdlibError
from sdlib.experiments import profiles
from sdlib.experiments.grid_config import load_grid, load_run_config
from sdlib.experiments.profiles import load_profile, profile_names
from sdlib.types import Role

GRID = "base: {model: tiny-llama, model_options: {num_layers: 2}, lr: 1.0e-3}\ncells:\n  a: {}\n  b: {alpha: 0.0}\n"


@pytest.fixture()
def project(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "g.yaml").write_text(GRID)
    (tmp_path / "configs" / "other.yaml").write_text("name: other\nmodel: tiny-qwen2\n")
    monkeypatch.setattr(profiles, "configs_dir", lambda: tmp_path / "configs")
    monkeypatch.setattr(profiles, "project_root", lambda: tmp_path)
    monkeypatch.setenv("SDLIB_BUILD_DIR", str(tmp_path / "build"))
    return tmp_path


def _profiles(project, text):
    (project / "configs" / "profiles.yaml").write_text(text)


def test_a_grid_cell_is_a_config_and_its_run_is_the_grids(project):
    config = load_run_config(project / "configs" / "g.yaml:b")
    assert config.name == "abl-g-b" and config.alpha == 0.0 and config.lr == 1.0e-3
    assert config.to_dict() == load_grid(project / "configs" / "g.yaml").config("b").to_dict()
    assert load_run_config(project / "configs" / "g.yaml:b", ["--lr", "2e-3"]).lr == 2e-3
    with pytest.raises(SdlibError, match="grid g has no cell 'c'"):
        load_run_config(project / "configs" / "g.yaml:c")


def test_two_recipes_on_one_base_model_share_its_pretrained_model(project):
    _profiles(project, "p:\n  configs:\n    - {config: configs/g.yaml:a, label: recipe A}\n"
                       "    - {config: configs/g.yaml:b, label: zeta1 only}\n    - configs/other.yaml\n")
    p = load_profile("p")
    models = p.models()
    assert [(pair.name, role) for pair, role in models] == [
        ("abl-g-a", Role.PRETRAINED), ("other", Role.PRETRAINED),
        ("abl-g-a", Role.SELF_DISTILLED), ("abl-g-b", Role.SELF_DISTILLED), ("other", Role.SELF_DISTILLED)]
    labels = [pair.label(role) for pair, role in models]
    assert len(set(labels)) == len(labels)
    assert labels[2] == "tiny-llama (self-distilled: recipe A)" and labels[1] == "tiny-qwen2 (pretrained)"


def test_a_bad_profile_entry_is_one_line(project):
    _profiles(project, "p:\n  configs: [{config: configs/g.yaml:a, colour: red}]\n")
    with pytest.raises(SdlibError, match=r"profile p: a configs entry is a path or \{config: PATH, label: TEXT\}"):
        load_profile("p")


def test_the_default_profile_is_the_jump_study_and_its_cells_exist():
    p = load_profile()
    assert p.name == "jump" and {pair.model for pair in p.pairs} == {"smollm2-135m-instruct"}
    assert [pair.name for pair in p.pairs] == ["abl-smol-jump-00-paper", "abl-smol-jump-08-pre-norm-reverse-kl"]
    assert len(p.models()) == 3 and p.figures_dir().name == "jump" and p.figures_dir().parent.name == "figures"
    assert [pair.label(role) for pair, role in p.models()] == [
        "smollm2-135m-instruct Q4_1 (pretrained)",
        "smollm2-135m-instruct Q4_1 (self-distilled: the paper's recipe)",
        "smollm2-135m-instruct Q4_1 (self-distilled: pre-norm zeta2, reverse KL (beyond the paper))"]
    # the fold-split notebook splits the base model and both trained runs
    assert p.fold_models() == ["smollm2-135m-instruct"] + [str(pair.trained_dir()) for pair in p.pairs]
    qwen = load_profile("qwen")
    assert qwen.figures_dir().resolve() == load_profile("atlas").figures_dir().resolve() == p.figures_dir().parent


def test_a_profile_added_to_the_file_needs_no_code(project):
    _profiles(project, "mine:\n  configs: [configs/other.yaml]\n  eval_subset: tiny\n")
    assert profile_names() == ["mine"] and load_profile("mine").pairs[0].model == "tiny-qwen2"
    assert main(["plan", "--profile", "mine", "--configs"]) == 0


def test_a_bad_override_of_a_grid_cell_blames_the_command_line(project):
    with pytest.raises(SdlibError, match="the command line"):
        load_run_config(project / "configs" / "g.yaml:a", ["--lr", "abc"])
