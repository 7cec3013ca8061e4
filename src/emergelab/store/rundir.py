"""A run directory and everything in it.

::

    RUN/
      config.yaml                         resolved config + package version + git commit
      task.json                           what the task knows about itself: output labels, per-output optima
      metrics.parquet                     long-format metrics of every seed (see store.metrics)
      summary.json                        per-seed summary written at the end
      checkpoints/seed-003/step-00000400.safetensors   one model's weights (no member dim)
      attention/seed-003/step-00000400.safetensors     "pattern": [layers, heads, P, P], batch mean
      figures/*.png
      state/                              resume states while the run is unfinished
      manifest.jsonl                      size and sha256 of every file above (``store.manifest``)

Every file is written atomically (``store.atomic``) and recorded in the manifest; every reader verifies
what it reads (``store.verify``) and raises ``CorruptFileError`` (one line: the file, the damage, what
to do) for a damaged file. The store holds plain data: dicts, Arrow tables
and tensors; it imports no model and no trainer (``ExperimentConfig.from_run`` and
``train.checkpoints.load_model`` turn its contents back into objects).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
import yaml

from .. import __version__
from .atomic import write_parquet, write_safetensors, write_text
from .manifest import Manifest
from .metrics import SCHEMA
from .verify import (ADVICE, CorruptFileError, parse_json, parse_parquet, parse_safetensors, parse_summary,
                     parse_yaml_mapping, read_verified)

_STEP = re.compile(r"step-(\d+)\.safetensors$")


def git_commit() -> str | None:
    """The commit of the emergelab source tree, if it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class RunDir:
    """Paths and readers of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = Manifest(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ---- paths
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.parquet"

    @property
    def task_path(self) -> Path:
        return self.path / "task.json"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def figures_dir(self) -> Path:
        return self.path / "figures"

    @property
    def state_dir(self) -> Path:
        return self.path / "state"

    def checkpoint_path(self, seed: int, step: int) -> Path:
        return self.path / "checkpoints" / f"seed-{seed:03d}" / f"step-{step:08d}.safetensors"

    def attention_path(self, seed: int, step: int) -> Path:
        return self.path / "attention" / f"seed-{seed:03d}" / f"step-{step:08d}.safetensors"

    # ---- config
    def write_config(self, config: dict[str, Any]) -> None:
        """Write a resolved experiment config (a plain dict) with the package version and git commit."""
        data = {**config, "emergelab": {"version": __version__, "git_commit": git_commit()}}
        write_text(self.config_path, yaml.safe_dump(data, sort_keys=False), self.manifest)

    def read_config_dict(self) -> dict[str, Any]:
        """The saved config as a dict (with its ``emergelab`` provenance section)."""
        data = read_verified(self.config_path, self.path, missing_ok=True)
        if data is None:
            raise FileNotFoundError(f"{self.path} is not a run directory (no config.yaml)")
        return parse_yaml_mapping(self.config_path, data)

    # ---- task
    def write_task_info(self, info: dict[str, Any]) -> None:
        """Record what the task knows about itself (``tasks.task_info``): labels, per-output optima."""
        write_text(self.task_path, json.dumps(info, indent=1), self.manifest)

    def task_info(self) -> dict[str, Any] | None:
        """The task record, or None for a run made before emergelab wrote one."""
        data = read_verified(self.task_path, self.path, missing_ok=True)
        return None if data is None else parse_json(self.task_path, data)

    # ---- metrics
    def is_complete(self) -> bool:
        return self.summary_path.exists() and self.metrics_path.exists()

    def write_metrics(self, table: pa.Table) -> None:
        write_parquet(self.metrics_path, table, self.manifest)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_text(self.summary_path, json.dumps(summary, indent=1), self.manifest)

    def metrics(self) -> pa.Table:
        data = read_verified(self.metrics_path, self.path, missing_ok=True)
        if data is None:
            raise FileNotFoundError(f"{self.path}: no metrics.parquet yet (is the run finished?)")
        table = parse_parquet(self.metrics_path, data, SCHEMA)
        assert table is not None
        return table

    def verify_metrics(self) -> None:
        """Raise CorruptFileError unless metrics.parquet is intact (checksum, footer and schema; every page
        decoded when the manifest does not record it)."""
        data = read_verified(self.metrics_path, self.path, missing_ok=True)
        if data is None:
            raise CorruptFileError(self.metrics_path, "missing", ADVICE["metrics.parquet"])
        recorded = self.manifest.expected(self.metrics_path) is not None
        parse_parquet(self.metrics_path, data, SCHEMA, footer_only=recorded)

    def summary(self) -> dict[str, Any]:
        """summary.json as a dict (a training run's, or an LM scan's: ``lm/scan.py``)."""
        return parse_json(self.summary_path, read_verified(self.summary_path, self.path))

    def run_summary(self) -> dict[str, Any]:
        """A training run's summary.json, its shape checked (``store.verify.parse_summary``)."""
        return parse_summary(self.summary_path, read_verified(self.summary_path, self.path))

    # ---- any file of the run, recorded in the manifest (resume states)
    def write_file_text(self, path: Path, text: str) -> None:
        write_text(path, text, self.manifest)

    def write_file_parquet(self, path: Path, table: pa.Table) -> None:
        write_parquet(path, table, self.manifest)

    def write_file_safetensors(self, path: Path, tensors: dict[str, torch.Tensor]) -> None:
        write_safetensors(path, tensors, manifest=self.manifest)

    def remove(self, path: Path) -> None:
        """Delete a file or folder of the run and record that in the manifest."""
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        self.manifest.forget(path)

    # (``self.manifest.read()`` is parsed once and re-parsed only when the journal changes, so reading every
    # snapshot of a many-seed run does not parse the whole manifest per file)
    def read_file_json(self, path: Path) -> Any:
        return parse_json(path, read_verified(path, self.path, self.manifest.read()))

    def read_file_parquet(self, path: Path, schema: pa.Schema | None = SCHEMA) -> pa.Table:
        table = parse_parquet(path, read_verified(path, self.path, self.manifest.read()), schema)
        assert table is not None
        return table

    def read_file_safetensors(self, path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        return parse_safetensors(path, read_verified(path, self.path, self.manifest.read()), str(device))

    # ---- checkpoints and attention snapshots
    def _steps(self, folder: str, seed: int) -> list[int]:
        directory = self.path / folder / f"seed-{seed:03d}"
        if not directory.exists():
            return []
        return sorted(int(m.group(1)) for p in directory.iterdir() if (m := _STEP.search(p.name)))

    def checkpoint_steps(self, seed: int = 0) -> list[int]:
        return self._steps("checkpoints", seed)

    def checkpoint_seeds(self) -> list[int]:
        """The seeds with a checkpoint folder (``checkpoints/seed-NNN``)."""
        folder = self.path / "checkpoints"
        names = [p.name for p in folder.glob("seed-*")] if folder.is_dir() else []
        return sorted(int(name[5:]) for name in names if name[5:].isdigit())

    def attention_steps(self, seed: int = 0) -> list[int]:
        return self._steps("attention", seed)

    def nearest_checkpoint(self, seed: int, step: int) -> int:
        steps = self.checkpoint_steps(seed)
        if not steps:
            raise FileNotFoundError(f"{self.path}: no checkpoints for seed {seed}")
        return min(steps, key=lambda s: (abs(s - step), s))

    def save_checkpoint(self, seed: int, step: int, state: dict[str, torch.Tensor]) -> None:
        write_safetensors(self.checkpoint_path(seed, step), state,
                          metadata={"seed": str(seed), "step": str(step)}, manifest=self.manifest)

    def load_checkpoint(self, seed: int, step: int, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The state dict (one model, no member dimension) of ``seed`` at checkpoint ``step``."""
        path = self.checkpoint_path(seed, step)
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint for seed {seed} at step {step}; saved steps: "
                                    f"{self.checkpoint_steps(seed)}")
        return self.read_file_safetensors(path, device)

    def save_attention(self, seed: int, step: int, pattern: torch.Tensor) -> None:
        write_safetensors(self.attention_path(seed, step), {"pattern": pattern},
                          metadata={"seed": str(seed), "step": str(step)}, manifest=self.manifest)

    def load_attention(self, seed: int, step: int) -> torch.Tensor:
        """Mean attention pattern ``[layers, heads, P, P]`` of ``seed`` at ``step``."""
        path = self.attention_path(seed, step)
        tensors = self.read_file_safetensors(path)
        if "pattern" not in tensors:
            raise CorruptFileError(path, "damaged: no tensor named 'pattern'",
                                   "an attention snapshot cannot be rebuilt without training again: "
                                   "restore it from a backup")
        return tensors["pattern"]
