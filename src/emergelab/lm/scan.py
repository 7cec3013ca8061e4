"""Checkpoint scans: a capability across the revisions of each seed, and each seed's point of emergence.

The search per seed (coarse to fine; :func:`find_emergence`):

1. evaluate a coarse subset of the revisions, log-spaced in step (:func:`coarse_revisions`, first and
   last always included);
2. the coarse bracket is the last coarse point below ``threshold`` before the first coarse point from
   which every later coarse point is at or above it;
3. bisect the revisions inside the bracket until two neighbours remain: the emergence revision is the
   first revision at or above the threshold there.

So a scan of 154 Pythia revisions costs ``coarse + log2(gap)`` evaluations per seed (about 8 + 5), not
154 (``exhaustive=True`` evaluates all). Bisection assumes the score crosses once inside the bracket;
the coarse points and every evaluation are stored, so a non-monotone curve is visible in the data.

Every checkpoint is fetched into a scan-local cache, evaluated and deleted before the next one, so the
scan holds one checkpoint at a time and refuses one larger than ``disk_budget_gb``. The scan is
resumable: evaluations already in ``metrics.parquet`` are not repeated. Everything is recorded in a run
directory that ``emergelab analyze`` / ``query`` and ``store.connect`` read::

    OUT/config.yaml       task (capability and prompt knobs), model (source per seed), scan settings
    OUT/task.json         the prompt set's description; optimal loss 0
    OUT/metrics.parquet   step = the revision's step, seed = the suite seed, metric in target_prob[_lo/_hi],
                          solved_fraction[_lo/_hi], loss, logit_diff (IOI)
    OUT/summary.json      per seed: emergence revision and step, status, the revisions evaluated, and
                          groups of revisions whose weights are byte-identical (``duplicates``)
    OUT/state/fingerprints.json   sha256 of each evaluated revision's weights
    OUT/cache/            the checkpoint being evaluated (empty between evaluations)

Example::

    from emergelab.lm import HubSource, ScanConfig, pythia_repo, scan
    sources = {s: HubSource(pythia_repo("14m", s)) for s in range(3)}
    result = scan(sources, ScanConfig(capability="repetition", threshold=0.5), "runs/pythia-14m-rep")
    result.seeds[0].emergence_revision, result.seeds[0].evaluated
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..config import ConfigError, require_float, require_int
from ..store import MetricsBuffer, RunDir, locked, sort_rows
from .capabilities import (PromptSet, build_prompts, check_context, check_params, load_tokenizer, memory_errors,
                           score_prompts)
from .sources import CheckpointSource, LocalSource, folder_size, revision_step, source_context

METRICS = ("target_prob", "solved_fraction", "loss", "logit_diff")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# ScanConfig's fields -> the `emergelab lm scan` flags that set them (for errors from the command line)
SCAN_FLAGS = {"capability": "--capability", "metric": "--metric", "n_prompts": "--n-prompts",
              "prompt_seed": "--prompt-seed", "threshold": "--threshold", "coarse": "--coarse",
              "batch_size": "--batch-size", "disk_budget_gb": "--disk-budget-gb", "dtype": "--dtype",
              "device": "--device", "tokenizer": "--tokenizer"}


def with_flags(error: ConfigError, flags: dict[str, str]) -> ConfigError:
    """``error`` with its leading field name (``batch_size=0: ...``, ``dtype 'x': ...``) replaced by the
    command-line flag that sets it (``--batch-size=0: ...``); unchanged when it names no field of ``flags``."""
    text = str(error)
    match = re.match(r"([A-Za-z_]\w*)(?=[= ])", text)
    if match and match.group(1) in flags:
        return ConfigError(flags[match.group(1)] + text[match.end():])
    return error


@dataclass(frozen=True)
class ScanConfig:
    """What to evaluate and how to search. ``metric`` (one of :data:`METRICS`, rising) crosses
    ``threshold`` at emergence; ``params``: the capability's knobs (e.g. ``{"length": 12}``)."""

    capability: str = "repetition"
    params: dict = field(default_factory=dict)
    n_prompts: int = 200
    prompt_seed: int = 0
    metric: str = "solved_fraction"
    threshold: float = 0.5
    coarse: int = 8
    exhaustive: bool = False
    batch_size: int = 64
    disk_budget_gb: float = 20.0
    dtype: str = "float32"
    device: str = "cpu"
    tokenizer: str | None = None  # a tokenizer.json to use instead of the checkpoint's

    def __post_init__(self) -> None:
        check_params(self.capability, self.params)
        if self.metric not in METRICS or self.metric == "loss":
            raise ConfigError(f"metric {self.metric!r}: allowed are target_prob, solved_fraction, logit_diff")
        require_int("n_prompts", self.n_prompts, 1, 10 ** 7)
        require_int("prompt_seed", self.prompt_seed, 0, 2 ** 63 - 1)
        require_int("coarse", self.coarse, 2, 10 ** 4)
        require_int("batch_size", self.batch_size, 1, 10 ** 6)
        require_float("disk_budget_gb", self.disk_budget_gb, 0.0, 1e6, open_min=True)
        if not math.isfinite(self.threshold):
            raise ConfigError(f"threshold={self.threshold!r}: must be a finite number")
        if self.metric in ("solved_fraction", "target_prob") and not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold={self.threshold!r}: metric {self.metric} lies in [0, 1], so the "
                              "threshold must be in (0, 1] (no revision could reach it)")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r}: allowed are {', '.join(DTYPES)}")
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"device={self.device!r}: must be cpu, cuda, cuda:N or mps")

    def science(self) -> dict[str, Any]:
        """The fields that change the numbers (a resumed scan must agree on them)."""
        return {"capability": self.capability, "params": dict(self.params), "n_prompts": self.n_prompts,
                "prompt_seed": self.prompt_seed, "metric": self.metric, "threshold": self.threshold,
                "dtype": self.dtype}


