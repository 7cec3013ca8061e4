"""Trackers: a run's metrics streamed to TensorBoard and Weights & Biases while it trains
(``execution.log``, ``emergelab run ... --log tensorboard --log wandb``).

One logical tracker run per seed, grouped by the config:

* ``tensorboard``: event files in ``RUN/tensorboard/seed-<i>/`` (``tensorboard --logdir RUN/tensorboard``;
  a sweep's run directories are named by their config hash). TensorBoard keeps scalars as float32.
* ``wandb``: one W&B run per seed, ``group=<config hash>``, ``name=seed-<i>``, the science config and
  the seed in its config. wandb's own settings apply (``WANDB_MODE=offline`` or ``wandb offline``,
  ``WANDB_PROJECT`` (default ``emergelab``), ``WANDB_ENTITY``); its files go to ``WANDB_DIR``, else to
  ``RUN/wandb/``. ``RUN/wandb/seed-<i>.json`` keeps the W&B run id and the last step logged, so a
  resumed run continues the same W&B run.

Where: every unit of work logs its own seeds as it trains (:func:`~emergelab.train.unit.run_unit`), in
whichever process trains them (the in-process ensemble, a worker process, a Ray task), at every probe.
A seed lives in exactly one unit, so each tracker run has one writer.

Resume: a tracker is sent only the steps newer than the last one it already holds (TensorBoard: read
back from its event files; W&B: the step in ``seed-<i>.json``). After a resume the unit first sends
what its resume state holds (points a tracker missed: never logged, or lost in a kill before a flush),
then the steps it trains again, so every step is logged once. A finished run given ``--log`` again
sends its ``metrics.parquet`` the same way (:func:`log_finished`).

Trackers never change the numbers (``execution`` is outside the run hash; they only read the metrics),
and a tracker that fails (wandb cannot start, a full disk) is switched off with one warning; training
goes on. tensorboard and wandb are imported here only, inside the trackers (extras
``tensorboard``, ``wandb``: ``pip install -e '.[tensorboard,wandb]'`` in the checkout).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Protocol

import pyarrow as pa

from ..config import ConfigError
from ..store import RunDir
from .config import ExperimentConfig
from .stopping import uninterrupted

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # tracker -> the module it needs
REQUIREMENTS = {"tensorboard": "'tensorboard>=2.12'", "wandb": "'wandb>=0.19.10'"}  # as pyproject's extras


class TrackerWarning(UserWarning):
    """A tracker was switched off (it failed); training went on. Printed as one line."""

    one_line = True


def require_packages(names: Iterable[str]) -> None:
    """Raise a one-line ConfigError naming the extra to install when a tracker's package is missing."""
    for name in names:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ConfigError(f"--log {name}: the {PACKAGES[name]} package is not installed; "
                              f"pip install {REQUIREMENTS[name]} (or pip install -e '.[{name}]' in emergelab's "
                              "checkout)")


def tag(metric: str, index: str) -> str:
    """The tracker key of a metrics row: ``loss``, ``loss_pos/3``, ``attn_gt_mass/0.2``."""
    return f"{metric}/{index}" if index else metric


class Tracker(Protocol):
    name: str

    def last_step(self, seed: int) -> int: ...  # the newest step it holds for ``seed`` (-1: none)
    def write(self, seed: int, step: int, values: dict[str, float]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class Trackers:
    """The trackers ``names`` of run ``run`` for seeds ``seeds``; :meth:`log` sends rows of the metrics
    table. Use as a context manager (closes, flushing what is left)."""

    def __init__(self, names: Iterable[str], config: ExperimentConfig, run: RunDir, seeds: Iterable[int]):
        makers = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}
        self.seeds = list(seeds)
        self.trackers: list[Tracker] = []
        for name in names:
            try:
                self.trackers.append(makers[name](config, run))
            except Exception as error:  # e.g. the package is missing in a worker's environment
                _switched_off(name, error)

    def log(self, table: pa.Table) -> None:
        """Send every row of ``table`` (the metrics schema) that a tracker does not hold yet."""
        if not self.trackers or table.num_rows == 0:
            return
        points: dict[int, dict[int, dict[str, float]]] = {}  # seed -> step -> {tag: value}
        columns = [table.column(c).to_pylist() for c in ("seed", "step", "metric", "index", "value")]
        for seed, step, metric, index, value in zip(*columns):
            points.setdefault(seed, {}).setdefault(step, {})[tag(metric, index)] = value
        for tracker in list(self.trackers):
            try:
                for seed in sorted(points):
                    last = tracker.last_step(seed)
                    for step in sorted(s for s in points[seed] if s > last):
                        values = points[seed][step]
                        with uninterrupted():  # sent and recorded as sent, or neither (train/stopping.py)
                            tracker.write(seed, step, {k: values[k] for k in sorted(values)})
                tracker.flush()
            except Exception as error:
                self._drop(tracker, error)

    def close(self) -> None:
        for tracker in list(self.trackers):
            try:
                tracker.close()
            except Exception as error:
                self._drop(tracker, error)
        self.trackers = []

    def _drop(self, tracker: Tracker, error: Exception) -> None:
        self.trackers.remove(tracker)
        _switched_off(tracker.name, error)
        try:
            tracker.close()
        except Exception:
            pass

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _switched_off(name: str, error: Exception) -> None:
    text = " ".join(str(error).split()) or type(error).__name__
    warnings.warn(f"--log {name}: switched off ({type(error).__name__}: {text[:300]}); training goes on",
                  TrackerWarning, stacklevel=3)


