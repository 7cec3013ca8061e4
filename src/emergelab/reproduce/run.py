"""``emergelab reproduce NAME --scale smoke|cpu|paper``: run a target's sweeps, analyse their runs, draw
the figures, print the table behind them, and write ``RESULT.md`` (claim, command, scale, machine, time,
table, figures) into the output directory. Re-running resumes: finished runs are skipped."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from ..config import ConfigError
from ..store import write_text
from ..sweep import load_sweep, run_sweep
from ..train.execute import Executor
from ..report.analysis_figures import scales_figure
from .figures import FIGURES, format_mixers, mixer_rows, mixers_figure, per_position_figures
from .targets import SCALES, TARGETS, Target


@dataclass
class ReproduceResult:
    """What a reproduction wrote: the table (text), the figures, per-part wall seconds, failed runs."""

    target: Target
    scale: str
    out: Path
    table: str
    figures: list[Path]
    seconds: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    runs: int = 0
    continued: list[str] = field(default_factory=list)  # parts whose time is one call's: it went on from another


def target(name: str) -> Target:
    if name not in TARGETS:
        raise ConfigError(f"reproduce {name}: unknown target; allowed targets are {', '.join(TARGETS)}")
    return TARGETS[name]


def check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise ConfigError(f"--scale {scale}: allowed scales are {', '.join(SCALES)}")
    return scale


def default_out(name: str, scale: str) -> Path:
    return Path("runs") / "reproduce" / f"{name}-{scale}"


def load_parts(t: Target, scale: str, out: Path, device: str | None = None) -> dict[str, Any]:
    """Each part's sweep at ``scale``, into ``out/<part>`` (validated: a bad file fails before any work)."""
    sweeps = {}
    for part, path in zip(t.parts, t.sweep_files()):
        sweep = load_sweep(path, out / part, scale)
        if device is not None:
            runs = [replace(r, config=replace(r.config, execution=replace(r.config.execution, device=device)))
                    for r in sweep.runs]
            sweep = replace(sweep, runs=runs)
        sweeps[part] = sweep
    return sweeps


def reproduce(name: str, scale: str = "cpu", out: str | Path | None = None, *, executor: Executor | None = None,
              device: str | None = None, retries: int = 1, progress: bool = True,
              command: str | None = None) -> ReproduceResult:
    """Run target ``name`` at ``scale`` into ``out`` (default ``runs/reproduce/NAME-SCALE``), analyse it and
    write its table, figures and ``RESULT.md`` there."""
    t, scale = target(name), check_scale(scale)
    out = Path(out) if out is not None else default_out(name, scale)
    sweeps = load_parts(t, scale, out, device)
    seconds, failed, continued = {}, {}, []
    for part, sweep in sweeps.items():
        earlier = any(spec.path(out / part).exists() for spec in sweep.runs)  # an interrupted call's runs
        start = time.perf_counter()
        result = run_sweep(sweep, out / part, executor=executor, retries=retries, progress=progress)
        if len(result.finished_before) < len(sweep.runs):  # it trained (or tried): its time is this call's
            seconds[part] = time.perf_counter() - start
            if earlier:
                continued.append(part)
        failed.update(result.failed)
    return analyse(t, scale, out, seconds=seconds, failed=failed,
                   runs=sum(len(s.runs) for s in sweeps.values()), command=command, continued=continued)


