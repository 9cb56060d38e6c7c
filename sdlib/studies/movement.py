"""The registered ``measure`` study: a model's movement measurement (``Subject.measurement``) by name, so
``sdlib study measure MODEL``, the profiles and the notebooks reach the same cached record as ``sdlib measure``."""

from __future__ import annotations

from sdlib.evaluation.movement import MeasureRecord, MeasureSettings, format_measurement
from sdlib.evaluation.subject import Subject
from sdlib.studies.base import Study


def _compute(subject: Subject, settings: MeasureSettings) -> MeasureRecord:
    return subject.measurement(settings)


STUDY = Study("measure", "the D curve and S in both last-state conventions", MeasureSettings, MeasureRecord, _compute,
              format_measurement, cached=False)
"""(``cached=False``: the subject's measurement is the cache, shared with ``sdlib measure`` and the profiles)"""
