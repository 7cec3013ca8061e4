"""Whole suites: every size's seeds scanned for one capability, steps to emergence against size, one seed's
curve and the heads that carry it (the paper's Figure 1, on Pythia or any suite laid out the same way).

:func:`scan_suite` runs :func:`~emergelab.lm.scan.scan` for each size (smallest first) into
``OUT/<size>/``, each resumable, then writes (atomically)::

    OUT/<size>/               that size's scan: config.yaml, metrics.parquet, summary.json (see scan.py)
    OUT/table.txt             per size: seeds, solved, median emergence step [range]; per seed: its emergence
                              revision, "already at the first revision", or "not by <last revision>"
    OUT/pythia_emergence.png  left: steps to emergence per seed against size (open markers: not solved);
                              middle: the shown seed's metric at each revision evaluated; right: the
                              patching gain per head [layers x heads]
    OUT/patch/                patch_revisions of the shown seed: patch.txt, patch_table.parquet,
                              patch_joint.parquet, patch_greedy.parquet; patch.json (what was patched)
    OUT/suite.json            per size and seed: status, emergence revision and step, evaluations; seconds
    OUT/RESULT.md             claim, command, machine, wall time, the table, the figure, the patching report

Sizes are ordered by the parameter count their name gives (:func:`parse_size`: ``"14m"``, ``"1.4b"``).
A seed is *solved* when it reaches the threshold inside the scan ("emerged") or at its first revision
("at_start"). The seed shown is the largest size's seed that crossed inside the scan ("emerged": only
those have a revision before emergence to patch from) with the median emergence step (the lower of two
middles; ties: the lower seed). Its heads are patched from the revision just before its emergence
revision into it (``early`` = the one before, ``late`` = the emergence revision). A re-run resumes: the
scans evaluate nothing twice, and the patching is reused while ``patch.json`` names the same revisions.

Example (local suites ``DIR/<size>/seed<k>/<revision>/``; on the hub: ``suite_sources(["14m", "70m"],
range(10))``)::

    from emergelab.lm import ScanConfig
    from emergelab.lm.suite import scan_suite, suite_sources
    sources = suite_sources(["14m", "70m"], [0, 1], local="mirror/")
    result = scan_suite(sources, ScanConfig(capability="repetition"), "runs/pythia-suite", log=print)
    print(result.table)
"""

from __future__ import annotations

import json
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..config import ConfigError
from ..store import RunDir, write_text
from .scan import ScanConfig, ScanResult, SeedScan, coarse_revisions, scan
from .sources import CheckpointSource, make_sources, revision_step, seed_folders
from .suite_figure import CurvePanel, GainsPanel, draw_suite_figure

FIGURE = "pythia_emergence.png"
DEFAULT_SIZES = ("14m", "31m", "70m", "160m", "410m")
CLAIM = ("Pythia (10 seeds per size): in-context repetition appears at a random, seed-dependent step, abruptly, "
         "coinciding with specific heads learning their attention patterns; larger models get it earlier on "
         "average; patching a few heads' attention from a later checkpoint into an earlier one recovers much of it.")
SOLVED = ("emerged", "at_start")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)([kmbt])", re.IGNORECASE)
_UNIT = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}

Sources = dict[str, dict[int, CheckpointSource]]  # size -> suite seed -> source


def parse_size(name: str) -> float:
    """Parameters a size name gives: ``"14m"`` -> 1.4e7, ``"1.4b"`` -> 1.4e9 (suffix k, m, b or t)."""
    match = _SIZE.fullmatch(str(name).strip())
    if not match:
        raise ConfigError(f"model size {name!r}: expected a parameter count such as 14m, 410m, 1b or 1.4b")
    return float(match.group(1)) * _UNIT[match.group(2).lower()]


def order_sizes(names: Iterable[str]) -> list[str]:
    """``names`` by parameter count, smallest first; two names for one count are an error."""
    names = list(names)
    params = {name: parse_size(name) for name in names}
    if len(set(params.values())) != len(names):
        raise ConfigError(f"sizes {', '.join(names)}: each must name a different parameter count")
    return sorted(names, key=params.__getitem__)


