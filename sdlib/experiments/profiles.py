"""Profiles (configs/profiles.yaml): which pretrained / self-distilled pairs, evaluation subset and studies a
run of the figures covers.

A ``Pair`` is one training config (a YAML file, or ``GRID.yaml:CELL`` for one cell of a grid): its base model
(``Role.PRETRAINED``, loaded with the config's model options) and its run folder's latest checkpoint
(``Role.SELF_DISTILLED``). Several pairs may share a base model (two recipes on one model): each names its recipe
(``label`` in the profile), and the base model is measured and drawn once. Models are loaded once per process.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sdlib.errors import SdlibError
from sdlib.evaluation.subject import Subject
from sdlib.experiments.grid_config import load_run_config
from sdlib.models import resolve_checkpoint
from sdlib.packaged import canonical, display_name, is_packaged
from sdlib.paths import build_dir, configs_dir, figures_dir, project_root, results_dir, slug
from sdlib.settings import read_yaml
from sdlib.studies import registry
from sdlib.studies.atlas import AtlasSettings
from sdlib.train.config import TrainConfig
from sdlib.types import Role

DEFAULT_PROFILE = "jump"
ROLES: tuple[Role, ...] = tuple(Role)


@dataclass
class Pair:
    config_path: str
    config: TrainConfig
    trained_override: str | None = None
    arm: str = ""
    """what this pair's training is, when the profile has several on one base model (e.g. "the paper's recipe")"""

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def model(self) -> str:
        return self.config.model

    def source(self, role: Role) -> str:
        """What the model is, for tables and legends: the base model name, or the trained checkpoint folder."""
        return self.config.model if role == Role.PRETRAINED else str(self.trained_dir())

    def trained_dir(self) -> Path:
        return Path(self.trained_override).expanduser().resolve() if self.trained_override else self.config.run_dir()

    def label(self, role: Role) -> str:
        role, name = Role(role), display_name(self.model)
        if role == Role.SELF_DISTILLED and self.arm:
            return f"{name} ({role.label}: {self.arm})"
        return f"{name} ({role.label})"

    def base_key(self) -> tuple:
        """What identifies the pretrained model: the base model and its load options."""
        return self.config.model, tuple(sorted(self.config.model_options.items()))

    def subject(self, role: Role, device: str | None = None) -> Subject:
        """One model of the pair as a model under study: the base model with the config's model options, or the
        run folder's latest checkpoint (which must exist: a clear error says how to make it). A plain base model
        shares its results folder (and caches) with ``sdlib eval|measure NAME``; a trained run has its own."""
        role = Role(role)
        if role == Role.SELF_DISTILLED:
            folder = self.trained_dir()
            if not folder.exists():
                raise SdlibError(f"trained checkpoint {folder} does not exist: train it with "
                                 f"`sdlib train {self.config_path}` or pass an existing run folder")
            resolve_checkpoint(folder)
            return Subject(str(folder), name=self.model, label=self.label(role), role=role, device=device)
        results = results_dir() / slug(f"{self.name}-baseline") if self.config.model_options else None
        return Subject(self.model, label=self.label(role), role=role, options=dict(self.config.model_options),
                       results=results, device=device)

    def load(self, role: Role, device: str | None = None):
        """(model, tokenizer) of ``subject(role, device)``."""
        return self.subject(role, device).load()


@dataclass
class Profile:
    name: str
    pairs: list[Pair]
    eval_subset: str
    measure: dict[str, Any] = field(default_factory=dict)
    quickstart: dict[str, Any] = field(default_factory=dict)
    """parameters for notebooks/00_quickstart.ipynb under this profile"""
    atlas: dict[str, Any] = field(default_factory=dict)
    """the convergence atlas (notebooks/atlas.ipynb): ``models`` and any ``AtlasSettings`` field"""
    notebooks: list[str] = field(default_factory=list)
    """the notebooks this profile draws (empty: every figure notebook but the GPU study's)"""
    studies: dict[str, Any] = field(default_factory=dict)
    """settings of registered studies by name (``sdlib.studies.registry``): what ``study_settings`` and the
    notebooks' ``FigureRun.study`` use"""
    figures: str = ""
    """where its figures go, relative to the committed figures folder (``""``: that folder itself for the default
    profile, the build folder for the others; ``gpu``: figures/gpu)"""

    def models(self) -> list[tuple[Pair, Role]]:
        """Every model the profile compares, once: each distinct pretrained model (first), then each pair's
        self-distilled model."""
        first: dict[tuple, Pair] = {}
        for pair in self.pairs:
            first.setdefault(pair.base_key(), pair)
        return [(p, Role.PRETRAINED) for p in first.values()] + [(p, Role.SELF_DISTILLED) for p in self.pairs]

    def atlas_models(self) -> list[str]:
        return list(self.atlas.get("models") or [])

    def atlas_settings(self) -> AtlasSettings:
        return registry.get("atlas").settings_from({k: v for k, v in self.atlas.items() if k != "models"},
                                                   f"profile {self.name}")

    def study_settings(self, name: str):
        """The settings of study ``name`` under this profile (its ``studies:`` entry over the study's defaults)."""
        return registry.get(name).settings_from(self.studies.get(name) or {}, f"profile {self.name}")

    def packaged_models(self) -> list[str]:
        """The built-in real models this profile uses (installed by ``run_all.sh`` before it runs)."""

        names = [p.config.model for p in self.pairs] + self.atlas_models()
        return [n for n in dict.fromkeys(canonical(n) for n in names) if is_packaged(n)]

    def fold_models(self) -> list[str]:
        """What the fold-split notebook splits: the atlas models, or else every model the profile compares
        (pretrained first, then each self-distilled run folder)."""
        return self.atlas_models() or [pair.source(role) for pair, role in self.models()]

    def figures_dir(self) -> Path:
        """The committed figures folder (or a folder under it) for a profile that names one (``figures:``);
        build/figures for the others."""

        if self.figures:
            return figures_dir() / self.figures
        return build_dir() / "figures"


