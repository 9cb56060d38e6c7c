"""Write a figure as ``<name>.html`` (interactive; plotly.js once beside it), ``<name>.png`` (kaleido) and
``<name>.json`` (the numbers it shows + provenance), atomically, into the profile's figures folder."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from sdlib.provenance import atomic_path, nan_to_none, same_but_run_stamp, write_json
from sdlib.provenance import provenance as make_provenance


def save_figure(fig: go.Figure, name: str, numbers: dict[str, Any], out_dir: str | Path,
                provenance: dict[str, Any] | None = None, png: bool = True, records: Any = None) -> dict[str, Path]:
    """-> {"html": path, "png": path, "json": path}. ``numbers`` (what the figure shows, for readers) must be
    JSON-serialisable (arrays allowed); ``records``, what it was drawn from so a notebook can redraw it without
    computing: a list of records (``to_dict``) or a tidy DataFrame (its rows)."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / f"{name}.html", "json": out / f"{name}.json"}
    if png:
        paths["png"] = out / f"{name}.png"
    stored = {"figure": name, "numbers": numbers, "provenance": provenance or make_provenance()}
    if records is not None:
        # a DataFrame's rows (missing values as null), or each record exactly as it caches (NaN kept)
        stored["records"] = json_records(records) if hasattr(records, "columns") else [r.to_dict() for r in records]
    # "directory": a <script src="plotly.min.js"> beside the files, written once (offline, ~4.7 MB once); the plot's
    # element named for the figure, so the same drawing is the same text
    html = fig.to_html(include_plotlyjs="directory", full_html=True, div_id=name)
    if (all(p.is_file() for p in paths.values()) and paths["html"].read_text(encoding="utf-8") == html
            and same_but_run_stamp(paths["json"], stored)):
        return paths  # the same numbers drawn the same way: rewriting would change only when and where it was drawn
    with atomic_path(paths["html"]) as tmp:
        tmp.write_text(html, encoding="utf-8")
    if not (out / "plotly.min.js").exists():
        from plotly.offline import get_plotlyjs

        with atomic_path(out / "plotly.min.js") as tmp:
            tmp.write_text(get_plotlyjs(), encoding="utf-8")
    if png:
        with atomic_path(paths["png"]) as tmp:
            fig.write_image(tmp, format="png", scale=1.5)
    write_json(paths["json"], stored)
    return paths


def json_records(df) -> list[dict[str, Any]]:
    """DataFrame rows as JSON-ready dicts, missing values (NaN) as None."""
    return nan_to_none(df.to_dict("records"))


def finite_numbers(obj: Any) -> bool:
    """True when every number in a nested record is finite (what CI checks of each figure's JSON)."""
    if isinstance(obj, dict):
        return all(finite_numbers(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(finite_numbers(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True
