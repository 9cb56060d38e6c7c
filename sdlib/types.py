"""Every choice sdlib offers, as one enum each. Values are plain strings (``StrEnum``), so configs, JSON and
command lines use the words below and compare equal to them; ``parse`` turns a word into its enum with one
clear error."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from sdlib.errors import SdlibError


class WindowPlacement(StrEnum):
    """Where a measurement's windows come from: evenly spaced over the whole text (``spread``, the default: every
    part of WikiText-2's test split counts) or its first tokens (``first``, what the training log measures)."""

    SPREAD = "spread"
    FIRST = "first"


class LastState(StrEnum):
    """Which h_L: transformers' ``hidden_states[-1]`` is taken after the final norm (``normed``); the raw
    output of decoder layer L is ``pre_norm``. The paper does not say which it used."""

    NORMED = "normed"
    PRE_NORM = "pre_norm"


class KLDirection(StrEnum):
    """``forward`` = KL(teacher || lens_l); ``reverse`` = KL(lens_l || teacher). The paper writes
    KL(q_l, q_target), which read literally is ``reverse``; it does not define the notation."""

    FORWARD = "forward"
    REVERSE = "reverse"


class Zeta2Form(StrEnum):
    """zeta2: the paper's squared relative step, or two variants acting on what S measures."""

    RELATIVE_STEP = "relative_step"
    COSINE = "cosine"
    MONOTONICITY = "monotonicity"


class Precision(StrEnum):
    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"


class OnNonFinite(StrEnum):
    STOP = "stop"
    SKIP = "skip"


class Device(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"


class Role(StrEnum):
    """A model's role in a comparison: the starting weights, or the weights after self-distillation."""

    PRETRAINED = "pretrained"
    SELF_DISTILLED = "self_distilled"

    @property
    def label(self) -> str:
        return self.value.replace("_", "-")


class ReportTo(StrEnum):
    NONE = "none"
    TENSORBOARD = "tensorboard"
    WANDB = "wandb"


E = TypeVar("E", bound=StrEnum)


def parse(kind: type[E], value: object, what: str | None = None) -> E:
    """``value`` as a member of ``kind``; one line naming the choices otherwise."""
    try:
        return kind(value)
    except ValueError:
        name = what or kind.__name__
        raise SdlibError(f"{name} must be one of {', '.join(m.value for m in kind)}, got {value!r}") from None


LAST_STATES: tuple[LastState, ...] = tuple(LastState)