def analyse(t: Target, scale: str, out: Path, *, seconds: dict[str, float] | None = None,
            failed: dict[str, str] | None = None, runs: int = 0, command: str | None = None,
            continued: Sequence[str] = ()) -> ReproduceResult:
    """The table, figures and ``RESULT.md`` of the finished runs under ``out``. ``continued``: the parts
    whose ``seconds`` are one call's that went on from an earlier, interrupted one."""
    if t.analysis == "scales":
        return analyse_scales(t, scale, out, seconds=seconds, failed=failed, runs=runs, command=command,
                              continued=continued)
    from ..analysis.runs import analyze_runs
    from ..report.analysis_figures import make_analysis_figures
    from ..report.tables import format_groups, format_plateau_scaling, format_positions
    from ..store import connect

    try:
        con = connect(out)
    except FileNotFoundError:
        raise ConfigError(f"{out}: no finished runs to analyse") from None
    fields = {row[0] for row in con.sql("DESCRIBE runs").fetchall()}
    # a field the runs predate (task.pool_fraction in runs made before it existed) defines no config
    result = analyze_runs(con, by=[f for f in t.by if f in fields] or None)
    lines = [f"{result.seeds.num_rows} seed(s) in {result.groups.num_rows} config(s); configs by "
             f"{', '.join(result.by) or '(all runs together)'}", format_groups(result)]
    if t.vs and t.vs in result.by:
        lines += ["", format_plateau_scaling(result, t.vs)]
    if t.figure in ("per-position", "seeds"):
        lines += ["", format_positions(result)]
    if t.figure == "seeds":
        row = result.groups.to_pylist()[0]
        stats = {k: row.get(k) for k in ("sarle_bc", "gmm_delta_bic", "dip", "dip_pvalue",
                                         "curve_linearity_mean", "curve_breakthroughness_mean")}
        lines += ["", "final loss over seeds: " + ", ".join(f"{k} {_fmt(v)}" for k, v in stats.items())]
    params: dict[str, int] = {}
    if t.figure == "mixers":
        params = run_params(con)
        lines += ["", format_mixers(mixer_rows(result, params))]
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    figures = make_analysis_figures(result, figures_dir, vs=t.vs if t.vs in result.by else None)
    if t.figure in FIGURES:
        figures += FIGURES[t.figure](result, figures_dir)
    if t.figure == "per-position":
        run_dirs = [Path(r[0]) for r in con.sql("SELECT run FROM runs ORDER BY run").fetchall()]
        figures += per_position_figures(run_dirs, figures_dir)
    if t.figure == "mixers":
        from ..analysis.fetch import fetch_curves

        figures += mixers_figure(result, fetch_curves(con, "loss"), params, figures_dir)
    if t.figure == "lm-emergence":
        from ..analysis.fetch import fetch_curves
        from .lm_emergence import emergence_figure, patch_at_emergence, pick_seed

        chosen = pick_seed(result)
        figures += emergence_figure(result, fetch_curves(con, "loss_pos"), chosen, figures_dir)
        patch_lines, patch_figures = patch_at_emergence(chosen, figures_dir)
        lines += [""] + patch_lines
        figures += patch_figures
    extra: dict[str, Any] = {}
    if t.figure == "pre-pretraining":
        from .pre_pretraining import arm_palette, arm_rows, format_arms, pretraining_figure, run_costs, seed_rows

        costs = run_costs(con)
        per_seed = seed_rows(result, costs)
        extra["arms"] = arm_rows(per_seed, costs)
        lines += ["", format_arms(extra["arms"])]
        figures += pretraining_figure(per_seed, figures_dir, arm_palette(result))
    if t.figure == "repeated-rules":
        from .repeated_rules import config_rows, format_repeated_rules, repeated_rules_figure
        from .repeated_rules import seed_rows as fresh_seed_rows

        fresh = fresh_seed_rows(result, con)
        extra["pools"] = config_rows(result, fresh, con)
        lines += ["", format_repeated_rules(extra["pools"])]
        figures += repeated_rules_figure(result, fresh, figures_dir, con)
    con.close()
    table = "\n".join(lines)
    return _write(ReproduceResult(t, scale, out, table, figures, dict(seconds or {}), dict(failed or {}), runs,
                                  list(continued)), command, result.groups.to_pylist(), extra)


def analyse_scales(t: Target, scale: str, out: Path, *, seconds: dict[str, float] | None = None,
                   failed: dict[str, str] | None = None, runs: int = 0, command: str | None = None,
                   continued: Sequence[str] = ()) -> ReproduceResult:
    """A target with ``analysis="scales"``: the across-scales table and figure (``analysis/scales.py``) of
    the final ``t.outcome`` per seed against the config field ``t.by[0]``."""
    from ..analysis.scales import final_outcomes
    from ..report.tables import format_outcomes
    from ..store import connect

    try:
        con = connect(out)
    except FileNotFoundError:
        raise ConfigError(f"{out}: no finished runs to analyse") from None
    by, metric = t.by[0], str(t.outcome)
    try:
        analysis, scales, outcomes = final_outcomes(con, metric, by, threshold=t.threshold)
    finally:
        con.close()
    table = format_outcomes(analysis, by, metric)
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    figures = scales_figure(analysis, scales, outcomes, figures_dir, by=by, metric=metric)
    return _write(ReproduceResult(t, scale, out, table, figures, dict(seconds or {}), dict(failed or {}), runs,
                                  list(continued)), command, analysis.flat_rows(),
                  {"across": analysis.across, "bin_edges": analysis.bin_edges})


