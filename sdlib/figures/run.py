"""Regenerate the figures of a profile: compute (cached) what they need, then execute every notebook with
papermill on the project's Jupyter kernel. Executed notebooks go to ``<build>/notebooks/<profile>/``."""

from __future__ import annotations

import time
from pathlib import Path

from sdlib.errors import SdlibError
from sdlib.profiles import WHICH, load_profile

NOTEBOOKS = ("00_quickstart", "fig03_movement", "fig04_pca", "fig05_lambada", "fig06_wikitext", "fig07_logit_lens",
             "table_summary", "ext_pruning", "atlas", "gpu_study")
# what a profile draws unless it names its notebooks (configs/profiles.yaml)
DEFAULT_NOTEBOOKS = tuple(n for n in NOTEBOOKS if n != "gpu_study")
KERNEL = "sdlib"


def notebooks_dir() -> Path:
    from sdlib.paths import project_root

    return project_root() / "notebooks"


def prepare(profile_name: str, device: str | None = None) -> dict[str, float]:
    """Measure and evaluate every baseline and self-distilled model of the profile (cached); -> timings (s)."""
    from sdlib.figures import compute

    profile = load_profile(profile_name)
    timings = {}
    for pair in profile.pairs:
        for which in WHICH:
            for what, fn in (("measure", compute.movement), ("evaluate", compute.layer_scores)):
                t0 = time.perf_counter()
                print(f"== {what} {pair.label(which)}", flush=True)
                fn(profile, pair, which, device=device)
                timings[f"{what} {pair.name} {which}"] = time.perf_counter() - t0
    return timings


def _kernel_name() -> str | None:
    from jupyter_client.kernelspec import KernelSpecManager

    return KERNEL if KERNEL in KernelSpecManager().find_kernel_specs() else None


def run_notebooks(profile_name: str, names: list[str] | None = None, parameters: dict | None = None,
                  progress: bool = True) -> dict[str, float]:
    """Execute the notebooks (all, or ``names``) for a profile; -> wall time per notebook (s)."""
    import papermill

    from sdlib.paths import absolute_path_variables, build_dir

    profile = load_profile(profile_name)
    names = list(names or profile.notebooks or DEFAULT_NOTEBOOKS)
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        raise SdlibError(f"unknown notebook(s) {', '.join(unknown)}: use {', '.join(NOTEBOOKS)}")
    out_dir = build_dir() / "notebooks" / profile_name
    out_dir.mkdir(parents=True, exist_ok=True)
    kernel = _kernel_name()
    absolute_path_variables()  # the kernels run in notebooks/: a relative SDLIB_DATA_DIR would point elsewhere
    timings = {}
    for name in names:
        src = notebooks_dir() / f"{name}.ipynb"
        t0 = time.perf_counter()
        print(f"== notebook {name} ({profile_name})", flush=True)
        values = {"profile": profile_name, **(profile.quickstart if name == "00_quickstart" else {}),
                  **(parameters or {})}
        try:
            papermill.execute_notebook(src, out_dir / f"{name}.ipynb", parameters=values,
                                       kernel_name=kernel, cwd=str(notebooks_dir()), progress_bar=progress)
        except papermill.PapermillExecutionError as err:
            raise SdlibError(f"notebook {name} failed in cell {err.exec_count}: {err.ename}: "
                             f"{str(err.evalue).splitlines()[0] if err.evalue else ''} "
                             f"(executed copy: {out_dir / (name + '.ipynb')})") from None
        timings[name] = time.perf_counter() - t0
    return timings