@dataclass
class SeedScan:
    """One seed: ``status`` is "emerged" (crossed inside the scan), "at_start" (already at or above the
    threshold at the first revision) or "not_emerged"; ``evaluated``: revisions in the order evaluated
    (by this call or earlier ones); ``scores``: revision -> metric value."""

    seed: int
    source: str
    status: str = "not_emerged"
    emergence_revision: str | None = None
    emergence_step: int | None = None
    evaluated: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    fetched: int = 0  # checkpoints fetched by this call (resumed evaluations are not fetched again)
    duplicates: list[list[str]] = field(default_factory=list)  # revisions whose weights are byte-identical


@dataclass
class ScanResult:
    path: Path
    config: ScanConfig
    seeds: dict[int, SeedScan]
    peak_cache_bytes: int = 0

    def format(self) -> str:
        lines = [f"{self.config.capability}: {self.config.metric} >= {self.config.threshold}",
                 f"{'seed':>4}  {'emergence':>12}  {'status':<12} evaluations  source"]
        for seed, s in sorted(self.seeds.items()):
            lines.append(f"{seed:>4}  {s.emergence_revision or '-':>12}  {s.status:<12} {len(s.evaluated):>11}  "
                         f"{s.source}")
        return "\n".join(lines)


def coarse_revisions(revisions: list[str], k: int) -> list[int]:
    """Indices of about ``k`` revisions log-spaced in ``step + 1`` (first and last included), ascending."""
    steps = np.array([revision_step(r) for r in revisions], dtype=np.float64)
    if len(steps) <= k:
        return list(range(len(steps)))
    targets = np.geomspace(steps[0] + 1, steps[-1] + 1, k)
    picked = {int(np.argmin(np.abs(np.log(steps + 1) - math.log(t)))) for t in targets}
    picked |= {0, len(steps) - 1}
    return sorted(picked)


