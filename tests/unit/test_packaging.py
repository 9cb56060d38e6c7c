import re

import yaml

from tests.conftest import ROOT


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def test_environment_yml_mirrors_pyproject():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    wanted = {_norm(r.split("#")[0]) for r in project["dependencies"] + optional["test"] + optional["dev"]
              if not r.startswith("ruff")}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_norm(r) for r in pip if not r.startswith("-e")}
    assert listed == wanted


def test_torch_is_a_range_and_setup_pins_it():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = next(d for d in deps if d.startswith("torch"))
    assert "<" in torch_req and ">=" in torch_req
    assert "torch==2.13.0" in (ROOT / "scripts" / "setup.sh").read_text()


def test_relative_folder_variables_become_absolute(monkeypatch, tmp_path):
    """Notebook kernels run in notebooks/, so a relative SDLIB_DATA_DIR must be resolved before they start."""
    import os

    from sdlib.paths import absolute_path_variables

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SDLIB_DATA_DIR", "../data")
    monkeypatch.setenv("SDLIB_BUILD_DIR", "build")
    monkeypatch.delenv("SDLIB_CACHE_DIR", raising=False)
    absolute_path_variables()
    assert os.environ["SDLIB_DATA_DIR"] == str((tmp_path / "../data").resolve())
    assert os.environ["SDLIB_BUILD_DIR"] == str(tmp_path / "build") and "SDLIB_CACHE_DIR" not in os.environ


def test_license_citation_and_version_are_there():
    import subprocess
    import sys

    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and "numerical convergence" in citation["preferred-citation"]["title"]
    done = subprocess.run([sys.executable, "-m", "sdlib", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "sdlib 0.2.0"


def test_the_library_asks_for_ranges_not_exact_pins():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    exact = [d for d in project["dependencies"] if "==" in d]
    assert not exact, f"exact pins inside the library's dependencies: {exact}"
    assert any(d.startswith("jupyterlab") for d in project["dependencies"])  # Jupyter-first: installed by default