def parse_sizes(text: str) -> list[str]:
    """``"70m,14m"`` -> ``["14m", "70m"]`` (ordered by parameter count)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ConfigError(f"sizes {text!r}: expected a list such as 14m,31m,70m")
    return order_sizes(names)


def local_sizes(root: str | Path) -> list[str]:
    """The size folders of a local suite ``root/<size>/`` (names that parse as sizes), ordered."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"--local {root}: no such folder (layout: DIR/<size>/seed<k>/<revision>/)")
    names = [p.name for p in root.iterdir() if p.is_dir() and _SIZE.fullmatch(p.name)]
    if not names:
        raise ConfigError(f"--local {root}: no size folders such as {root}/14m (layout: DIR/<size>/seed<k>/<revision>/)")
    return order_sizes(names)


def local_seeds(root: str | Path, sizes: Iterable[str]) -> list[int]:
    """The seeds ``k`` whose folder ``root/<size>/seed<k>/`` every one of ``sizes`` has, ascending."""
    common: set[int] | None = None
    for size in sizes:
        folder = Path(root) / size
        if not folder.is_dir():
            raise ConfigError(f"--local {root}: no folder {folder} (layout: DIR/<size>/seed<k>/<revision>/)")
        found = set(seed_folders(folder))
        common = found if common is None else common & found
    if not common:
        raise ConfigError(f"--local {root}: no seed folder (seed<k>) that every size has; give --seeds")
    return sorted(common)


def suite_sources(sizes: Iterable[str], seeds: Iterable[int], *, local: str | Path | None = None,
                  **hub: Any) -> Sources:
    """size -> seed -> source: ``EleutherAI/pythia-{size}`` (seed 0) and ``...-seed{k}`` on the hub
    (``hub``: :class:`~emergelab.lm.sources.HubSource` keywords), or ``local/<size>/seed<k>/<revision>/``."""
    seeds = list(seeds)
    order = order_sizes(sizes)
    if local is None:
        return {size: make_sources(pythia=size, seeds=seeds, **hub) for size in order}
    root = Path(local)
    for size in order:
        if not (root / size).is_dir():
            raise ConfigError(f"--local {root}: no folder {root / size} (layout: DIR/<size>/seed<k>/<revision>/)")
    return {size: make_sources(local=root / size, seeds=seeds) for size in order}


@dataclass
class SuitePatch:
    """The shown seed's patching: ``gains [layers, heads]`` (gain in answer probability per head),
    ``text`` (patch.txt), ``files`` in ``OUT/patch/``; ``reused``: read back from an earlier run."""

    size: str
    seed: int
    early: str
    late: str
    text: str
    gains: np.ndarray
    files: list[Path]
    reused: bool = False


@dataclass
class SuiteResult:
    path: Path
    config: ScanConfig
    sizes: list[str]  # by parameter count
    scans: dict[str, ScanResult]
    last: dict[str, dict[int, str]]  # size -> seed -> its last revision
    seconds: dict[str, float]
    table: str = ""
    chosen: tuple[str, int] | None = None
    patch: SuitePatch | None = None
    figure: Path | None = None
    notes: list[str] = field(default_factory=list)
    totals: dict[str, dict[str, float]] = field(default_factory=dict)  # size -> seconds, fetched: all calls so far

    def fetched(self) -> dict[str, int]:
        """Checkpoints fetched by this call per size (0 everywhere on a fully resumed run)."""
        return {size: sum(s.fetched for s in r.seeds.values()) for size, r in self.scans.items()}


