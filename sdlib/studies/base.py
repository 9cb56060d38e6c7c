"""The shape every study has: a frozen settings dataclass in, a typed record out, cached by the model's
weights and the settings.

A study is one ``Study`` value in its own module (``STUDY = Study(...)``), listed once in
``sdlib.studies.registry``; the command line (``sdlib study NAME MODEL --setting value``), the profiles
(``studies:`` in configs/profiles.yaml) and the notebooks (``FigureRun.study``) find it there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Generic, TypeVar

from torch import nn

from sdlib.cache import Record, cached
from sdlib.evaluation.subject import Subject
from sdlib.settings import parse_overrides, settings_from_dict

S = TypeVar("S")
R = TypeVar("R", bound=Record)


@dataclass(frozen=True)
class Study(Generic[S, R]):
    """One study: its name, what it needs (``settings``, a frozen dataclass), what it returns (``record``, a
    ``Record``), how it computes it, and how the record reads as text."""

    name: str
    """the command-line name (``sdlib study NAME``) and the results folder (<build>/results/<model>/NAME)"""
    help: str
    settings: type[S]
    record: type[R]
    compute: Callable[[Subject, S], R]
    describe: Callable[[R], str]
    version: int = 1
    """part of the cache key: raised when the record or its computation changes"""
    cached: bool = True
    """False for a study whose computation is a cached record of the subject itself (``measure``)"""

    def settings_from(self, values: dict[str, Any] | list[str] | None = None, source: str = "the command line") -> S:
        """Settings from plain values or ``--key value`` words; an unknown key or a wrong type is one clear error."""
        values = parse_overrides(values) if isinstance(values, list) else dict(values or {})
        return settings_from_dict(values, self.settings, source, what=f"{self.name} setting")

    def settings_help(self) -> str:
        return "\n".join(f"  --{f.name:<16} (default: {f.default!r})" for f in fields(self.settings))

    def folder(self, subject: Subject) -> Path:
        return subject.folder(self.name)

    def run(self, model: str | Subject, settings: S | None = None, *, device: str | None = None,
            loaded: tuple[nn.Module, Any] | None = None, use_cache: bool = True, progress: bool = True) -> R:
        """The record of ``model`` (a name or folder, or a ``Subject``; loaded unless ``loaded`` is given) under
        ``settings`` (default: the defaults): read from the cache when the weights and settings match, else
        computed and cached in the subject's folder for this study; named as the subject names its model
        (``Subject.named``)."""
        settings = settings if settings is not None else self.settings()
        dtype = {"dtype": settings.dtype} if hasattr(settings, "dtype") else {}  # a study that names its dtype
        subject = model if isinstance(model, Subject) else Subject(str(model), options=dtype, device=device,
                                                                   progress=progress, loaded=loaded)
        if not self.cached:
            return self.compute(subject, settings)
        key = {"fingerprint": subject.fingerprint(), "record": self.version, **asdict(settings)}
        return subject.named(cached(self.record, self.folder(subject), self.name, key,
                                    lambda: self.compute(subject, settings), use_cache))