def _write(outcome: ReproduceResult, command: str | None, groups: list[dict[str, Any]],
           extra: dict[str, Any] | None = None) -> ReproduceResult:
    """Write table.txt, RESULT.md and result.json. An analysis of runs trained earlier (no seconds) keeps
    the training command, times and machine of the previous result.json, and names itself beside them."""
    out = outcome.out
    reanalysed, trained_on = None, machine()
    previous = _previous_result(out, outcome.target.name)
    kept = [p for p in previous.get("continued") or [] if isinstance(p, str)]
    if not outcome.seconds:
        if previous.get("command"):
            reanalysed, command = command, previous["command"]
            outcome = replace(outcome, seconds=previous.get("seconds") or {}, continued=kept)
            trained_on = previous.get("machine") or trained_on
    elif isinstance(previous.get("seconds"), dict):  # a part with nothing left to train keeps its earlier time
        outcome = replace(outcome, seconds={**previous["seconds"], **outcome.seconds},
                          continued=sorted({p for p in kept if p not in outcome.seconds} | set(outcome.continued)))
    write_text(out / "table.txt", outcome.table + "\n")
    write_text(out / "RESULT.md", result_markdown(outcome, command, reanalysed, trained_on))
    write_text(out / "result.json", json.dumps({"target": outcome.target.name, "scale": outcome.scale,
                                                "command": command, "reanalysed": reanalysed,
                                                "seconds": outcome.seconds, "continued": outcome.continued,
                                                "failed": outcome.failed,
                                                "machine": trained_on, "groups": groups, **(extra or {})},
                                               indent=1, default=str))
    return outcome


def _previous_result(out: Path, name: str) -> dict[str, Any]:
    """``out``'s result.json if it is target ``name``'s and readable, else {}."""
    try:
        saved = json.loads((out / "result.json").read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) and saved.get("target") == name else {}


def run_params(con: Any) -> dict[str, int]:
    """run -> parameters per member, from each run's saved config."""
    from ..store import RunDir
    from ..train import ExperimentConfig

    runs = [r[0] for r in con.sql("SELECT run FROM runs ORDER BY run").fetchall()]
    return {run: ExperimentConfig.from_run(RunDir(Path(run))).model.n_params() for run in runs}


def machine() -> dict[str, Any]:
    import torch

    return {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "load_avg": os.getloadavg(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _duration(seconds: float) -> str:
    """``"12 s"`` under a minute (a smoke run's "0.2 min" said little), else ``"30.2 min"``."""
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def result_markdown(r: ReproduceResult, command: str | None, reanalysed: str | None = None,
                    m: dict[str, Any] | None = None) -> str:
    """RESULT.md: the claim, the command that trained the runs (``reanalysed``: the later analysis
    command), the machine ``m`` they trained on (default: this one, now), the table and figures."""
    m = m or machine()
    total = sum(r.seconds.values())
    where = f"{m['cpus']} CPU(s)" + (f", {m['gpu']}" if m["gpu"] else "")
    times = ", ".join(f"{part} {_duration(s)}" + (" in the last call, which went on from an interrupted one"
                                                   if part in r.continued else "") for part, s in r.seconds.items())
    lines = [f"## {r.target.name} ({r.scale} scale)", "",
             *(["**A smoke check**: the pipeline runs end to end at a few dozen steps; its numbers and figures "
                "say nothing about the claim below (`--scale cpu` tests it).", ""] if r.scale == "smoke" else []),
             f"**Paper's claim.** {r.target.claim}", "",
             f"Command: `{command or f'emergelab reproduce {r.target.name} --scale {r.scale}'}`  ",
             f"Machine: {where}, torch {m['torch']}, load average {m['load_avg'][0]:.1f} at the end; "
             f"{r.runs} run(s); training wall time {_duration(total)} ({times or 'analysis only'}); {m['time']}."
             + ("  " if reanalysed else ""), ""]
    if reanalysed:
        lines[-1:] = [f"Analysed again with `{reanalysed}` on {time.strftime('%Y-%m-%dT%H:%M:%S')}.", ""]
    if r.failed:
        lines += [f"Failed runs: {', '.join(r.failed)}", ""]
    lines += ["```", r.table, "```", ""]
    lines += [f"![{p.stem}](figures/{p.name})" for p in r.figures]
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def command_line() -> str:
    return "emergelab " + " ".join(sys.argv[1:])