def scan_suite(sources: Sources, config: ScanConfig, out: str | Path, *, loader: Callable[..., Any] | None = None,
               log: Callable[[str], None] = lambda line: None, patch: bool = True, patch_prompts: int = 100,
               command: str | None = None) -> SuiteResult:
    """Scan every size of ``sources`` (size -> seed -> source) into ``out/<size>/``, then write the table,
    the figure, the shown seed's patching and RESULT.md into ``out`` (see the module doc). ``loader``: as
    in :func:`~emergelab.lm.scan.scan`; ``patch=False`` skips the patching; ``patch_prompts``: prompts it
    uses; ``command``: the command line recorded in RESULT.md."""
    if not sources:
        raise ConfigError("scan_suite: no sizes to scan")
    out = Path(out)
    order = order_sizes(sources)
    scans, seconds = {}, {}
    for size in order:
        log(f"{size}: {len(sources[size])} seed(s) into {out / size}")
        start = time.perf_counter()
        scans[size] = scan(sources[size], config, out / size, loader=loader,
                           log=lambda line, size=size: log(f"{size} {line}"))
        seconds[size] = time.perf_counter() - start
    last = {size: {seed: src.revisions()[-1] for seed, src in sources[size].items()} for size in order}
    result = SuiteResult(out, config, order, scans, last, seconds)
    result.totals = add_totals(out / "suite.json", seconds, result.fetched())
    result.table = format_table(result)
    result.chosen = pick_seed(scans, order)
    if result.chosen is None:
        result.notes.append("no seed crossed the threshold inside its scan: no curve to show, nothing to patch")
    elif patch:
        size, seed = result.chosen
        result.patch = patch_chosen(sources[size][seed], scans[size].seeds[seed], size, config, out / "patch",
                                    loader=loader, n_prompts=patch_prompts, log=log)
    result.figure = draw_figure(result, out / FIGURE)
    write_text(out / "table.txt", result.table + "\n")
    write_text(out / "suite.json", json.dumps(suite_record(result), indent=1))
    write_text(out / "RESULT.md", result_markdown(result, command))
    return result


def add_totals(record: Path, seconds: dict[str, float], fetched: dict[str, int]) -> dict[str, dict[str, float]]:
    """Per size, this call's seconds and fetches added to the totals of earlier calls (from ``suite.json``),
    so RESULT.md keeps what the whole scan cost when a re-run resumes it."""
    try:
        before = json.loads(record.read_text())["sizes"] if record.exists() else {}
    except (ValueError, KeyError, TypeError):  # an unreadable record only loses the earlier totals
        before = {}
    before = before if isinstance(before, dict) else {}
    totals = {}
    for size in seconds:
        earlier = before.get(size) if isinstance(before.get(size), dict) else {}
        totals[size] = {"seconds": float(earlier.get("seconds_all_calls", 0.0)) + seconds[size],
                        "fetched": int(earlier.get("fetched_all_calls", 0)) + fetched[size]}
    return totals


def solved_step(s: SeedScan) -> int | None:
    """The seed's emergence step if it is solved (emerged, or already at its first revision), else None."""
    return s.emergence_step if s.status in SOLVED else None