def _profiles_file() -> dict[str, Any]:
    return read_yaml(configs_dir() / "profiles.yaml", "profiles file")


def profile_names() -> list[str]:
    """The profiles ``configs/profiles.yaml`` defines, in its order."""
    return list(_profiles_file())


ENTRY_KEYS = ("config", "label", "trained", "model")


def _entry(item: Any, profile: str) -> dict[str, str]:
    """One ``configs:`` entry as ``{config, label, trained, model}``: a path, or ``{config: PATH, label: TEXT}``
    with, optionally, the run folder (``trained``) and the base model (``model``) when they are not the config's."""
    if isinstance(item, str):
        item = {"config": item}
    if isinstance(item, dict) and isinstance(item.get("config"), str) and set(item) <= set(ENTRY_KEYS):
        return {k: str(item.get(k) or "") for k in ENTRY_KEYS}
    raise SdlibError(f"profile {profile}: a configs entry is a path or {{config: PATH, label: TEXT}}, got {item!r}")


def _profiles(name: str) -> tuple[dict[str, Any], str]:
    """(the profiles file's entries, the profile's name in it): ``configs/profiles.yaml``, or a YAML file of one
    profile when ``name`` is its path (what ``sdlib figures --model ... --trained ...`` writes)."""
    if not name.endswith((".yaml", ".yml")):
        return _profiles_file(), name
    path = Path(name).expanduser()
    if not path.is_file():
        raise SdlibError(f"profile file {name} does not exist: give a profile of configs/profiles.yaml or a YAML file")
    entries = read_yaml(path, "profile file")
    if len(entries) != 1:
        raise SdlibError(f"{name} must hold exactly one profile, not {len(entries)}")
    return entries, next(iter(entries))


def load_profile(name: str = DEFAULT_PROFILE, trained: str | list[str] | None = None,
                 configs: list[str] | None = None, only: list[str] | None = None) -> Profile:
    """The named profile; ``trained`` replaces the run folders (one per config), ``configs`` the configs,
    ``only`` keeps the pairs whose config name is listed (e.g. the paper profile's Llama models)."""

    profiles, name = _profiles(name)
    if name not in profiles:
        raise SdlibError(f"unknown profile {name!r}: use one of {', '.join(profiles)} (configs/profiles.yaml)")
    entry = profiles[name]
    paths = configs or entry.get("configs") or []
    overrides = [trained] if isinstance(trained, str) else list(trained or [])
    if overrides and len(overrides) != len(paths):
        raise SdlibError(f"{len(overrides)} trained checkpoint(s) given for {len(paths)} config(s) of profile {name}")
    pairs = []
    for i, item in enumerate(paths):
        e = _entry(item, name)
        full = Path(e["config"]) if Path(e["config"]).is_absolute() else project_root() / e["config"]
        config = load_run_config(full, {"model": e["model"]} if e["model"] else {})
        pairs.append(Pair(e["config"], config, overrides[i] if overrides else e["trained"] or None, e["label"]))
    if only:
        unknown = sorted(set(only) - {p.name for p in pairs})
        if unknown:
            raise SdlibError(f"profile {name} has no config named {', '.join(unknown)}: "
                             f"use {', '.join(p.name for p in pairs)}")
        pairs = [p for p in pairs if p.name in only]
    known = {f.name for f in fields(Profile)} - {"name", "pairs"}
    unknown = sorted(set(entry) - known - {"configs"})
    if unknown:
        raise SdlibError(f"profile {name}: unknown key(s) {', '.join(unknown)}; use configs, {', '.join(sorted(known))}")
    return Profile(name=name, pairs=pairs, eval_subset=entry.get("eval_subset", "full"),
                   measure=dict(entry.get("measure") or {}), quickstart=dict(entry.get("quickstart") or {}),
                   atlas=dict(entry.get("atlas") or {}),
                   notebooks=list(entry.get("notebooks") or []), studies=dict(entry.get("studies") or {}),
                   figures=entry.get("figures", ""))
