"""A sweep file: ``base`` (+ optional ``preset``), ``grid`` and ``zip`` expanded to runs keyed by the hash
of their resolved config.

    base:                      # a config as ExperimentConfig.from_dict takes it
      task: {name: linear-map, state_size: 8}
      train: {steps: 2000, seeds: 4}
    preset: linear-map-tiny    # optional: the preset first, base on top of it
    grid:                      # every combination (the cartesian product) ...
      task.state_size: [8, 16]
      task.sparsity: [2, 3]
    zip:                       # ... times these lists taken together, element by element
      train.lr: [0.003, 0.002]
      train.batch_size: [32, 64]
    out: runs/sparsity         # the sweep directory (--out overrides it)
    scales:                    # optional: named smaller versions (--scale NAME); the file as written is
      smoke:                   # the full-size one. Each key is a path into the file: base.SECTION.FIELD,
        base.train.seeds: 2    # grid.SECTION.FIELD / zip.SECTION.FIELD (a list, or null to drop the axis),
        grid.task.state_size: [8]   # zip (a whole mapping), preset, out

An axis may also be a whole section, a list of mappings of fields: each point sets those fields of the
section (and only those). This is how a sweep varies ``model.name`` when the models have different
fields (``mamba`` has no ``heads``; every model has ``layers``, ``d_model``, ``mlp_ratio``, ``init_std``
and takes ``match_params``)::

    base:
      model: {layers: 1, match_params: 12000}
    zip:
      model:
        - {name: transformer, heads: 4, head_dim: 8}
        - {name: mamba, state_size: 8}

A field set both by a section axis and by its own axis (``model.heads``) is an error.

Every point is validated (``ExperimentConfig.from_dict`` and ``resolved``) before any work; an error is one
line naming the key. Points that resolve to the same config (same ``science_key``) are one run.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..config import SECTIONS, ConfigError
from ..train import ExperimentConfig
from ..train.bias import check_bias_target

KEYS = ("base", "preset", "grid", "zip", "out", "scales")
FULL_SCALE = "paper"  # --scale naming the file as written (the published sizes)


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its name (``<task>-<hash>``, the run directory under ``OUT/runs``), the grid
    and zip values that made it, and its resolved config."""

    name: str
    key: str
    overrides: dict[str, Any]
    config: ExperimentConfig

    def path(self, out: str | Path) -> Path:
        return Path(out) / "runs" / self.name


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: its runs (distinct configs, in expansion order) and its directory (None when the
    file names none and no ``--out`` was given)."""

    runs: list[SweepRun]
    out: Path | None
    spec: dict[str, Any]
    duplicates: int = 0  # points that resolved to a config already in the sweep


def with_trackers(sweep: Sweep, names: tuple[str, ...]) -> Sweep:
    """``sweep`` with ``execution.log = names`` in every run (``emergelab sweep --log``; the runs keep
    their names and hashes)."""
    runs = [replace(r, config=replace(r.config, execution=replace(r.config.execution, log=names)))
            for r in sweep.runs]
    return replace(sweep, runs=runs)


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key repeated in one mapping (plain YAML keeps the last value in
    silence: ``preset: a`` then ``preset: b`` swept b)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


MAX_RUNS = 20_000  # grid points of one sweep file (expanding 10^4 takes ~9 s; 10^6 ran out of patience)


def load_sweep(path: str | Path, out: str | Path | None = None, scale: str | None = None) -> Sweep:
    """Read and validate sweep file ``path`` (``out`` overrides its ``out:``; ``scale`` picks one of its
    ``scales``, see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such sweep file")
    try:
        data = yaml.load(path.read_text(), Loader=UniqueKeyLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    try:
        return expand(data, out, scale)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def scale_names(data: Any) -> list[str]:
    """The scales a sweep (parsed YAML) offers: ``paper`` (the file as written) and its ``scales``."""
    scales = data.get("scales") if isinstance(data, Mapping) else None
    return [FULL_SCALE, *(scales if isinstance(scales, Mapping) else {})]


def apply_scale(data: Mapping[str, Any], scale: str) -> dict[str, Any]:
    """The sweep ``data`` at ``scale`` (a copy; ``scales`` removed). ``paper`` is the file as written."""
    allowed = scale_names(data)
    if scale not in allowed:
        if len(allowed) == 1:
            raise ConfigError(f"--scale {scale}: this sweep file has no `scales` key, so its only scale is "
                              f"{FULL_SCALE} (the file as written); a `scales` mapping names smaller versions")
        raise ConfigError(f"--scale {scale}: allowed scales of this sweep are {', '.join(allowed)} "
                          f"({FULL_SCALE}: the file as written)")
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items() if k != "scales"}
    out["base"] = {k: dict(v or {}) for k, v in (data.get("base") or {}).items()}
    if scale == FULL_SCALE:
        return out
    changes = data["scales"][scale] or {}
    if not isinstance(changes, Mapping):
        raise ConfigError(f"scales.{scale}: must map paths (base.train.seeds, grid.task.sparsity, ...) to values")
    for path, value in changes.items():
        head, _, rest = str(path).partition(".")
        if head in ("preset", "out", "zip") and not rest:
            out[head] = value
        elif head == "base" and rest.count(".") == 1:
            section, name = rest.split(".")
            out["base"].setdefault(section, {})[name] = value
        elif head in ("grid", "zip") and rest:
            axes = dict(out.get(head) or {})
            if value is None:
                axes.pop(rest, None)
            else:
                axes[rest] = value
            out[head] = axes
        else:
            raise ConfigError(f"scales.{scale}.{path}: a path is base.SECTION.FIELD, grid.SECTION.FIELD, "
                              "zip.SECTION.FIELD, zip, preset or out")
    return out


def expand(data: Any, out: str | Path | None = None, scale: str | None = None) -> Sweep:
    """Validate a sweep given as plain data (the parsed YAML) and expand it to its runs (at ``scale``, one
    of its ``scales``; None: the file as written)."""
    from ..presets import preset_dict

    if not isinstance(data, Mapping):
        raise ConfigError(f"a sweep file is a mapping with keys {', '.join(KEYS)}")
    for key in data:
        if key not in KEYS:
            raise ConfigError(f"unknown key {key!r}; allowed keys are {', '.join(KEYS)}")
    if data.get("scales") is not None and not isinstance(data["scales"], Mapping):
        raise ConfigError("scales: must map scale names to their changes")
    if scale is not None:
        data = apply_scale(data, scale)
    elif "scales" in data:
        data = {k: v for k, v in data.items() if k != "scales"}
    base = data.get("base") or {}
    if not isinstance(base, Mapping) or not all(isinstance(v, Mapping) or v is None for v in base.values()):
        raise ConfigError("base: must be a mapping of sections (task, model, train, execution) to mappings")
    merged: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    from_preset: set[str] = set()  # section.field set by the preset and not by base
    if data.get("preset") is not None:
        preset = preset_dict(str(data["preset"]))
        base_task = (base.get("task") or {}).get("name")
        if base_task is not None and base_task != preset["task"]["name"]:
            raise ConfigError(f"preset={data['preset']}: it is for task {preset['task']['name']}, but "
                              f"base.task.name={base_task!r}")
        for section in SECTIONS:
            merged[section].update(preset.get(section, {}))
            from_preset |= {f"{section}.{name}" for name in preset.get(section, {})}
    for section, values in base.items():
        if section not in SECTIONS:
            raise ConfigError(f"base.{section}: unknown section; allowed sections are {', '.join(SECTIONS)}")
        merged[section].update(values or {})
        from_preset -= {f"{section}.{name}" for name in (values or {})}
    grid = _axes(data.get("grid"), "grid")
    zipped = _axes(data.get("zip"), "zip")
    for key in set(grid) & set(zipped):
        raise ConfigError(f"{key}: in both grid and zip; put it in one of them")
    lengths = {key: len(values) for key, values in zipped.items()}
    if len(set(lengths.values())) > 1:
        raise ConfigError("zip: the lists must have equal lengths, got "
                          + ", ".join(f"{k}: {n}" for k, n in lengths.items()))
    points = math.prod(len(v) for v in grid.values()) * (next(iter(lengths.values())) if lengths else 1)
    if points > MAX_RUNS:
        raise ConfigError(f"the sweep has {points:,} grid points ({' x '.join(str(len(v)) for v in grid.values())}"
                          f"{' x ' + str(next(iter(lengths.values()))) + ' zipped' if lengths else ''}); at most "
                          f"{MAX_RUNS:,} per sweep file: split it into several")
    zip_points = [_flat(dict(zip(zipped, values))) for values in zip(*zipped.values())] if zipped else [{}]
    grid_points = [_flat(dict(zip(grid, values))) for values in itertools.product(*grid.values())]
    runs: dict[str, SweepRun] = {}
    duplicates = 0
    for grid_point in grid_points:
        for zip_point in zip_points:
            for key in set(grid_point) & set(zip_point):
                raise ConfigError(f"{key}: set by both grid and zip (a section axis sets every field it names)")
            overrides = {**grid_point, **zip_point}
            config = _point_config(merged, overrides, from_preset, data.get("preset"))
            key = config.science_key()
            if key in runs:
                duplicates += 1
                continue
            runs[key] = SweepRun(f"{config.task_name}-{key}", key, overrides, config)
    where = out if out is not None else data.get("out")
    if where is not None and (not isinstance(where, (str, Path)) or not str(where).strip()):
        raise ConfigError(f"out={where!r}: must be a directory path")
    spec = {k: data[k] for k in KEYS if k in data}
    return Sweep(list(runs.values()), Path(where) if where is not None else None, spec, duplicates)


def _axes(values: Any, name: str) -> dict[str, list[Any]]:
    """``grid`` / ``zip``: dotted ``section.field`` keys to non-empty lists."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{name}: must map dotted keys (e.g. task.state_size) to lists")
    out = {}
    for key, options in values.items():
        parts = str(key).split(".")
        if len(parts) not in (1, 2) or parts[0] not in SECTIONS or (len(parts) == 2 and not parts[1]):
            raise ConfigError(f"{name}.{key}: the key must be section.field (or a whole section) with section "
                              f"one of {', '.join(SECTIONS)}")
        if parts[0] == "execution":
            raise ConfigError(f"{name}.{key}: execution never changes the numbers (every value would be the "
                              "same run); set it in base")
        if not isinstance(options, list) or not options:
            raise ConfigError(f"{name}.{key}={options!r}: must be a non-empty list")
        if len(parts) == 1:
            for option in options:
                if not isinstance(option, Mapping) or not option or not all(isinstance(f, str) for f in option):
                    raise ConfigError(f"{name}.{key}: a section axis is a list of mappings of {key} fields "
                                      f"to values, got {option!r}")
        out[str(key)] = list(options)
    section_axes = [k for k in out if "." not in k]
    for key in out:  # a field named by a section axis of this block and by its own axis
        section, _, field_name = key.partition(".")
        if field_name and section in section_axes and any(field_name in o for o in out[section]):
            raise ConfigError(f"{name}.{key}: also set by the section axis {name}.{section}; set it in one of them")
    return out


def _flat(point: dict[str, Any]) -> dict[str, Any]:
    """A point's values as ``section.field`` keys (a section axis's mapping spread into its fields)."""
    out: dict[str, Any] = {}
    for key, value in point.items():
        if "." in key:
            out[key] = value
        else:
            out.update({f"{key}.{field_name}": v for field_name, v in value.items()})
    return out


def _point_config(merged: dict[str, dict[str, Any]], overrides: dict[str, Any], from_preset: set[str] = frozenset(),
                  preset: Any = None) -> ExperimentConfig:
    data = {section: dict(values) for section, values in merged.items()}
    for key, value in overrides.items():
        section, name = key.split(".")
        data[section][name] = value
    label = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
    try:
        config = ExperimentConfig.from_dict(data).resolved()
        check_bias_target(config)  # the one check that needs a built task (train() makes it too)
        return config
    except ConfigError as error:
        text = str(error)
        field = next((f for f in sorted(from_preset - set(overrides)) if text.startswith(f"unknown field {f}:")), None)
        if field is not None:  # as `run --preset` says it
            text += (f". ({field} was set by preset {preset}, which is made for another model; for "
                     f"model.name={data['model'].get('name', 'transformer')} leave out the preset and set the "
                     "sizes in base)")
        raise ConfigError(f"the run {{{label}}}: {text}" if label else text) from None