def log_finished(config: ExperimentConfig, run: RunDir) -> None:
    """Send a finished run's ``metrics.parquet`` to the trackers of ``config.execution.log`` (only what
    they do not hold yet)."""
    if not config.execution.log:
        return
    table = run.metrics()
    with Trackers(config.execution.log, config, run, range(config.train.seeds)) as trackers:
        trackers.log(table)


# ------------------------------------------------------------------------------------------ TensorBoard
_EVENT_FILE = re.compile(r"events\.out\.tfevents\.(\d+)\.")


class TensorBoardTracker:
    """Event files in ``RUN/tensorboard/seed-<i>/``: one event per step holding every metric of the step,
    so a step is written whole or (cut off by a kill) not at all."""

    name = "tensorboard"

    def __init__(self, config: ExperimentConfig, run: RunDir):
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._Event, self._Summary, self._EventFileWriter = Event, Summary, EventFileWriter
        self.root = run.path / "tensorboard"
        self.writers: dict[int, Any] = {}
        self.last: dict[int, int] = {}

    def folder(self, seed: int) -> Path:
        return self.root / f"seed-{seed}"

    def last_step(self, seed: int) -> int:
        if seed not in self.last:
            self.last[seed] = read_last_step(self.folder(seed))
        return self.last[seed]

    def write(self, seed: int, step: int, values: dict[str, float]) -> None:
        if seed not in self.writers:
            folder = self.folder(seed)
            folder.mkdir(parents=True, exist_ok=True)
            _wait_for_a_new_second(folder)
            self.writers[seed] = self._EventFileWriter(str(folder), max_queue_size=1000, flush_secs=30)
        summary = self._Summary(value=[self._Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
        self.writers[seed].add_event(self._Event(wall_time=time.time(), step=step, summary=summary))
        self.last[seed] = step

    def flush(self) -> None:
        for writer in self.writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers = {}


def read_last_step(folder: Path) -> int:
    """The newest step with scalars in the event files of ``folder`` (-1: none). A record cut off at the
    end of a file (a killed writer) is not read."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    last = -1
    for path in sorted(folder.glob("events.out.tfevents.*")) if folder.exists() else []:
        for event in EventFileLoader(str(path)).Load():
            if event.HasField("summary") and len(event.summary.value):
                last = max(last, event.step)
    return last


def _wait_for_a_new_second(folder: Path) -> None:
    """TensorBoard reads a folder's event files in name order, and a name starts with the time in whole
    seconds (then host and pid): a resumed writer's file must start in a later second than the files
    already there, or its steps could be read first (and purged as out of order)."""
    stamps = [int(m.group(1)) for p in folder.iterdir() if (m := _EVENT_FILE.match(p.name))]
    if stamps:
        wait = max(stamps) + 1 - time.time()
        if wait > 0:
            time.sleep(wait)


# ------------------------------------------------------------------------------------------ W&B
class WandbTracker:
    """One W&B run per seed (``group=<config hash>``, ``name=seed-<i>``), started at its first point (a
    resumed or finished run with nothing new starts none). ``RUN/wandb/seed-<i>.json`` holds its id and
    the last step sent."""

    name = "wandb"

    def __init__(self, config: ExperimentConfig, run: RunDir):
        import wandb

        self.wandb, self.config, self.run = wandb, config, run
        self.ledger_dir = run.path / "wandb"
        self.runs: dict[int, Any] = {}
        self.ledgers: dict[int, dict[str, Any]] = {}

    def ledger(self, seed: int) -> dict[str, Any]:
        if seed not in self.ledgers:
            path = self.ledger_dir / f"seed-{seed}.json"
            try:
                data = json.loads(path.read_text())
                ledger = {"id": str(data["id"]), "step": int(data["step"])}
            except (OSError, ValueError, KeyError, TypeError):  # none yet (or unreadable: a new W&B run)
                ledger = {"id": f"{self.config.science_key()}-seed{seed}-{secrets.token_hex(4)}", "step": -1}
            self.ledgers[seed] = ledger
        return self.ledgers[seed]

    def last_step(self, seed: int) -> int:
        return self.ledger(seed)["step"]

    def write(self, seed: int, step: int, values: dict[str, float]) -> None:
        if seed not in self.runs:
            self.runs[seed] = self._start(seed)
        self.runs[seed].log(values, step=step)
        self.ledger(seed)["step"] = step

    def _start(self, seed: int) -> Any:
        key = self.config.science_key()
        config = {**self.config.science_dict(), "seed": seed, "config_hash": key, "run_dir": str(self.run.path)}
        self.ledger_dir.mkdir(parents=True, exist_ok=True)
        return self.wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "emergelab", group=key, name=f"seed-{seed}",
            id=self.ledger(seed)["id"], resume="allow", config=config, reinit="create_new",
            dir=os.environ.get("WANDB_DIR") or str(self.run.path), settings=self._settings())

    def _settings(self) -> Any:
        """No console capture (several runs share a process); no system metrics per seed (they would
        repeat the process's), where this wandb has the (private) switch."""
        try:
            return self.wandb.Settings(console="off", x_disable_stats=True)
        except Exception:
            return self.wandb.Settings(console="off")

    def flush(self) -> None:
        for seed in self.runs:
            path = self.ledger_dir / f"seed-{seed}.json"
            partial = path.with_name(path.name + ".partial")
            partial.write_text(json.dumps(self.ledgers[seed]))
            os.replace(partial, path)

    def close(self) -> None:
        """Finish every W&B run, then record the steps sent: a worker stopped in the middle of
        ``Trackers.log`` (before its flush) sent steps its ledger did not hold, and its resume sent them
        again (a step twice in W&B)."""
        try:
            for run in self.runs.values():
                run.finish()
        finally:
            self.flush()
            self.runs = {}
