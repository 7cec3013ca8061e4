"""Frozen, self-validating dataclass configs and the `section.field=value` override syntax.

Every config in emergelab is a frozen dataclass whose ``__post_init__`` validates it, so a bad value
fails at construction with a :class:`ConfigError` naming the field and what is allowed, before any
work starts. Unknown keys are errors (no silent fall-back to defaults).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, TypeVar, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad config value or key. Its message is one line naming the field and what is allowed."""


def require(ok: bool, field: str, value: Any, allowed: str) -> None:
    """Raise ``ConfigError("field=value: allowed")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{field}={value!r}: {allowed}")


INT64_MAX = 2 ** 63 - 1


def require_int(field: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> None:
    """Check ``value`` is an int (not a bool) within ``[minimum, maximum]``; with no ``maximum``, within
    int64 (torch and numpy hold every count in one)."""
    lo = "-inf" if minimum is None else str(minimum)
    hi = "inf" if maximum is None else str(maximum)
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and maximum is None and not -INT64_MAX <= value <= INT64_MAX:
        ok, hi = False, "2**63-1"
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    require(ok, field, value, f"must be an integer in [{lo}, {hi}]")


def require_float(field: str, value: Any, minimum: float | None = None, maximum: float | None = None,
                  open_min: bool = False) -> None:
    """Check ``value`` is a finite real number (not a bool) within the bounds (``open_min`` excludes
    ``minimum``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)
    if ok and minimum is not None:
        ok = value > minimum if open_min else value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    lo = "(" if open_min else "["
    require(ok, field, value, f"must be a number in {lo}{minimum if minimum is not None else '-inf'}, "
                              f"{maximum if maximum is not None else 'inf'}]")


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def require_choice(field: str, value: Any, choices: tuple[str, ...]) -> None:
    require(value in choices, field, value, f"must be one of {', '.join(map(str, choices))}")


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def number_from_text(value: Any) -> Any:
    """``value`` as a number when it is a string holding a Python int or float literal (``"1e-3"``,
    ``"1e8"``, ``" 64 "``), else ``value`` unchanged. YAML 1.1 reads ``1e-3`` (no dot) as a string;
    this makes scientific notation work wherever a number is accepted. ``"nan"`` / ``"inf"`` stay strings
    (no field accepts them), and so does anything else, for the field's own check to refuse."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text):
        return value
    try:
        return int(text)
    except ValueError:
        number = float(text)
        return number if math.isfinite(number) else value


def coerce(hint: Any, value: Any) -> Any:
    """``value`` for a field declared ``hint``: numeric text becomes a number (:func:`number_from_text`);
    an int given for a float field becomes a float (``lr=1`` means ``1.0``); an integral float given for
    an int field becomes an int (``batch_size=1e3`` means ``1000``; ``64.5`` stays a float and the
    field's check refuses it). Booleans are never numbers: ``true`` stays ``True`` and is refused."""
    value = number_from_text(value)
    if isinstance(value, bool):
        return value
    numeric = {hint} if isinstance(hint, type) else set(getattr(hint, "__args__", ()))
    if float in numeric and isinstance(value, int):
        return float(value)
    if int in numeric and float not in numeric and isinstance(value, float) and math.isfinite(value) \
            and value.is_integer():
        return int(value)
    return value


def build(cls: type[T], values: Mapping[str, Any], section: str) -> T:
    """Construct dataclass ``cls`` from ``values``; unknown keys raise a ConfigError naming them.

    Values pass through :func:`coerce`: ``"1e-3"`` is a number, ``lr=1`` means ``1.0`` and an integral
    float such as ``1e3`` given for an int field means ``1000``.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"section {section}: expected a mapping of field: value, got {values!r}")
    known = field_names(cls)
    for key in values:
        if key not in known:
            raise ConfigError(f"unknown field {section}.{key}: allowed fields are {', '.join(known)}")
    hints = get_type_hints(cls)
    kwargs = {key: coerce(hints.get(key), value) for key, value in values.items()}
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """A plain dict (YAML-safe) of a dataclass config, recursing into nested configs."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


SECTIONS = ("task", "model", "train", "execution")


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse ``section.field=value`` (value parsed as YAML; a Python number literal such as ``1e-3``
    is a number, see :func:`number_from_text`) into ``(section, field, value)``.

    >>> parse_override("task.sparsity=3")
    ('task', 'sparsity', 3)
    >>> parse_override("train.lr=1e-3")
    ('train', 'lr', 0.001)
    """
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.field=value, e.g. task.sparsity=3")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set {text!r}: the key must be section.field with section one of {', '.join(SECTIONS)}")
    section, name = parts
    if section not in SECTIONS:
        raise ConfigError(f"--set {text!r}: unknown section {section!r}; allowed sections are {', '.join(SECTIONS)}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {text!r}: the value {raw!r} does not parse") from None
    return section, name, number_from_text(value)


def registered(registry: dict[str, type], group: str, name: str, field: str) -> type | None:
    """``registry[name]``, else the config class an installed package declares for ``name`` under the
    entry-point group ``group`` (loaded, checked and added to ``registry``), else None.

    A package adds a task or model to every process (CLI, workers, later analysis) with, in its
    ``pyproject.toml``::

        [project.entry-points."emergelab.tasks"]
        my-task = "my_package.tasks:MyTaskConfig"

    ``field`` (e.g. ``task.name``) names the config field in the error of a plugin that fails to load."""
    if name in registry:
        return registry[name]
    from importlib.metadata import entry_points

    for point in entry_points(group=group):
        if point.name != name:
            continue
        try:
            cls = point.load()
        except Exception as error:  # a plugin's own import error, whatever it is, is reported in one line
            raise ConfigError(f"{field}={name!r}: its plugin {point.value} ({group}) failed to load: "
                              f"{type(error).__name__}: {error}") from None
        if getattr(cls, "name", None) != name:
            raise ConfigError(f"{field}={name!r}: its plugin {point.value} ({group}) is a class whose name is "
                              f"{getattr(cls, 'name', None)!r}; the entry point's name must be the class's name")
        registry[name] = cls
        return cls
    return None


def plugin_names(registry: dict[str, type], group: str) -> list[str]:
    """The names in ``registry`` and those that installed packages declare under ``group`` (not loaded)."""
    from importlib.metadata import entry_points

    return list(registry) + sorted({p.name for p in entry_points(group=group)} - set(registry))
