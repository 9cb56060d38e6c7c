"""The committed figures: one clean commit made them all, every S carries its measurement setting, and every
notebook redraws them with its defaults (a reader's "Run All" on a fresh clone) in under a minute."""

import json
import re
import shutil
import subprocess

import papermill
import pytest

from sdlib.data import TextWindows
from sdlib.errors import SdlibError
from sdlib.evaluation.movement import MeasureRecord, MeasureSettings
from sdlib.experiments import compare
from sdlib.experiments.grid import log_setting
from sdlib.experiments.grid_config import load_grid
from sdlib.experiments.profiles import load_profile
from sdlib.figures.run import kernel_name, redraw_grid
from sdlib.provenance import same_but_run_stamp
from tests.conftest import ROOT, hang_guard

pytestmark = pytest.mark.committed  # checks committed artefacts and history: CI and ./run_tests.sh, not --fast

FIGURES = ROOT / "figures"
# figures/ (the qwen and atlas profiles, the grids) and figures/jump/ (the default profile); figures/gpu/ (the GPU
# study's record, another machine) is its own
JSONS = sorted(FIGURES.glob("*.json")) + sorted((FIGURES / "jump").glob("*.json"))
CLEAN_COMMIT = re.compile(r"[0-9a-f]{40}")  # a sha without "+dirty"
STANDARD = MeasureSettings().describe()  # "wikitext-test, 64 x 512 tokens spread over the text"