def find_emergence(n: int, value: Callable[[int], float], threshold: float, coarse: list[int],
                   exhaustive: bool = False) -> tuple[str, int | None]:
    """``(status, index)`` of the first revision at or above ``threshold`` from which it stays there,
    evaluating ``value(i)`` only where needed (coarse points, then bisection; every point if
    ``exhaustive``). See the module doc."""
    points = list(range(n)) if exhaustive else coarse
    above = [value(i) >= threshold for i in points]
    j = len(points)
    while j > 0 and above[j - 1]:
        j -= 1
    if j == len(points):
        return "not_emerged", None
    if j == 0:
        return "at_start", points[0]
    lo, hi = points[j - 1], points[j]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if value(mid) >= threshold:
            hi = mid
        else:
            lo = mid
    return "emerged", hi


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def scan(sources: dict[int, CheckpointSource], config: ScanConfig, out: str | Path, *,
         loader: Callable[..., Any] | None = None, log: Callable[[str], None] = lambda line: None) -> ScanResult:
    """Scan every seed's revisions for ``config.capability`` and record it all in the run directory ``out``.

    ``sources``: suite seed -> :class:`~emergelab.lm.sources.CheckpointSource`; ``loader(folder, dtype,
    device) -> model`` (default :func:`~emergelab.lm.hf.load_lm`: GPT-NeoX through ``neox.py``, any other
    causal LM through ``hf.py``); ``log`` gets one line per event.
    Re-running on the same ``out`` resumes (a different capability, prompt set, metric or threshold is a
    ConfigError). Everything :func:`check_scan` can check is checked before anything is written, and a
    scan that fails before its first evaluation is stored leaves ``out`` as it found it (so the corrected
    command starts afresh). Returns a :class:`ScanResult`.
    """
    prompts = check_scan(sources, config, out)
    if loader is None:
        from .hf import load_lm as loader
    run = RunDir(out)
    top = run.path.absolute()  # the outermost folder this call creates (None: out exists)
    while not top.parent.exists():
        top = top.parent
    created = None if run.path.exists() else top
    before = set() if created else {p.name for p in run.path.iterdir()}
    run.path.mkdir(parents=True, exist_ok=True)
    held, scored = False, True
    try:
        with locked(run.state_dir / "scan.lock", wait=False, what="this scan"):
            held, scored = True, run.metrics_path.exists()
            return _scan(sources, config, run, loader, log, prompts)
    except BaseException:
        if held and not scored and not run.metrics_path.exists():  # nothing scored: leave no trace
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            else:
                for path in run.path.iterdir():
                    if path.name not in before:
                        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        raise


def check_scan(sources: dict[int, CheckpointSource], config: ScanConfig, out: str | Path) -> PromptSet | None:
    """Everything about a scan that can be checked before a checkpoint is fetched or anything is written
    to ``out``, each a one-line ConfigError: the device; every source's revisions (``stepN``, in training
    order, present: a local folder or a Pythia branch); the capability's knobs against the model context
    when the source knows it (a local ``config.json``, Pythia's 2048); a local source's first checkpoint
    against the disk budget; the tokenizer; and that ``out`` holds no other scan. Returns the prompts when
    they can be built already (``config.tokenizer``, or a local source's ``tokenizer.json``), else None."""
    from ..train.estimate import check_device

    if not sources:
        raise ConfigError("scan: no seeds to scan")
    check_device("device", config.device)
    budget = int(config.disk_budget_gb * 1e9)
    contexts: dict[str, int | None] = {}
    for seed, source in sorted(sources.items()):
        revisions = source.revisions()
        if not revisions:
            raise ConfigError(f"{source.name}: no revisions to scan (expected folders such as {source.name}/step0/ "
                              "with a config.json)" if isinstance(source, LocalSource)
                              else f"{source.name}: no revisions to scan")
        steps = [revision_step(r) for r in revisions]
        for i in range(1, len(steps)):
            if steps[i] <= steps[i - 1]:
                raise ConfigError(f"{source.name}: revisions must be in training order, each once; {revisions[i]} "
                                  f"comes after {revisions[i - 1]}")
        check = getattr(source, "check", None)
        if callable(check):
            check(revisions)
        contexts[source.name] = context = source_context(source)
        check_params(config.capability, config.params, context, source.name)
        if isinstance(source, LocalSource):  # a hub checkpoint's size needs the network: checked before its download
            _check_budget(source, revisions[0], budget)
    first = sources[min(sources)]
    tokenizer = None
    if config.tokenizer:
        tokenizer = load_tokenizer(Path(config.tokenizer), "--tokenizer")
    elif isinstance(first, LocalSource):
        tokenizer = load_tokenizer(first.folder(first.revisions()[0]) / "tokenizer.json")
    prompts = None
    if tokenizer is not None:
        prompts = _prompts(config, tokenizer)
        for name, context in contexts.items():
            check_context(config.capability, config.params, prompts.tokens.shape[1], context, name)
    run = RunDir(out)
    if run.config_path.exists():
        _merged_record(run, _record(sources, config))
    return prompts


