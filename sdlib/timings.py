"""How long each stage of a run takes on this machine: measured, remembered, and used to estimate the next run.

Every long stage (installing a model, training, measuring, evaluating, running a notebook) records its wall time
in ``<build>/timings.json`` under this machine's name. ``sdlib plan`` and ``./run_all.sh`` estimate each stage of a
profile from, in order: this machine's own record of that stage; else the committed ``configs/timings.yaml``
(measured on a 2-core CPU from a fresh clone); else they say the stage is not yet timed.

Training is estimated per token (seconds per training token of that base model), measurement per measured token,
evaluation per (model, subset), a notebook per (profile, notebook). A stage whose result is already cached (the
same weights and settings were done before) is estimated at a few seconds.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlib.paths import build_dir, configs_dir
from sdlib.provenance import write_json

COMMITTED_MACHINE = "cpu x2"
"""the machine ``configs/timings.yaml`` was measured on: a 2-core CPU"""
CACHED_SECONDS = {"notebook": 15.0}
"""what a stage whose results are cached is estimated at, by kind (5 s for the others: loading a model)"""


def machine() -> str:
    """This machine's name for its timings: the first GPU's name, or ``cpu xN`` for N cores."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"cpu x{os.cpu_count()}"


def journal_path() -> Path:
    return build_dir() / "timings.json"


def committed_path() -> Path:
    return configs_dir() / "timings.yaml"


@dataclass(frozen=True)
class Estimate:
    """One stage's estimated wall time and where the estimate comes from."""

    seconds: float | None
    """None: never timed here or on the committed machine"""
    source: str
    """``measured here``, ``cached``, ``done``, ``on a 2-core CPU`` or ``not yet timed``"""

    def text(self) -> str:
        if self.seconds is None:
            return "time unknown (not yet timed)"
        if self.source == "done":
            return self.source
        if self.source == "cached":
            return f"~{duration(self.seconds)} (cached)"
        return f"~{duration(self.seconds)} ({self.source})"


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2.3 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _read_journal() -> dict[str, Any]:
    try:
        stored = json.loads(journal_path().read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return stored if isinstance(stored, dict) else {}


def _read_committed() -> dict[str, Any]:
    import yaml

    try:
        stored = yaml.safe_load(committed_path().read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return stored if isinstance(stored, dict) else {}


def _entries(stored: dict[str, Any], name: str) -> dict[str, Any]:
    entries = (stored.get(name) or {}) if isinstance(stored, dict) else {}
    return entries if isinstance(entries, dict) else {}


def record(kind: str, subject: str, seconds: float, units: float = 1.0, done: str | None = None) -> None:
    """Remember that ``kind`` of ``subject`` took ``seconds`` for ``units`` of work (tokens, or 1) on this machine.

    ``done`` names the exact result (a model's weights and settings) so a later plan knows it is cached. A stage
    much faster than its remembered rate was read from the cache: it marks ``done`` without replacing the rate.
    Never raises: timings are advice, and a run must not fail for them."""
    try:
        stored = _read_journal()
        mine = stored.setdefault(machine(), {})
        rates, finished = mine.setdefault("rates", {}), mine.setdefault("done", {})
        key = f"{kind}|{subject}"
        old = rates.get(key)
        if units > 0 and not (old and seconds / units < 0.25 * old["seconds"] / old["units"]):
            rates[key] = {"seconds": round(seconds, 2), "units": units}
        if done:
            finished[f"{kind}|{done}"] = round(seconds, 2)
        write_json(journal_path(), stored)
    except Exception:  # noqa: BLE001 -- a timing that cannot be written is dropped, never an error
        pass


def estimate(kind: str, subject: str, units: float = 1.0, done: str | None = None) -> Estimate:
    """The estimated wall time of ``kind`` for ``subject`` and ``units`` of work (see the module's docstring)."""
    here = _entries(_read_journal(), machine())
    if done and f"{kind}|{done}" in _entries(here, "done"):
        return Estimate(CACHED_SECONDS.get(kind, 5.0), "cached")
    key = f"{kind}|{subject}"
    for rates, source in ((_entries(here, "rates"), "measured here"),
                          (_entries(_entries(_read_committed(), COMMITTED_MACHINE), "rates"), "on a 2-core CPU")):
        rate = rates.get(key)
        if isinstance(rate, dict) and rate.get("units"):
            return Estimate(float(rate["seconds"]) * units / float(rate["units"]), source)
    return Estimate(None, "not yet timed")


def total_line(estimates: list[Estimate]) -> str:
    """``total ~1.2 h`` (with how many stages are not yet timed)."""
    known = sum(e.seconds for e in estimates if e.seconds is not None)
    unknown = sum(e.seconds is None for e in estimates)
    line = f"total ~{duration(known)}"
    return line + (f" + {unknown} stage(s) not yet timed" if unknown else "")
