"""Typed training configuration: YAML file + ``--key value`` overrides; unknown keys are errors.

Each field's ``help`` is its command-line help (``sdlib train --help`` lists them). Choices are the enums of
``sdlib.types``: a word that is not one of them is refused when the config is built, once. The config travels
inside every checkpoint (``sdlib_config.yaml``), so a checkpoint always says how it was made.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from sdlib.data import TextWindows
from sdlib.errors import SdlibError
from sdlib.loss import LossSettings
from sdlib.packaged import canonical
from sdlib.paths import runs_dir
from sdlib.provenance import atomic_path
from sdlib.settings import enum_of, parse_overrides, read_yaml, settings_from_dict
from sdlib.types import Device, KLDirection, LastState, OnNonFinite, Precision, ReportTo, Zeta2Form, parse

PARAMETER_GROUPS = ("embeddings", "blocks", "last_block", "final_norm", "lm_head", "other")
# keys renamed since: old configs and checkpoints still read
RENAMED = {"lens_layers": "lens_samples"}


def _f(default: Any, help: str) -> Any:
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything that decides a self-distillation run."""

    # what to train
    name: str = _f("run", "run name (letters, digits, '.', '_', '-'); the run folder is <build>/runs/<name> unless "
                          "output_dir is set")
    model: str = _f("tiny-llama", "model to distil: smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct, tiny-llama, "
                                  "a hub id or a folder")
    model_options: dict = _f({}, "options for built-in tiny models (num_layers, hidden_size, vocab_size, seed, ...)")
    output_dir: str = _f("", "run folder (default: <build>/runs/<name>)")
    # data
    data: str = _f("fineweb-edu", "training text: fineweb-edu (HF stream, or its sample under SDLIB_DATA_DIR), "
                                  "or a local .txt/.jsonl file or folder")
    shuffle: bool = _f(False, "read the training sequences in an order drawn from the seed (a new order each pass over "
                              "a finite text; a shuffle buffer for a stream) instead of in text order")
    seq_len: int = _f(1024, "tokens per packed training sequence (EOS between documents)")
    max_tokens: int = _f(10_000_000, "token budget; optimizer steps = max_tokens // (batch_size * seq_len)")
    batch_size: int = _f(128, "sequences per optimizer step, all processes together")
    micro_batch: int = _f(8, "sequences per forward pass on each process (gradient accumulation fills the rest)")
    # loss
    alpha: float = _f(1.0, "weight of zeta2 (the movement term)")
    zeta1: bool = _f(True, "include zeta1 (the lens KL to the frozen teacher); false trains on alpha * zeta2 alone, "
                           "an ablation that says what zeta2 does without the anchor")
    k: float = _f(0.25, "layer-weight slope: w_l = softmax(k * l)")
    kl_direction: KLDirection = _f(KLDirection.FORWARD, "forward = KL(teacher || lens_l), reverse = KL(lens_l || "
                                   "teacher); the paper writes KL(q_l, q_target), read literally the reverse")
    last_state: LastState = _f(LastState.NORMED, "h_L inside zeta2: normed (after the final norm) or pre_norm")
    chunk_size: int = _f(1024, "tokens per chunk of the all-layer lens KL (memory O(chunk x vocab))")
    zeta2_form: Zeta2Form = _f(Zeta2Form.RELATIVE_STEP, "zeta2: relative_step (the paper), cosine (mean D_l: "
                               "directions only) or monotonicity (1 - soft S of the batch's D curve)")
    lens_samples: int = _f(0, "0 = zeta1 over every layer; m > 0 = an unbiased estimate from m lens layers drawn per "
                              "micro-batch with probability w_l (faster, noisier)")
    last_weight: float = _f(0.0, "0 = the paper's zeta1 weights softmax(k l); in (0, 1): the final layer's KL weight "
                                 "set to this and the other layers' scaled to share the rest (beyond the paper; "
                                 "zeta2's weights are unchanged)")
    fold_final_norm: bool = _f(False, "fold the final norm's per-channel gain into the head before training "
                                      "(sdlib.fold: no output changes; the normed h_L then points where the last "
                                      "block's output points); beyond the paper")
    # optimizer
    lr: float = _f(1e-4, "peak AdamW learning rate")
    freeze: list = _f([], "parameter groups that do not train, e.g. [embeddings, final_norm, lm_head] (the lens "
                          "terms then move only the blocks); groups: " + ", ".join(PARAMETER_GROUPS))
    lr_multipliers: dict = _f({}, "learning-rate factors per parameter group, e.g. {final_norm: 100}; groups: "
                                  + ", ".join(PARAMETER_GROUPS))
    weight_decay: float = _f(0.0, "AdamW weight decay")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.999, "AdamW beta2")
    warmup_steps: int = _f(0, "linear warm-up steps before the cosine decay")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this (0 = off)")
    on_nonfinite: OnNonFinite = _f(OnNonFinite.STOP, "a non-finite loss or gradient: stop (name the step and the loss "
                                   "part, keep the last checkpoint, exit non-zero) or skip the step (counted in log.jsonl)")
    # run
    seed: int = _f(0, "one seed for everything (python, numpy, torch; and the data order with shuffle)")
    device: Device = _f(Device.AUTO, "auto (accelerate's choice), cpu or cuda")
    precision: Precision = _f(Precision.AUTO, "auto = bf16 autocast on CUDA, fp32 on CPU; or fp32, bf16")
    log_every: int = _f(1, "show the loss in the progress bar every this many steps (0: never; every step is in "
                           "log.jsonl)")
    save_every: int = _f(0, "checkpoint every this many steps (0 = only at the end)")
    keep_checkpoints: int = _f(0, "keep only the newest this many checkpoints, deleting older ones after each save "
                                  "(0 = keep all; a 0.5B model's checkpoint is ~7 GB with its optimizer state)")
    max_minutes: float = _f(0.0, "stop after the step that reaches this many minutes of training in this call, with "
                                 "a checkpoint (--resume continues); 0 = no limit")
    eval_every: int = _f(0, "measure the D curve and S on held-out text every this many steps (0 = start and end only)")
    eval_steps: list = _f([], "also measure after these steps, e.g. [19, 38] (besides eval_every, the start and the end)")
    eval_text: str = _f("wikitext-valid", "held-out text for those measurements: wikitext-valid, wikitext-test or a file")
    eval_windows: int = _f(8, "windows of held-out text per measurement")
    eval_window_len: int = _f(256, "tokens per held-out window")
    report_to: ReportTo = _f(ReportTo.NONE, "also log to none, tensorboard (offline, under the run folder) or wandb, "
                             "through accelerate's trackers")
    push_to_hub: str = _f("", "a hub repository id to push the final checkpoint and its model card to (needs network)")

    def __post_init__(self) -> None:
        self.model = canonical(self.model)  # an old built-in name reads as its current one (resume compares equal)
        for f_ in fields(self):  # every choice is parsed here, once
            kind = enum_of(f_.type)
            if kind is not None:
                setattr(self, f_.name, parse(kind, getattr(self, f_.name), f_.name))
        self._validate()  # every config is checked once, when it is made (``replace`` makes a new one)

    def _validate(self) -> None:
        def require(ok: bool, message: str) -> None:
            if not ok:
                raise SdlibError(f"config: {message}")

        require(self.lr > 0 and math.isfinite(self.lr), f"lr must be a finite number > 0, got {self.lr}")
        require(self.seq_len >= 2, f"seq_len must be >= 2, got {self.seq_len}")
        require(self.micro_batch >= 1, f"micro_batch must be >= 1, got {self.micro_batch}")
        require(self.batch_size >= self.micro_batch and self.batch_size % self.micro_batch == 0,
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch ({self.micro_batch})")
        require(self.max_tokens >= self.batch_size * self.seq_len, f"max_tokens ({self.max_tokens}) is below one "
                f"step (batch_size x seq_len = {self.batch_size * self.seq_len})")
        require(self.grad_clip >= 0 and math.isfinite(self.grad_clip), f"grad_clip must be >= 0, got {self.grad_clip}")
        require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1 and beta2 must be in [0, 1)")
        require(self.weight_decay >= 0 and math.isfinite(self.weight_decay),
                f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        require(0 <= self.seed < 2**32, f"seed must be an integer in [0, 2^32), got {self.seed}")
        require(self.max_minutes >= 0 and math.isfinite(self.max_minutes),
                f"max_minutes must be >= 0, got {self.max_minutes}")
        require(min(self.warmup_steps, self.save_every, self.keep_checkpoints, self.eval_every, self.log_every) >= 0,
                "warmup_steps, save_every, keep_checkpoints, eval_every and log_every must be >= 0")
        require(self.eval_windows >= 1 and self.eval_window_len >= 2,
                "eval_windows must be >= 1 and eval_window_len >= 2")
        require(re.fullmatch(r"[A-Za-z0-9._-]+", self.name) is not None and self.name not in (".", ".."),
                f"name {self.name!r} may hold only letters, digits, '.', '_' and '-' (it names a folder under the runs "
                "folder); use output_dir for a folder elsewhere")
        require(all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in self.eval_steps),
                f"eval_steps must be a list of step numbers >= 1, got {self.eval_steps!r}")
        require(all(g in PARAMETER_GROUPS for g in self.freeze) and len(set(self.freeze)) == len(self.freeze),
                f"freeze must list distinct groups from {', '.join(PARAMETER_GROUPS)}, got {self.freeze!r}")
        try:
            self.loss()  # alpha, k, chunk_size, lens_samples, last_weight: checked by LossSettings, where they are defined
        except SdlibError as err:
            raise SdlibError(f"config: {err}") from None
        for group, factor in self.lr_multipliers.items():
            require(group in PARAMETER_GROUPS, f"lr_multipliers: unknown group {group!r}; use {', '.join(PARAMETER_GROUPS)}")
            require(isinstance(factor, (int, float)) and not isinstance(factor, bool) and math.isfinite(factor)
                    and factor > 0, f"lr_multipliers: {group} must be a finite number > 0, got {factor!r}")
        return self

    @property
    def total_steps(self) -> int:
        return self.max_tokens // (self.batch_size * self.seq_len)

    @property
    def train_tokens(self) -> int:
        """The tokens a finished run has trained on: whole steps of ``batch_size`` x ``seq_len``."""
        return self.total_steps * self.batch_size * self.seq_len

    def budget(self) -> str:
        """One line on what a run will do: steps, tokens per step and in all, and what it changes from the paper's
        recipe (printed before training starts)."""
        per_step = self.batch_size * self.seq_len
        line = (f"{self.model}: {self.total_steps:,} optimizer steps x {self.batch_size} sequences x {self.seq_len} "
                f"tokens = {per_step:,} tokens per step, {self.train_tokens:,} tokens in all")
        if self.max_tokens == 10_000_000 and per_step == 128 * 1024:
            line += " (the paper's 10M tokens at 128 x 1,024)"
        beyond = [f"{name} {value}" for name, value, default in (
            ("fold_final_norm", self.fold_final_norm, False), ("freeze", self.freeze, []),
            ("last_weight", self.last_weight, 0.0), ("lr_multipliers", self.lr_multipliers, {})) if value != default]
        return line + (f"; beyond the paper: {', '.join(beyond)}" if beyond else "")

    def loss(self) -> LossSettings:
        """The loss this run trains with (its alpha, k, KL direction, last state, zeta2 form, zeta1 switch,
        lens samples and chunk size)."""
        return LossSettings(**{f.name: getattr(self, f.name) for f in fields(LossSettings)})

    def log_windows(self) -> TextWindows:
        """Where the training log measures S and D: the first tokens of ``eval_text`` (not the standard setting)."""
        return TextWindows(self.eval_text, self.eval_windows, self.eval_window_len, placement="first")

    def run_dir(self) -> Path:

        return Path(self.output_dir).expanduser().resolve() if self.output_dir else runs_dir() / self.name

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (enums as their words): what YAML, JSON and checkpoints hold."""
        return {k: (str(v) if isinstance(v, StrEnum) else v) for k, v in dataclasses.asdict(self).items()}


def config_help(cls: type = TrainConfig) -> str:
    lines = []
    for f_ in fields(cls):
        default = f_.default if f_.default is not dataclasses.MISSING else f_.default_factory()
        shown = str(default) if isinstance(default, StrEnum) else repr(default)
        lines.append(f"  --{f_.name:<16} {f_.metadata.get('help', '')} (default: {shown})".replace("  (", " ("))
    return "\n".join(lines)


def config_from_dict(values: dict[str, Any], source: str = "config", cls: type = TrainConfig,
                     sources: dict[str, str] | None = None, what: str = "config key") -> Any:
    """A validated training config (or ``cls``) from plain values, old key names still read (``RENAMED``)."""
    return settings_from_dict(values, cls, source, sources, what, renamed=RENAMED)


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] | dict[str, Any] = ()) -> TrainConfig:
    """TrainConfig from a YAML file (optional) with overrides applied on top (a grid's cell, ``GRID.yaml:CELL``, is
    read by ``sdlib.experiments.grid_config.load_run_config``)."""
    values: dict[str, Any] = {}
    source = "overrides"
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise SdlibError(f"config file {path} does not exist (see configs/ for examples)")
        values.update(read_yaml(path))
        source = str(path)
        if {"base", "cells"} <= set(values):
            cells = ", ".join(str(c) for c in (values.get("cells") or {}))
            raise SdlibError(f"{path} is a grid (a base and cells: {cells}), not one config: train a cell with "
                             f"`sdlib train {path}:CELL`, or every cell with `sdlib grid train {path}`")
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    values.update(extra)
    sources = {name: ("the command line" if name in extra else source) for name in values}
    return config_from_dict(values, source, sources=sources)


def save_config(config: TrainConfig, path: str | os.PathLike) -> None:

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


MAY_CHANGE_ON_RESUME = ("name", "output_dir", "save_every", "keep_checkpoints", "eval_every", "eval_steps",
                        "log_every", "max_minutes", "report_to", "push_to_hub")
"""Keys a resumed run may change: where the run folder is, how often it saves, measures and prints, its time limit
and its tracking. Any other change would mix two recipes in one run, so resuming refuses it."""


def resume_differences(saved: dict[str, Any], config: TrainConfig) -> list[tuple[str, Any, Any]]:
    """(key, saved value, new value) for every key that differs between a checkpoint's config and ``config``,
    except ``MAY_CHANGE_ON_RESUME`` (keys added since the checkpoint count at their defaults)."""
    old = config_from_dict(dict(saved), "the checkpoint's config").to_dict()
    new = config.to_dict()
    return [(k, old[k], new[k]) for k in new if k not in MAY_CHANGE_ON_RESUME and old[k] != new[k]]


def format_differences(differences: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in differences)