def _check_budget(source: CheckpointSource, revision: str, budget: int) -> None:
    size = source.size(revision)
    if size is not None and size > budget:
        raise ConfigError(f"{source.name}@{revision} needs {size / 1e9:.3g} GB, over the disk budget of "
                          f"{budget / 1e9:.3g} GB; raise --disk-budget-gb")


def _record(sources: dict[int, CheckpointSource], config: ScanConfig) -> dict[str, Any]:
    return {"task": {"name": f"lm-{config.capability}", **config.science()},
            "model": {"name": "hf-causal-lm", "sources": {int(s): src.name for s, src in sources.items()}},
            "scan": {"coarse": config.coarse, "exhaustive": config.exhaustive},
            "train": {"seeds": len(sources)}}


def _merged_record(run: RunDir, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` merged with the scan ``run`` holds; ConfigError when it holds another scan (or another
    kind of run). A scan that stored no evaluation (no metrics.parquet) is replaced."""
    if not run.config_path.exists():
        return record
    saved = run.read_config_dict()
    task = saved.get("task")
    if task != record["task"]:
        name = task.get("name") if isinstance(task, dict) else None
        if isinstance(name, str) and name.startswith("lm-") and not run.metrics_path.exists():
            return record
        raise ConfigError(f"{run.path} holds a scan of {task}, not {record['task']}; use another --out")
    seen = saved.get("model", {}).get("sources", {})
    for seed, name in record["model"]["sources"].items():
        if seed in seen and seen[seed] != name:
            raise ConfigError(f"{run.path}: seed {seed} was scanned from {seen[seed]}, not {name}")
    sources = {**seen, **record["model"]["sources"]}
    return {**record, "model": {**record["model"], "sources": sources}, "train": {"seeds": len(sources)}}


def _scan(sources: dict[int, CheckpointSource], config: ScanConfig, run: RunDir, loader: Callable[..., Any],
          log: Callable[[str], None], prompts: PromptSet | None = None) -> ScanResult:
    record = _merged_record(run, _record(sources, config))
    run.write_config(record)

    table = run.metrics() if run.metrics_path.exists() else None
    buffer = MetricsBuffer()
    done: dict[tuple[int, int], float] = {}
    if table is not None:
        buffer.extend(table)
        for row in table.to_pylist():
            if row["metric"] == config.metric and row["index"] == "":
                done[(row["seed"], row["step"])] = row["value"]

    cache = run.path / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # left over from an interrupted evaluation
    budget = int(config.disk_budget_gb * 1e9)
    dtype = DTYPES[config.dtype]
    result = ScanResult(run.path, config, {})
    state: dict[str, Any] = {"prompts": prompts}

    prints_path = run.state_dir / "fingerprints.json"
    prints: dict[str, dict[str, str]] = run.read_file_json(prints_path) if prints_path.exists() else {}
    for seed, source in sorted(sources.items()):
        revisions = source.revisions()
        if not revisions:
            raise ConfigError(f"{source.name}: no revisions to scan")
        steps = [revision_step(r) for r in revisions]
        info = SeedScan(seed=int(seed), source=source.name)
        info.evaluated = [r for r, s in zip(revisions, steps) if (seed, s) in done]

        def value(i: int) -> float:
            key = (seed, steps[i])
            if key not in done:
                metrics, fingerprint = _evaluate(source, revisions[i], config, cache / _safe(source.name), budget,
                                                 dtype, loader, state, result)
                prints.setdefault(str(seed), {})[revisions[i]] = fingerprint
                run.write_file_text(prints_path, json.dumps(prints, indent=1))
                info.fetched += 1
                for name, v in metrics.items():
                    buffer.add(steps[i], np.array([seed]), name, [""], np.array([[v]]))
                run.write_metrics(sort_rows(buffer.table()))
                done[key] = metrics[config.metric]
                info.evaluated.append(revisions[i])
                log(f"seed {seed} {revisions[i]}: {config.metric} = {done[key]:.4f}")
            info.scores[revisions[i]] = done[key]
            return done[key]

        status, index = find_emergence(len(revisions), value, config.threshold,
                                       coarse_revisions(revisions, config.coarse), config.exhaustive)
        info.status = status
        by_print: dict[str, list[str]] = {}
        for revision, fingerprint in prints.get(str(seed), {}).items():
            by_print.setdefault(fingerprint, []).append(revision)
        info.duplicates = [sorted(g, key=revision_step) for g in by_print.values() if len(g) > 1]
        for group in info.duplicates:
            log(f"warning: seed {seed}: revisions {', '.join(group)} hold byte-identical weights")
        if index is not None:
            info.emergence_revision, info.emergence_step = revisions[index], steps[index]
        log(f"seed {seed}: {status} at {info.emergence_revision or '-'} "
            f"({len(info.evaluated)} of {len(revisions)} revisions evaluated)")
        result.seeds[int(seed)] = info

    if state["prompts"] is not None:
        prompts: PromptSet = state["prompts"]
        run.write_task_info({"output_name": "answer", "n_outputs": 0, "labels": [], "optimal_loss": 0.0,
                             "output_optima": [], "describe": prompts.describe()})
    summary = {"task": f"lm-{config.capability}", "metric": config.metric, "threshold": config.threshold,
               "seeds": {str(s): {k: v for k, v in asdict(i).items() if k not in ("scores", "fetched")}
                         for s, i in result.seeds.items()}}
    run.write_summary(summary)
    return result


def model_context(model: Any) -> int | None:
    """The positions a loaded model was built for (``neox.py``'s spec, or the HF config), None if unknown."""
    from .sources import context_of

    spec = getattr(model, "spec", None)
    if isinstance(getattr(spec, "context_length", None), int):
        return spec.context_length
    hf_config = getattr(getattr(model, "hf", None), "config", None)
    return context_of(hf_config.to_dict()) if hf_config is not None else None


def _fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()[:32]


def _prompts(config: ScanConfig, tokenizer: Any) -> PromptSet:
    return build_prompts(config.capability, tokenizer, n=config.n_prompts, seed=config.prompt_seed, **config.params)


def _evaluate(source: CheckpointSource, revision: str, config: ScanConfig, cache: Path, budget: int,
              dtype: torch.dtype, loader: Callable[..., Any], state: dict[str, Any],
              result: ScanResult) -> tuple[dict[str, float], str]:
    """Fetch one checkpoint into ``cache/<revision>``, score it, delete it. Returns the metrics and a
    fingerprint of the weights (sha256 of the safetensors files), so revisions that serve the same
    weights (a known hub problem: EleutherAI/pythia#205) show up in ``summary.json``."""
    _check_budget(source, revision, budget)
    into = cache / _safe(revision)
    try:
        folder = source.fetch(revision, into)
        held = folder_size(into)
        result.peak_cache_bytes = max(result.peak_cache_bytes, held)
        if held > budget:
            raise ConfigError(f"{source.name}@{revision} took {held / 1e9:.3g} GB, over the disk budget of "
                              f"{budget / 1e9:.3g} GB; raise --disk-budget-gb")
        if state["prompts"] is None:
            prompts = _prompts(config, load_tokenizer(folder / "tokenizer.json"))
            check_context(config.capability, config.params, prompts.tokens.shape[1], source_context(source),
                          source.name)
            state["prompts"] = prompts
        model = loader(folder, dtype=dtype, device=config.device)
        check_context(config.capability, config.params, state["prompts"].tokens.shape[1], model_context(model),
                      f"{source.name}@{revision}")
        with memory_errors(state["prompts"], config.batch_size, config.device):
            score = score_prompts(model, state["prompts"], batch_size=config.batch_size)
        del model
        metrics = score.metrics()
        if config.metric not in metrics:
            raise ConfigError(f"metric {config.metric!r} is not defined for {config.capability}")
        return metrics, _fingerprint(folder)
    finally:
        shutil.rmtree(into, ignore_errors=True)