def _walk(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _measurements(figure: dict) -> list[dict]:
    """Every measurement record in a figure's JSON: a dict with S and the windows it was measured on."""
    return [d for d in _walk(figure.get("records")) if {"S", "n_windows", "window_len"} <= set(d)]


def test_the_committed_figures_exist():
    assert len(JSONS) >= 10, [p.name for p in JSONS]
    for path in JSONS:
        # every figure is interactive; the 3-D views (`*_3d`) have no static PNG
        for ext in ("html",) if path.stem.endswith("_3d") else ("png", "html"):
            assert path.with_suffix(f".{ext}").stat().st_size > 0, f"{path.stem}.{ext} missing"


def _git():
    """git and a full history, or a skip: the commits cannot be looked up otherwise."""
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the commit cannot be looked up")
    shallow = subprocess.run([git, "rev-parse", "--is-shallow-repository"], cwd=ROOT, capture_output=True, text=True)
    if shallow.stdout.strip() == "true":
        pytest.skip("a shallow clone may not hold the figures' commits")
    return git


def _in_history(git: str, commit: str) -> bool:
    return subprocess.run([git, "merge-base", "--is-ancestor", commit, "HEAD"], cwd=ROOT,
                          capture_output=True).returncode == 0


def test_every_committed_figure_was_drawn_at_a_clean_commit_of_this_history():
    """A redraw that would change nothing but when and where a figure was drawn leaves its files alone, so figures
    keep the commit that last changed them; each is a clean commit a reader can check out (and the redraw tests below
    hold that this checkout draws every figure the same)."""
    git = _git()
    for path in JSONS:
        commit = json.loads(path.read_text())["provenance"]["git_commit"]
        assert CLEAN_COMMIT.fullmatch(commit or ""), f"{path.name}: provenance {commit!r} is not a clean commit"
        assert _in_history(git, commit), f"{path.name}: drawn at {commit[:12]}, not in this checkout's history"


def test_every_record_was_computed_at_a_clean_commit_of_this_history():
    """A record read from the cache keeps the provenance of the commit that computed it (older than the drawing's,
    when the code it ran is unchanged): that commit, too, is clean and one a reader can check out."""
    computed = {}
    for path in JSONS:
        for node in _walk(json.loads(path.read_text()).get("records")):
            if "git_commit" in node:
                computed.setdefault(node["git_commit"], set()).add(path.name)
        # a figure redrawn from saved JSON names the commits that computed what it shows
        for commit in json.loads(path.read_text())["provenance"].get("computed_at", []):
            computed.setdefault(commit, set()).add(path.name)
    assert computed, "no record in the committed figures says where it was computed"
    for commit, names in computed.items():
        assert CLEAN_COMMIT.fullmatch(commit or ""), f"{sorted(names)}: a record from {commit!r}"
    git = _git()
    for commit, names in computed.items():
        assert _in_history(git, commit), f"{sorted(names)}: records from {commit[:12]}, not in this history"


@pytest.mark.parametrize("path", JSONS, ids=lambda p: p.stem)
def test_every_S_carries_its_measurement_setting(path):
    figure = json.loads(path.read_text())
    for m in _measurements(figure):
        setting = m.get("info", {}).get("setting")
        assert setting, f"{path.name}: a measurement of {m.get('model')} does not say where it was measured"
        windows = TextWindows(m["info"].get("text", ""), m["n_windows"], m["window_len"])
        assert setting == windows.describe(), f"{path.name}: {setting!r} is not what {windows} were measured on"
        if path.stem != "00_quickstart":  # the quickstart is a first look at any model, on its own smaller setting
            assert setting == STANDARD, f"{path.name}: {m.get('model')} measured on {setting!r}, not {STANDARD!r}"


def _summary():
    import pandas as pd

    return pd.DataFrame(json.loads((FIGURES / "table_summary.json").read_text())["records"])


def _models(table) -> list[str]:
    return [c for c in table.columns if c != "metric" and not c.startswith("paper: ")]


def test_the_summary_table_says_where_every_S_was_measured():
    """The table's S have no measurement record of their own in its JSON: its "S measured on" row says, for every
    model column, and it is the standard setting the movement figure's records were measured on."""
    table = _summary()
    rows = table[table.metric == compare.SETTING_ROW]
    assert len(rows) == 1, f"table_summary has no {compare.SETTING_ROW!r} row"
    assert _models(table) and {rows.iloc[0][m] for m in _models(table)} == {STANDARD}


def test_a_summary_saved_without_its_setting_row_gets_it_from_its_own_records():
    records = [MeasureRecord.from_dict(r) for r in json.loads((FIGURES / "fig03_movement.json").read_text())["records"]]
    older = _summary()
    older = older[older.metric != compare.SETTING_ROW].reset_index(drop=True)
    table = compare.with_setting_row(older, records)
    assert list(table.columns) == list(older.columns) and len(table) == len(older) + 1
    row = table[table.metric == compare.SETTING_ROW].iloc[0]
    assert {row[m] for m in _models(table)} == {STANDARD}
    assert table.metric.tolist().index(compare.SETTING_ROW) == table.metric.tolist().index(compare.TOKENS_ROW) - 1
    # records that are not the table's (another S) are refused, not joined
    other = older.copy()
    label = _models(other)[0]
    other.loc[other.metric == "S (normed)", label] = "0.111 [0.110, 0.112]"
    with pytest.raises(SdlibError, match="not the records it was computed from"):
        compare.with_setting_row(other, records)
    with pytest.raises(SdlibError, match="no measurement record"):
        compare.with_setting_row(older, [r for r in records if r.label != label])


def test_a_grid_redraws_from_its_saved_json(tmp_path):
    """`sdlib grid redraw`: the committed grid's figures again from their JSON alone, showing the same numbers,
    with the commits that computed them kept."""
    names = [p.name for p in FIGURES.glob("ablation_grid_*.json")]
    assert names, "no grid figure is committed"
    for name in names:
        shutil.copy(FIGURES / name, tmp_path / name)
    grids = [n.removeprefix("ablation_grid_").removesuffix(".json") for n in names if not n.endswith("_training.json")]
    for grid in grids:
        spec = load_grid(str(ROOT / "configs" / "ablations" / f"{grid}.yaml"))
        written = redraw_grid(spec, tmp_path)
        assert sorted(p.name for p in written) == sorted([f"ablation_grid_{grid}.json",
                                                          f"ablation_grid_{grid}_training.json"])
        for path in written:
            committed, redrawn = (json.loads(p.read_text()) for p in (FIGURES / path.name, path))
            assert redrawn["numbers"] == committed["numbers"]
            assert redrawn["provenance"]["computed_at"] == (committed["provenance"].get("computed_at")
                                                            or [committed["provenance"]["git_commit"]])
            assert path.with_suffix(".png").stat().st_size > 0 and path.with_suffix(".html").stat().st_size > 0
        # `./run_all.sh --redraw` over the committed files leaves them as they are: only provenance would change
        clean = tmp_path / f"clean-{grid}"
        clean.mkdir()
        files = [FIGURES / f"ablation_grid_{grid}{part}.{ext}" for part in ("", "_training")
                 for ext in ("json", "png", "html")]
        for path in files:
            shutil.copy(path, clean / path.name)
        redraw_grid(spec, clean)
        assert all((clean / p.name).read_bytes() == p.read_bytes() for p in files), "a redraw rewrote a figure"
        # the over-training panels are the training logs' measurement, and say so
        logged = json.loads((FIGURES / f"ablation_grid_{grid}_training.json").read_text())["numbers"]["grid"]
        expected = log_setting(spec)
        assert logged.get("log_setting") == expected and expected.endswith("first tokens"), logged


# the notebooks whose figure is committed (a notebook whose figure is not, such as the GPU study's, says so in one line)
NOTEBOOKS = [p for p in sorted((ROOT / "notebooks").glob("*.ipynb")) if (FIGURES / f"{p.stem}.json").exists()]


def test_the_default_profile_notebooks_have_committed_figures():
    assert {p.stem for p in NOTEBOOKS} >= set(load_profile("qwen").notebooks)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_redraws_the_committed_figure_with_its_defaults(notebook, tmp_path, monkeypatch):
    """papermill with no parameters at all, as on a fresh clone: no model, run or cache is needed, the figure is
    written under the build folder (never over figures/), and it shows the committed numbers."""
    build = tmp_path / "build"
    monkeypatch.setenv("SDLIB_BUILD_DIR", str(build))
    monkeypatch.setenv("SDLIB_CACHE_DIR", str(tmp_path / "cache"))  # nothing cached: nothing to lean on
    before = {p.name: p.stat().st_mtime_ns for p in FIGURES.iterdir()}
    papermill.execute_notebook(notebook, tmp_path / notebook.name, kernel_name=kernel_name(),
                               cwd=str(notebook.parent), progress_bar=False,
                               execution_timeout=int(hang_guard(300)))  # a guard against a hang, not a timing
    assert {p.name: p.stat().st_mtime_ns for p in FIGURES.iterdir()} == before, "a notebook wrote into figures/"
    redrawn = list((build / "figures").rglob(f"{notebook.stem}.json"))
    assert len(redrawn) == 1, f"{notebook.stem} wrote {redrawn}"
    committed, again = (json.loads(p.read_text()) for p in (FIGURES / f"{notebook.stem}.json", redrawn[0]))
    assert again["numbers"] == committed["numbers"]
    # everything the file holds, but when and at which commit it was drawn, is the committed figure's
    assert same_but_run_stamp(FIGURES / f"{notebook.stem}.json", again), f"{notebook.stem} redraws otherwise"
    # drawn at this checkout's commit; what it shows keeps the commits that computed it
    assert again["provenance"]["computed_at"] == (committed["provenance"].get("computed_at")
                                                  or [committed["provenance"]["git_commit"]])


def test_the_results_fold_split_table_is_the_committed_records():
    """RESULTS.md's fold-split table is ``markdown_table`` of the records in figures/fold_split.json, line for line."""
    from sdlib.studies.fold_split import FoldSplitRecord, markdown_table

    records = [FoldSplitRecord.from_dict(r) for r in json.loads((FIGURES / "fold_split.json").read_text())["records"]]
    table = markdown_table(records)
    assert table in (ROOT / "RESULTS.md").read_text(), "RESULTS.md's fold-split table differs from the records"
    for r in records:  # and what the table says holds: the fold moved no output
        assert r.max_logit_diff < 1e-3 and r.lambada_changed <= 1 and r.lambada_n == 500


@pytest.mark.parametrize("grid_name", ["smol-jump", "qwen-cpu"])
def test_the_results_grid_table_is_the_committed_records(monkeypatch, grid_name):
    """RESULTS.md's table of each grid's recorded cells is ``markdown_table`` of its committed records under
    records/grids/ (the SmolLM2 grid; the Qwen cells run since records were kept)."""
    import pandas as pd

    monkeypatch.setenv("SDLIB_RECORDS_DIR", str(ROOT / "records"))
    from sdlib.experiments.grid import markdown_table, read_record, recorded_cells

    grid = load_grid(str(ROOT / "configs" / "ablations" / f"{grid_name}.yaml"))
    cells = [read_record(grid, None)] + [read_record(grid, c) for c in recorded_cells(grid)]
    assert len(cells) > 1, f"no cell of {grid_name} is recorded"
    table = markdown_table(pd.DataFrame([c.row() for c in cells]))
    assert table in (ROOT / "RESULTS.md").read_text(), f"RESULTS.md's {grid_name} table differs from the records"


def test_the_results_qwen_table_is_the_committed_grid_record():
    """RESULTS.md's Qwen2.5 grid table is ``markdown_table`` of the cells recorded in the grid figure's JSON."""
    import pandas as pd

    from sdlib.experiments.grid import markdown_table

    cells = json.loads((FIGURES / "ablation_grid_qwen-cpu.json").read_text())["numbers"]["cells"]
    table = markdown_table(pd.DataFrame.from_records(cells, coerce_float=True))
    assert len(cells) > 1 and table in (ROOT / "RESULTS.md").read_text(), "RESULTS.md's Qwen table differs"


def test_the_results_atlas_table_quotes_the_committed_atlas():
    """RESULTS.md's atlas table (section 5): S with its interval, final-layer LAMBADA with its interval, the best
    LAMBADA layer and the final-layer WikiText perplexity of each model, read back from figures/atlas.json and
    written as the table rounds them (an independent formatting of the record, not the notebook's)."""
    saved = json.loads((FIGURES / "atlas.json").read_text())["numbers"]
    lines = (ROOT / "RESULTS.md").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| | SmolLM2-135M-Instruct | Gemma-3-270M |"))
    rows = {}
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:4]
    models = ["smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct"]
    (n,) = {saved[m]["evaluation"]["lambada_n"] for m in models}  # one evaluation subset for all three
    (pages,) = {saved[m]["evaluation"]["wikitext_n"] for m in models}
    for i, m in enumerate(models):
        s, e = saved[m], saved[m]["evaluation"]
        for reading, label in (("normed", "S normed [95% bootstrap over articles]"), ("pre_norm", "S pre_norm [95%]")):
            lo, hi = s["S_interval"][reading]
            assert rows[label][i] == f"{s['S'][reading]:.4f} [{lo:.4f}, {hi:.4f}]", (m, reading)
        acc, lo, hi = e["lambada_acc"][-1], e["lambada_lo"][-1], e["lambada_hi"][-1]
        assert rows[f"LAMBADA final layer [95% bootstrap], n = {n}"][i] == f"{acc:.3f} [{lo:.3f}, {hi:.3f}]", m
        best = max(range(len(e["lambada_acc"])), key=e["lambada_acc"].__getitem__)
        assert rows["LAMBADA best layer"][i].replace("*", "").startswith(str(best)), m
        ppl = rows[f"WikiText word perplexity, final layer ({pages} pages)"][i]
        assert float(ppl) == pytest.approx(e["wikitext_word_ppl"][-1], abs=0.051), m