def pick_seed(scans: dict[str, ScanResult], order: list[str]) -> tuple[str, int] | None:
    """``(size, seed)`` shown: the largest size with a seed that emerged inside its scan, and of its
    emerged seeds (by step, then seed) the median, the lower of two middles. None when none emerged."""
    for size in reversed(order):
        emerged = sorted((s.emergence_step, seed) for seed, s in scans[size].seeds.items() if s.status == "emerged")
        if emerged:
            return size, emerged[(len(emerged) - 1) // 2][1]
    return None


def format_table(result: SuiteResult) -> str:
    """Per size: seeds, solved, median emergence step and its range; then per seed its emergence."""
    c = result.config
    what = c.capability + (f" {c.params}" if c.params else "")
    lines = [f"{what}: emergence = the first revision from which {c.metric} stays >= {c.threshold:g} "
             "(steps: the revisions' training steps)",
             f"{'size':<6} {'seeds':>5} {'solved':>6}  {'median step':>11}  range"]
    for size in result.sizes:
        steps = [solved_step(s) for s in result.scans[size].seeds.values()]
        done = [s for s in steps if s is not None]
        median = f"{np.median(done):.0f}" if done else "-"
        span = f"[{min(done)}, {max(done)}]" if done else "-"
        lines.append(f"{size:<6} {len(steps):>5} {len(done):>6}  {median:>11}  {span}")
    lines += ["", f"{'size':<6} {'seed':>4}  {'emergence':<40} {'evaluated':>9}  source"]
    for size in result.sizes:
        for seed, s in sorted(result.scans[size].seeds.items()):
            lines.append(f"{size:<6} {seed:>4}  {describe_seed(s, result.last[size][seed]):<40} "
                         f"{len(s.evaluated):>9}  {s.source}")
    return "\n".join(lines)


def describe_seed(s: SeedScan, last: str) -> str:
    if s.status == "emerged":
        return str(s.emergence_revision)
    if s.status == "at_start":
        return f"{s.emergence_revision} (already at the first revision)"
    return f"not by {last} (the last revision)"


def seed_curve(run: str | Path, seed: int, metric: str) -> dict[str, np.ndarray]:
    """One seed's ``metric`` at every revision its scan evaluated, by step: ``{"step", "value", "lo", "hi"}``,
    each ``[n]`` (lo/hi: the interval, NaN where the metric has none), from ``run/metrics.parquet``."""
    rows = [r for r in RunDir(run).metrics().to_pylist() if r["seed"] == seed and r["index"] == ""]
    by_step: dict[int, dict[str, float]] = {}
    for r in rows:
        by_step.setdefault(int(r["step"]), {})[r["metric"]] = float(r["value"])
    steps = sorted(s for s, m in by_step.items() if metric in m)
    pick = lambda name: np.array([by_step[s].get(name, np.nan) for s in steps], float)  # noqa: E731
    return {"step": np.array(steps, float), "value": pick(metric), "lo": pick(f"{metric}_lo"),
            "hi": pick(f"{metric}_hi")}


def patch_chosen(source: CheckpointSource, s: SeedScan, size: str, config: ScanConfig, out: Path, *,
                 loader: Callable[..., Any] | None = None, n_prompts: int = 100,
                 log: Callable[[str], None] = lambda line: None) -> SuitePatch:
    """Patch each head of the seed's emergence revision into the revision just before it (``out``: the
    files of :func:`~emergelab.lm.patch.write_patch` and ``patch.json``); reused when ``patch.json``
    already names the same patching. Both checkpoints are held at once, so both count against the budget."""
    import pyarrow.parquet as pq

    from .patch import patch_revisions, write_patch

    revisions = source.revisions()
    late = str(s.emergence_revision)
    early = revisions[revisions.index(late) - 1]
    what = {"size": size, "seed": s.seed, "source": source.name, "early": early, "late": late,
            "capability": config.capability, "params": dict(config.params), "n_prompts": n_prompts,
            "prompt_seed": config.prompt_seed, "dtype": config.dtype}
    record = out / "patch.json"
    files = [out / name for name in ("patch_table.parquet", "patch_joint.parquet", "patch_greedy.parquet", "patch.txt")]
    reused = record.exists() and all(f.exists() for f in files) and json.loads(record.read_text()) == what
    if reused:
        log(f"patching {size} seed {s.seed}: {late} into {early}, reused from {out}")
    else:
        _check_budget(source, [early, late], config.disk_budget_gb)
        log(f"patching {size} seed {s.seed}: each head of {late} into {early}")
        patched = patch_revisions(source, early, late, capability=config.capability, params=dict(config.params),
                                  n_prompts=n_prompts, prompt_seed=config.prompt_seed, batch_size=config.batch_size,
                                  dtype=config.dtype, device=config.device, tokenizer=config.tokenizer, loader=loader)
        files = write_patch(patched, out)
        write_text(record, json.dumps(what, indent=1))
    rows = [r for r in pq.read_table(files[0]).to_pylist() if r["output"] == -1]
    gains = np.zeros((max(r["layer"] for r in rows) + 1, max(r["head"] for r in rows) + 1))
    for r in rows:
        gains[r["layer"], r["head"]] = r["prob_gain"]
    return SuitePatch(size, s.seed, early, late, files[3].read_text().rstrip("\n"), gains, files + [record], reused)


def _check_budget(source: CheckpointSource, revisions: list[str], budget_gb: float) -> None:
    sizes = [source.size(r) for r in revisions]
    if all(b is not None for b in sizes) and sum(sizes) > budget_gb * 1e9:  # type: ignore[arg-type]
        raise ConfigError(f"patching {source.name} needs {', '.join(revisions)} at once: "
                          f"{sum(sizes) / 1e9:.2f} GB, over the disk budget of {budget_gb:g} GB; "  # type: ignore[arg-type]
                          "raise --disk-budget-gb")


def machine() -> dict[str, Any]:
    """Where the suite ran (recorded in RESULT.md and suite.json)."""
    import os

    import torch

    return {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def estimate_evaluations(revisions: list[str], coarse: int) -> int:
    """The most evaluations one seed's scan needs: the coarse points, then bisection of the widest gap
    between neighbouring coarse points (``ceil(log2(gap))``; see scan.py). Pythia's 154 revisions with
    ``coarse=8``: 8 + 7 = 15."""
    points = coarse_revisions(revisions, coarse)
    gap = max((b - a for a, b in zip(points, points[1:])), default=1)
    return len(points) + int(np.ceil(np.log2(gap)))


def draw_figure(result: SuiteResult, path: Path) -> Path:
    """``pythia_emergence.png`` of ``result`` (see :mod:`~emergelab.lm.suite_figure`)."""
    steps = [[solved_step(s) for _, s in sorted(result.scans[size].seeds.items())] for size in result.sizes]
    end = max(revision_step(r) for by_seed in result.last.values() for r in by_seed.values())
    curve = None
    if result.chosen is not None:
        size, seed = result.chosen
        s = result.scans[size].seeds[seed]
        curve = CurvePanel(seed_curve(result.path / size, seed, result.config.metric), int(s.emergence_step or 0),
                           str(s.emergence_revision), f"{size}, seed {seed}", result.config.metric,
                           result.config.threshold)
    p = result.patch
    gains = GainsPanel(p.gains, p.early, p.late) if p is not None else None
    return draw_suite_figure(steps, result.sizes, end, curve, gains, path)


def suite_record(result: SuiteResult) -> dict[str, Any]:
    """``suite.json``: the scan settings, per size and seed the outcome, the seed shown, the patching."""
    p = result.patch
    return {"config": {**result.config.science(), "coarse": result.config.coarse},
            "sizes": {size: {"params": parse_size(size), "seconds": round(result.seconds[size], 1),
                             "fetched": result.fetched()[size],
                             "seconds_all_calls": round(result.totals[size]["seconds"], 1),
                             "fetched_all_calls": int(result.totals[size]["fetched"]),
                             "seeds": {str(seed): {"status": s.status, "emergence_revision": s.emergence_revision,
                                                   "emergence_step": s.emergence_step, "evaluated": len(s.evaluated),
                                                   "last_revision": result.last[size][seed], "source": s.source}
                                       for seed, s in sorted(result.scans[size].seeds.items())}}
                      for size in result.sizes},
            "chosen": None if result.chosen is None else {"size": result.chosen[0], "seed": result.chosen[1]},
            "patch": None if p is None else {"size": p.size, "seed": p.seed, "early": p.early, "late": p.late},
            "notes": result.notes, "machine": machine()}


def result_markdown(result: SuiteResult, command: str | None) -> str:
    """``RESULT.md``: claim, command, machine and time, the table, the figure, the patching report."""
    m = machine()
    where = f"{m['cpus']} CPU(s)" + (f", {m['gpu']}" if m["gpu"] else "") + f", device {result.config.device}"
    fetched = result.fetched()
    times = ", ".join(f"{size} {t['seconds'] / 60:.1f} min, {t['fetched']:.0f} checkpoint(s) fetched "
                      f"(this call {result.seconds[size] / 60:.1f} min, {fetched[size]})"
                      for size, t in result.totals.items())
    lines = ["## lm-emergence on checkpoint suites (`--pythia`)", "", f"**Paper's claim.** {CLAIM}", "",
             f"Command: `{command or 'emergelab reproduce lm-emergence --pythia ' + ','.join(result.sizes)}`  ",
             f"Machine: {where}, torch {m['torch']}, {m['platform']}; {m['time']}.  ",
             f"Wall time per size, all calls so far: {times}.", "", "```", result.table, "```", "",
             f"![steps to emergence per seed against size]({FIGURE})", ""]
    lines += [f"Note: {note}" for note in result.notes]
    p = result.patch
    if p is not None:
        lines += ["", f"### Head patching at the point of emergence ({p.size}, seed {p.seed}: {p.late} into {p.early})",
                  "", "```", p.text, "```", "",
                  "Files: " + ", ".join(f"`{f.relative_to(result.path)}`" for f in p.files)]
    return "\n".join(lines) + "\n"
