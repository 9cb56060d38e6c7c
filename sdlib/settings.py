"""Settings read the one way sdlib reads them: YAML files (UTF-8, ``1e-4`` a float, a key given twice refused),
``--key value`` overrides, and a plain dict turned into a settings dataclass (unknown keys refused, numbers widened
or narrowed, words parsed into their enum of ``sdlib.types``), each failure one line naming where the value came
from. The training config, the studies' settings, the grids and the profiles all read through here."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import fields
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from sdlib import types as _types
from sdlib.errors import SdlibError
from sdlib.types import parse


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A YAML mapping names one key twice (YAML would silently keep the last)."""


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` and ``1e6`` (an exponent without a dot) as strings; read them as floats. A key
    given twice in one mapping is an error, not a silent override."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise DuplicateKeyError(None, None, f"key {key!r} appears twice (line {key_node.start_mark.line + 1})",
                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                                  list("-+.0123456789"))


def yaml_value(text: str) -> Any:
    """One YAML document (or scalar) read the sdlib way."""
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 (a SafeLoader subclass)


def read_yaml(path: str | os.PathLike, what: str = "config file") -> dict[str, Any]:
    """A YAML mapping from a file, read the one way sdlib reads YAML (UTF-8, floats like 1e-4, a key given twice
    refused); anything else is one line naming the file."""
    path = Path(path)
    try:
        loaded = yaml_value(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise SdlibError(f"{what} {path} is not UTF-8 text (byte {err.start}): save it as UTF-8") from None
    except DuplicateKeyError as err:
        raise SdlibError(f"{what} {path}: {err.problem}; keep one") from None
    except yaml.YAMLError as err:
        raise SdlibError(f"{what} {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    except OSError as err:
        raise SdlibError(f"{what} {path} cannot be read ({err.strerror})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise SdlibError(f"{what} {path} must be a mapping of keys to values")
    return loaded or {}


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """``["--lr", "3e-4", "--name=x"]`` -> ``{"lr": 3e-4, "name": "x"}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    it = iter(args)
    for arg in it:
        if not arg.startswith("--") or arg == "--":
            raise SdlibError(f"expected --key value, got {arg!r}")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            try:
                value = next(it)
            except StopIteration:
                raise SdlibError(f"--{key} needs a value") from None
        out[key.replace("-", "_")] = yaml_value(value) if value != "" else ""
    return out


_KINDS: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool, "dict": dict, "list": list,
                           "tuple": tuple,
                           **{name: kind for name, kind in vars(_types).items()
                              if isinstance(kind, type) and issubclass(kind, StrEnum) and kind is not StrEnum}}


def _kind(annotation: Any) -> type:
    """The type a field's annotation names (``dict[str, Any]`` -> dict; enums of ``sdlib.types`` by name)."""
    if isinstance(annotation, type):
        return annotation
    return _KINDS[str(annotation).split("[", 1)[0].strip()]


def enum_of(annotation: Any) -> type[StrEnum] | None:
    """The enum of ``sdlib.types`` a field's annotation names, or None."""
    kind = _KINDS.get(str(annotation).split("[", 1)[0].strip()) if not isinstance(annotation, type) else annotation
    return kind if isinstance(kind, type) and issubclass(kind, StrEnum) else None


def coerce(name: str, value: Any, kind: type, source: str, what: str = "config key") -> Any:
    """``value`` as ``kind``: ints widen to float, integral floats (``1e6``) narrow to int, lists become tuples
    where a tuple is asked for, bools stay bools, words become their enum."""
    if isinstance(kind, type) and issubclass(kind, StrEnum):
        return parse(kind, value, f"{what} {name!r} in {source}")
    if isinstance(value, bool) != (kind is bool):
        pass  # True is an int in Python, never a number here
    elif kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    elif kind is float and isinstance(value, (int, float)):
        return float(value)
    elif kind is tuple and isinstance(value, (list, tuple)):
        return tuple(value)  # a YAML list for a tuple setting (frozen settings hold tuples)
    elif isinstance(value, kind):
        return type(value)(value) if kind in (dict, list) else value
    raise SdlibError(f"{what} {name!r} in {source} must be {kind.__name__}, got {value!r}")


def settings_from_dict(values: dict[str, Any], cls: type, source: str = "config",
                       sources: dict[str, str] | None = None, what: str = "config key",
                       renamed: dict[str, str] | None = None) -> Any:
    """A validated ``cls`` (a dataclass; its ``validate()`` called when it has one) from plain values. ``sources``
    names where each key came from, ``what`` what a key is called (for the error line), ``renamed`` old key names
    still read."""
    renamed = renamed or {}
    sources = {renamed.get(k, k): v for k, v in (sources or {}).items()}
    values = {renamed.get(k, k): v for k, v in values.items()}
    known = {f_.name: f_ for f_ in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SdlibError(f"unknown {what} {unknown[0]!r} in {sources.get(unknown[0], source)}; valid keys: "
                         f"{', '.join(known)}")
    kwargs = {name: coerce(name, value, _kind(known[name].type), sources.get(name, source), what)
              for name, value in values.items()}
    made = cls(**kwargs)
    return made.validate() if hasattr(made, "validate") else made
