"""The study shape: every registered study has frozen settings with defaults and a record that round-trips; the
"adding a study" example of docs/layout.md is a real registered module; a study added by one file and one
registration runs from the command line and is cached."""

import dataclasses
import json
import re
import textwrap
from pathlib import Path

import pytest

from sdlib.cli import main
from sdlib.errors import SdlibError
from sdlib.studies import registry
from sdlib.studies.base import Study

ROOT = Path(__file__).resolve().parents[2]
TEXT = "the cat sat on the mat and the dog slept by the fire. " * 40


def test_every_study_has_frozen_settings_with_defaults():
    assert registry.STUDIES
    for name, study in registry.STUDIES.items():
        assert study.name == name
        settings = study.settings()  # every field has a default
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(settings, dataclasses.fields(settings)[0].name, None)
        assert hasattr(study.record, "to_dict") and hasattr(study.record, "from_dict")
    with pytest.raises(SdlibError, match="unknown study"):
        registry.get("no-such-study")
    with pytest.raises(SdlibError, match="already registered"):
        registry.register(dataclasses.replace(registry.get("norms")))


def test_the_layout_guides_example_is_the_registered_norms_study():
    guide = (ROOT / "docs" / "layout.md").read_text()
    section = guide[guide.index("## Adding a model family, a study or a figure"):]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert block == (ROOT / "sdlib/studies/norms.py").read_text()
    registrations = [line.strip() for line in (ROOT / "sdlib/studies/registry.py").read_text().splitlines()
                     if line.strip().endswith(".STUDY,")]
    assert "norms.STUDY," in registrations and registrations.count("norms.STUDY,") == 1


def test_a_study_from_one_file_and_one_registration_runs_and_caches(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SDLIB_BUILD_DIR", str(tmp_path / "build"))
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    module = tmp_path / "first_norm.py"
    module.write_text(textwrap.dedent('''
        from dataclasses import dataclass

        from sdlib.cache import Record
        from sdlib.evaluation.subject import Subject
        from sdlib.studies.base import Study

        CALLS = []


        @dataclass(frozen=True)
        class Settings:
            scale: float = 1.0


        @dataclass
        class Result(Record):
            value: float


        def compute(subject: Subject, settings: Settings) -> Result:
            CALLS.append(settings)
            w = next(subject.model.parameters()).detach()
            return Result(settings.scale * float(w.double().norm()))


        STUDY = Study("first-norm", "the first parameter's norm", Settings, Result, compute,
                      lambda r: f"value {r.value:.6f}")
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    import first_norm

    monkeypatch.setitem(registry.STUDIES, "first-norm", registry.register(first_norm.STUDY))
    assert main(["study", "first-norm", "tiny-llama", "--scale", "2"]) == 0
    first = capsys.readouterr().out
    assert main(["study", "first-norm", "tiny-llama", "--scale=2"]) == 0
    assert capsys.readouterr().out == first and len(first_norm.CALLS) == 1  # the second run is a cache hit
    assert main(["study", "first-norm", "tiny-llama", "--scale", "3", "--json"]) == 0
    third = json.loads(capsys.readouterr().out.split("\ncached under")[0])
    value2 = float(first.split()[1])
    assert third["value"] == pytest.approx(1.5 * value2, rel=1e-5) and len(first_norm.CALLS) == 2
    assert main(["study", "first-norm", "tiny-llama", "--colour", "red"]) == 2
    assert "unknown first-norm setting 'colour'" in capsys.readouterr().err


def test_norms_study_against_a_plain_forward_pass(tmp_path, monkeypatch):
    import torch

    from sdlib.data import spread_windows
    from sdlib.models import load

    monkeypatch.setenv("SDLIB_BUILD_DIR", str(tmp_path / "build"))
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    model, tok = load("tiny-llama", num_layers=2, hidden_size=32)
    study = registry.get("norms")
    record = study.run("tiny-llama", study.settings_from({"text": str(text), "windows": 2, "window_len": 16}),
                       loaded=(model, tok))
    ids = spread_windows(tok, TEXT, 2, 16)[0]  # the settings' default placement
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states  # h_-1 .. h_L, the last one normed
    expected = [float(h.double().norm(dim=-1).median()) for h in hidden[:-1]]
    assert record.median_norm[:-1] == pytest.approx(expected, rel=1e-6)
    assert len(record.median_norm) == len(hidden)
    assert type(record).from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_profiles_and_notebooks_find_a_study(monkeypatch, tmp_path):
    from sdlib.figures.run import FigureRun

    monkeypatch.setenv("SDLIB_BUILD_DIR", str(tmp_path / "build"))
    run = FigureRun("tiny")
    assert run.profile.study_settings("norms") == registry.get("norms").settings(
        **run.profile.studies.get("norms", {}))
    with pytest.raises(SdlibError, match="unknown study"):
        run.profile.study_settings("nope")
    assert isinstance(registry.get("atlas"), Study)


def test_sdlib_measure_the_measure_study_and_a_profile_reach_one_cached_measurement(tmp_path, monkeypatch, capsys):
    """One model under study, one cached measurement: what `sdlib measure` computed, the registered `measure` study
    and a profile's pretrained model read back without measuring again (and equal it to the last digit)."""
    from sdlib.evaluation import subject as subject_module
    from sdlib.evaluation.movement import MeasureSettings
    from sdlib.experiments.profiles import Pair
    from sdlib.train.config import TrainConfig
    from sdlib.types import Role

    monkeypatch.setenv("SDLIB_BUILD_DIR", str(tmp_path / "build"))
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    assert main(["measure", "tiny-llama", "--text", str(text), "--windows", "3", "--window-len", "32", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)

    def measured_again(*args, **kwargs):
        raise AssertionError("measured again: the cached measurement was not found")

    monkeypatch.setattr(subject_module, "measure_model", measured_again)
    settings = MeasureSettings(text=str(text), windows=3, window_len=32)
    by_study = registry.get("measure").run("tiny-llama", settings, progress=False)
    pair = Pair("t.yaml", TrainConfig(name="t", model="tiny-llama"))
    by_profile = pair.subject(Role.PRETRAINED).measurement(settings)
    for record in (by_study, by_profile):
        assert record.S == printed["S"] and record.D == printed["D"]
    assert by_profile.role == "pretrained" and by_profile.label.endswith("(pretrained)")
    with pytest.raises(AssertionError, match="measured again"):  # other windows are another measurement
        pair.subject(Role.PRETRAINED).measurement(MeasureSettings(text=str(text), windows=2, window_len=32))


def test_the_lens_study_is_the_lens_grid_of_its_model_and_is_cached(tmp_path, monkeypatch):
    from sdlib.models import load
    from sdlib.studies import lens_grid

    monkeypatch.setenv("SDLIB_BUILD_DIR", str(tmp_path / "build"))
    model, tokenizer = load("tiny-llama")
    settings = lens_grid.LensSettings(text=TEXT[:200], positions=5, last=2)
    first = registry.get("lens").run("tiny-llama", settings, loaded=(model, tokenizer), progress=False)
    plain = lens_grid.lens_grid_of(model, tokenizer, TEXT[:200], "tiny-llama", n_positions=5, n_last=2)
    assert first.to_dict() == plain.to_dict() and len(first.top_tokens[0]) == len(first.targets) == 5
    monkeypatch.setattr(lens_grid, "lens_grid_of", lambda *a, **k: pytest.fail("computed again"))
    again = registry.get("lens").run("tiny-llama", settings, loaded=(model, tokenizer), progress=False)
    assert again.to_dict() == first.to_dict()
