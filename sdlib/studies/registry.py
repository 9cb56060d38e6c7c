"""Every study, by name: what the command line (``sdlib study``), the profiles and the notebooks look up.
Adding a study is one module that defines ``STUDY`` and one line here."""

from __future__ import annotations

from sdlib.errors import SdlibError
from sdlib.studies import atlas, early_exit, fold_split, last_layer, lens_grid, movement, norms
from sdlib.studies.base import Study

STUDIES: dict[str, Study] = {}


def register(study: Study) -> Study:
    """Add ``study`` under its name (a second study of the same name is refused)."""
    if study.name in STUDIES and STUDIES[study.name] is not study:
        raise SdlibError(f"a study named {study.name!r} is already registered")
    STUDIES[study.name] = study
    return study


def get(name: str) -> Study:
    if name not in STUDIES:
        raise SdlibError(f"unknown study {name!r}: use one of {', '.join(STUDIES)} (`sdlib study list`)")
    return STUDIES[name]


for _study in (
    movement.STUDY,
    atlas.STUDY,
    last_layer.STUDY,
    norms.STUDY,
    fold_split.STUDY,
    lens_grid.STUDY,
    early_exit.STUDY,
):
    register(_study)
