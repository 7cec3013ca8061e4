"""The ``emergelab`` command. Thin: parses arguments, calls the library, prints.

Every bad input exits with code 2 and one line naming the field and what is allowed, before any work;
so does a damaged file of a run directory (one line: the file, the damage, what to do).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import json
import os
import math
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from . import __version__
from .config import ConfigError, field_names, number_from_text, parse_override
from .reproduce.targets import TARGETS as REPRODUCE_TARGETS
from .store.locks import RunLockedError, is_locked
from .store.verify import CorruptFileError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        raise ConfigError(message)


def _int(text: str) -> int:
    """An integer flag: ``64``, or an integral number in any notation (``1e3`` is 1000)."""
    value = number_from_text(text)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise ValueError(text)
    return value


_int.__name__ = "int"  # argparse says "invalid int value"


def _path(text: str) -> Path:
    """A path flag or argument; an empty one (``--out ""``, which ``Path`` reads as the current folder) is
    refused."""
    if not text.strip():
        raise ValueError(text)
    return Path(text)


_path.__name__ = "path"  # argparse says "invalid path value: ''"


def _float(text: str) -> float:
    """A finite real flag (``0.9``, ``5e-2``)."""
    value = number_from_text(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(text)
    return float(value)


_float.__name__ = "float"


LOG_HELP = ("stream the metrics to tensorboard (RUN/tensorboard/seed-<i>/) or wandb (one W&B run per seed, "
            "grouped by the config hash; WANDB_MODE=offline is honoured); repeatable or comma-separated "
            "(execution.log)")


def _trackers(values: list[str]) -> tuple[str, ...]:
    """The ``--log`` values (repeated and/or comma-separated), checked; their packages must be there."""
    from .train.config import tracker_names
    from .train.trackers import require_packages

    names = tracker_names("--log", ",".join(values))
    require_packages(names)
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="emergelab", description="Train many seeds on tasks with known attention and "
                                                   "watch capabilities emerge.")
    parser.add_argument("--version", action="version", version=f"emergelab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="train N seeds of a task, write the run directory and its figures")
    run.add_argument("task", help="task name (see `emergelab list`)")
    run.add_argument("--preset", help="start from a named preset (see `emergelab list`)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field, e.g. --set task.sparsity=3 (repeatable)")
    run.add_argument("--seeds", type=_int, help="number of seeds (train.seeds)")
    run.add_argument("--steps", type=_int, help="optimizer steps (train.steps)")
    run.add_argument("--device", help="cpu | cuda | cuda:N | mps (execution.device)")
    run.add_argument("--strategy", help="auto | ensemble | workers (execution.strategy)")
    run.add_argument("--out", type=_path, help="run directory (default runs/TASK-HASH); re-run to resume")
    run.add_argument("--log", action="append", default=[], metavar="TRACKER",
                     help=LOG_HELP)
    run.add_argument("--forecast-from", metavar="RUN_OR_DIR",
                     help="finished runs of the same task: the progress line shows each output's forecast "
                          "emergence, by forecasters fitted on their seeds (execution.forecast_from)")
    run.add_argument("--no-figures", action="store_true", help="skip drawing figures")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    report = sub.add_parser("report", help="redraw the figures of a run directory, or (--html) write the "
                                           "interactive report of a run or sweep directory")
    report.add_argument("run_dir", type=_path, metavar="RUN_OR_SWEEP")
    report.add_argument("--html", action="store_true", help="write one self-contained, offline HTML page "
                                                            "(default RUN_OR_SWEEP/report.html)")
    report.add_argument("--out", type=_path, metavar="FILE", help="where --html writes the page")

    analyze = sub.add_parser("analyze", help="emergence steps per seed and output, statistics per config, "
                                             "head attribution; tables and figures")
    analyze.add_argument("paths", nargs="+", type=_path, metavar="RUN_OR_DIR",
                         help="run directories, or folders searched for runs")
    analyze.add_argument("--by", help="comma-separated config fields that define a config, e.g. "
                                      "task.sparsity,model.heads; every other field that differs between "
                                      "runs defines configs too unless pooled (default: every field that differs)")
    analyze.add_argument("--pool", metavar="FIELD,...", help="comma-separated fields whose values are pooled "
                                                            "into one config (a line names them and their values)")
    analyze.add_argument("--pool-rest", action="store_true",
                         help="pool every field that differs but is not in --by")
    analyze.add_argument("--out", type=_path, help="output folder (default: DIR/analysis for one run or folder "
                                                  "of runs, else ./analysis)")
    analyze.add_argument("--solved-tol", type=_float, default=0.05,
                         help="a seed is solved when every output emerged (per-output optima); only for runs "
                              "without recorded per-output optima: when its final loss is within this many "
                              "nats of the optimum; default 0.05")
    analyze.add_argument("--vs", help="config field for the plateau-scaling figure (default: the first --by "
                                      "field with >= 2 positive values)")
    analyze.add_argument("--outcome", metavar="METRIC[:INDEX]",
                         help="instead of emergence: each seed's final METRIC (e.g. ood_accuracy, "
                              "gen_first_word:hierarchical) across the numeric config field --by (Zhao et al.: "
                              "P(success), bimodality, BIG-bench breakthroughness per scale)")
    analyze.add_argument("--success-at", type=_float, default=None,
                         help="with --outcome: a seed succeeds when its outcome is at least this (default 0.5)")

    patch = sub.add_parser("patch", help="patch each head's attention (or a mixer's mixing matrix) from a late "
                                         "checkpoint into an early one (or early into late: --direction); "
                                         "table, greedy head set and figures; --at-emergence: both ways at "
                                         "every output's emergence, every seed")
    patch.add_argument("run_dir", type=_path, metavar="RUN")
    patch.add_argument("--early", type=_int, metavar="STEP",
                       help="checkpoint before emergence (the nearest saved one is used)")
    patch.add_argument("--late", type=_int, metavar="STEP",
                       help="checkpoint after emergence (the nearest saved one is used)")
    patch.add_argument("--at-emergence", action="store_true",
                       help="instead of --early/--late: for every seed and output, the checkpoints either side "
                            "of its emergence step, every head patched both ways (a table and a figure)")
    patch.add_argument("--seed", type=_int, help="run seed index (default 0; with --at-emergence: every seed)")
    patch.add_argument("--what", choices=("pattern", "scores", "mixer"), default="pattern",
                       help="patch the post-softmax pattern (default) or the pre-softmax scores of a "
                            "transformer's heads, or a non-attention mixer's mixing matrix per head (channel)")
    patch.add_argument("--direction", choices=("late-to-early", "early-to-late"),
                       help="late-to-early (default): a late head in the early model (does it bring the gain?); "
                            "early-to-late: an early head in the late model (does the late model need it?)")
    patch.add_argument("--fraction", type=_float,
                       help="greedy search stops once this fraction of late - early is recovered (early-to-late: "
                            "removed) (default 0.9)")
    patch.add_argument("--max-heads", type=_int,
                       help="the greedy set's largest size, >= 1 (default 8; each step evaluates every head left)")
    patch.add_argument("--batch", type=_int, help="held-out sequences (default train.eval_batch_size)")
    patch.add_argument("--device", default="cpu", help="device to evaluate on (default cpu)")
    patch.add_argument("--out", type=_path, help="output folder (default RUN/patching)")
    patch.add_argument("--quiet", action="store_true", help="no progress bar")

    ablate = sub.add_parser("ablate", help="ablate each head (or a mixer's head or channel) of one checkpoint alone: "
                                           "the drop in correct-token probability per head and output; table "
                                           "and figure")
    ablate.add_argument("run_dir", type=_path, metavar="RUN")
    ablate.add_argument("--step", type=_int, metavar="STEP",
                        help="checkpoint to ablate (the nearest saved one; default the seed's last)")
    ablate.add_argument("--seed", type=_int, default=0, help="run seed index (default 0)")
    ablate.add_argument("--kind", choices=("zero", "mean", "uniform"), default="zero",
                        help="zero (default): the head attends nowhere and writes only its bias; mean: its batch-"
                             "mean pattern (leaves a position-only head unchanged); uniform: 1/(q+1) on keys <= q")
    ablate.add_argument("--what", choices=("pattern", "scores", "mixer"), default="pattern",
                        help="the post-softmax pattern (default) or the pre-softmax scores of a transformer's heads, "
                             "or a non-attention mixer's mixing matrix")
    ablate.add_argument("--batch", type=_int, help="held-out sequences (default train.eval_batch_size)")
    ablate.add_argument("--device", default="cpu", help="device to evaluate on (default cpu)")
    ablate.add_argument("--out", type=_path, help="output folder (default RUN/patching)")

    check = sub.add_parser("check", help="verify every file of run directories (checksums, structure); "
                                         "exit 0 when all are intact, 2 otherwise")
    check.add_argument("paths", nargs="+", type=_path, metavar="RUN_OR_DIR",
                       help="run directories, or folders searched for runs")

    sweep = sub.add_parser("sweep", help="train every run of a sweep file (grid x zip over a base config); "
                                         "`emergelab sweep status DIR` reports on one",
                           usage="emergelab sweep FILE.yaml [options] | emergelab sweep status DIR")
    sweep.add_argument("targets", nargs="+", metavar="FILE | status DIR",
                       help="a sweep file to run, or `status` and a sweep directory")
    sweep.add_argument("--out", type=_path, help="sweep directory (overrides the file's `out:`)")
    sweep.add_argument("--scale", help="one of the file's `scales` (e.g. smoke, cpu; paper: the file as written)")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs with their FLOPs and an estimated "
                                                              "time (calibrated on this machine); train nothing")
    sweep.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="local worker processes (default) or Ray tasks")
    sweep.add_argument("--address", help="Ray cluster to join (e.g. auto, ray://HOST:10001); default: start a "
                                         "local Ray instance")
    sweep.add_argument("--workers", type=int, help="local: 1-thread worker processes (default: the CPUs)")
    sweep.add_argument("--cpus-per-unit", type=float, default=1.0, help="ray: CPUs per unit (default 1)")
    sweep.add_argument("--gpus-per-unit", type=float, default=0.0,
                       help="ray: GPUs per unit; a fraction lets several small runs share a GPU (default 0)")
    sweep.add_argument("--retries", type=int, default=1, help="tries after a run's first failure (default 1)")
    sweep.add_argument("--log", action="append", default=[], metavar="TRACKER", help=LOG_HELP)
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep.add_argument("--figures", action="store_true",
                       help="draw each finished run's figures (as `emergelab report RUN`) after training")

    query = sub.add_parser("query", help="SQL over the metrics, runs, optima and pools views of the runs below DIR")
    query.add_argument("path", type=_path, metavar="DIR", help="a run, a sweep directory, or any folder of runs")
    query.add_argument("sql", metavar="SQL", help="e.g. \"SELECT metric, count(*) FROM metrics GROUP BY metric\"")
    query.add_argument("--format", choices=("table", "csv", "json"), default="table", help="default: table")

    reproduce = sub.add_parser("reproduce", help="run, analyse and draw one synthetic-task figure of the paper "
                                                 "(docs/results.md); re-run to resume")
    reproduce.add_argument("target", metavar="NAME", help="one of: " + ", ".join(REPRODUCE_TARGETS))
    reproduce.add_argument("--scale", help="smoke (seconds) | cpu (minutes to an hour on 2 cores, the default) | paper "
                                           "(the published sizes; a GPU)")
    reproduce.add_argument("--out", type=_path, help="output directory (default runs/reproduce/NAME-SCALE; with "
                                                    "--pythia runs/reproduce/lm-emergence-pythia)")
    reproduce.add_argument("--device", help="cpu | cuda | cuda:N | mps for every run (execution.device)")
    reproduce.add_argument("--workers", type=_int, help="local worker processes (default: the CPUs)")
    reproduce.add_argument("--retries", type=_int, help="tries after a run's first failure (default 1; with --pythia: "
                                                        "after a failed hub request, default 4)")
    reproduce.add_argument("--analyse-only", action="store_true", help="analyse the finished runs in --out; "
                                                                       "train nothing")
    reproduce.add_argument("--dry-run", action="store_true",
                           help="list the runs of every part with their FLOPs, estimated time and state; train nothing")
    reproduce.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_pythia_arguments(reproduce)

    forecast = sub.add_parser("forecast", help="forecast each output's emergence step from the metrics up to a "
                                               "step; --evaluate: score the forecasters over held-out seeds")
    forecast.add_argument("path", type=_path, metavar="RUN_OR_DIR", help="a run, or with --evaluate a sweep/folder")
    forecast.add_argument("--evaluate", action="store_true",
                          help="forecast every output at ~15 fixed steps per run, scored by how far into its plateau it was "
                               "(t/E in quarters; 2-fold over seeds), "
                               "print the error and calibration table, draw the figure")
    forecast.add_argument("--at", type=_int, metavar="STEP", help="forecast from the probes up to STEP "
                                                                  "(default: each run's last probe)")
    forecast.add_argument("--seed", type=_int, help="only this seed (default: every seed)")
    forecast.add_argument("--condition-bins", type=_int, default=1, metavar="N",
                          help="calibrate the model forecasters' intervals in N bins of how far off each "
                               "forecast says emergence is, log(remaining / t), each of >= 20 training points "
                               "(default 1: one calibration over every point)")
    forecast.add_argument("--out", type=_path, help="--evaluate output folder (default RUN/forecast for one run, "
                                                   "else ./forecast)")
    sub.add_parser("list", help="list tasks and their fields, models, presets and this machine's CPU kernels")
    _add_lm_parser(sub)
    return parser


def experiment_from_args(args: argparse.Namespace) -> Any:
    """The ExperimentConfig that ``emergelab run`` arguments describe (validated, nothing run)."""
    from .presets import preset_dict
    from .tasks import task_class, task_names
    from .train import ExperimentConfig

    if task_class(args.task) is None:
        raise ConfigError(f"unknown task {args.task!r}: allowed tasks are {', '.join(task_names())}")
    data: dict[str, dict[str, Any]] = {"task": {"name": args.task}, "model": {}, "train": {}, "execution": {}}
    from_preset: set[str] = set()
    if args.preset:
        preset = preset_dict(args.preset)
        if preset["task"]["name"] != args.task:
            raise ConfigError(f"--preset {args.preset} is for task {preset['task']['name']}, not {args.task}")
        for section in data:
            data[section].update(preset.get(section, {}))
            from_preset |= {f"{section}.{name}" for name in preset.get(section, {})}
    for text in args.overrides:
        section, name, value = parse_override(text)
        if section == "task" and name == "name":
            raise ConfigError("--set task.name: choose the task with the positional TASK argument")
        data[section][name] = value
        from_preset.discard(f"{section}.{name}")
    for flag, section in (("seeds", "train"), ("steps", "train"), ("device", "execution"), ("strategy", "execution"),
                          ("forecast_from", "execution")):
        if getattr(args, flag) is not None:
            data[section][flag] = getattr(args, flag)
    if args.log:
        data["execution"]["log"] = _trackers(args.log)
    try:
        return ExperimentConfig.from_dict(data)
    except ConfigError as error:
        field = next((f for f in sorted(from_preset) if str(error).startswith(f"unknown field {f}:")), None)
        if field is None:
            raise
        model = data["model"].get("name", "transformer")
        raise ConfigError(f"{error}. ({field} was set by --preset {args.preset}, which is made for "
                          f"model.name={preset.get('model', {}).get('name', 'transformer')}; for model.name={model} "
                          "leave out --preset and set the sizes with --set)") from None


def is_lm_scan(config: dict) -> bool:
    """Whether a saved config is an ``emergelab lm scan``'s (``lm/scan.py`` names its task ``lm-...``): it
    holds no training config."""
    task = config.get("task")
    return isinstance(task, dict) and str(task.get("name", "")).startswith("lm-")


def check_saved_config(config: dict) -> None:
    """A ConfigError for a saved config no run could have (what analyze, forecast and query pass to
    ``store.connect``); an LM scan's is taken as it is."""
    from .train import ExperimentConfig

    if not is_lm_scan(config):
        ExperimentConfig.from_saved(config)


def check_out_dir(out: Path, flag: str = "--out", run: bool = True) -> None:
    """Refuse (one line) an output path that is a file, lies under a file, cannot be created or written,
    or (for a run, ``run=True``) is a non-empty directory that is not a run directory."""
    try:
        for part in out.parts:
            if len(os.fsencode(part)) > 255:
                raise ConfigError(f"{flag} {out}: a name in it is longer than 255 bytes; choose another path")
        if out.exists() and not out.is_dir():
            raise ConfigError(f"{flag} {out}: exists and is not a directory; choose another path")
        if out.is_dir():
            if not os.access(out, os.W_OK | os.X_OK):
                raise ConfigError(f"{flag} {out}: not writable (permission denied); choose another path")
            if run and not (out / "config.yaml").exists() and any(out.iterdir()):
                from .store.manifest import MANIFEST

                if (out / MANIFEST).exists():  # a run that lost its config.yaml: say that, not "not a run"
                    raise CorruptFileError(out / "config.yaml", "missing (the run's manifest.jsonl records it)",
                                           "it cannot be rebuilt: restore it from a backup")
                raise ConfigError(f"{flag} {out}: a directory that is not a run and is not empty; choose a new "
                                  f"or empty directory, e.g. {out / 'run'}")
            return
        parent = out.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise ConfigError(f"{flag} {out}: {parent} is a file, so the directory cannot be created; choose "
                              "another path")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {out}: cannot create it in {parent} (permission denied); choose "
                              "another path")
        try:  # what access() cannot tell: a read-only or virtual file system (/proc), a full disk
            os.rmdir(tempfile.mkdtemp(prefix=".emergelab-check-", dir=parent))
        except OSError as error:
            raise ConfigError(f"{flag} {out}: cannot create it in {parent} ({error.strerror or error}); choose "
                              "another path") from None
    except OSError as error:  # e.g. a name too long, or a path through an unreadable folder
        raise ConfigError(f"{flag} {out}: {error.strerror or error}; choose another path") from None


def cmd_run(args: argparse.Namespace) -> int:
    from .train import train
    from .train.bias import check_bias_target
    from .train.run import check_existing, fraction_left
    from .train.estimate import (WARN_HOURS, available_bytes, busy_note, check_device, check_fits, estimate_run,
                                 format_bytes, format_seconds)

    config = experiment_from_args(args)
    device = check_device("execution.device", config.execution.device)
    config = config.resolved()
    check_bias_target(config)  # train() checks it too; here its error is the only line printed
    out = args.out or Path("runs") / f"{config.task_name}-{config.science_key()}"
    check_out_dir(out)
    check_existing(config, out)
    left = fraction_left(config, out)  # 0: finished (or only its final files left), 1: a new run
    if left:
        estimate = estimate_run(config)
        check_fits(estimate, device)
        seconds = estimate.seconds * left  # a resumed run: the part left
    print(f"run directory: {out}")
    if left:
        part = "" if left == 1 else f" for the {left:.0%} left"
        print(f"estimate: about {format_seconds(seconds)}{part} ({estimate.flops * left / 1e9:.3g} GFLOP at "
              f"~{estimate.notes['rate']}), peak memory about {format_bytes(estimate.peak_bytes)} of "
              f"{format_bytes(available_bytes(device))} available{busy_note(device)}")
        if seconds > WARN_HOURS * 3600:
            print(f"emergelab: warning: this run will take about {format_seconds(seconds)}; "
                  "fewer train.steps / train.seeds or a smaller model run faster", file=sys.stderr)
    started = time.perf_counter()
    run = train(config, out, progress=not args.quiet, log=print)
    if left:  # what the estimate said against what it took
        print(f"trained in {format_seconds(time.perf_counter() - started)} (estimated "
              f"{format_seconds(seconds)})")
    if not args.no_figures:
        from .report import make_figures

        make_figures(run)
    print_summary(run)
    _fail_on_problems(run.path)
    return 0


def _fail_on_problems(path: Path) -> None:
    """Raise CorruptFileError (one line: the first problem) when ``emergelab check`` would find any."""
    from .store import check_run

    problems, _ = check_run(path)
    if problems:
        more = f"`emergelab check {path}` lists all {len(problems)} problems" if len(problems) > 1 else ""
        raise CorruptFileError(problems[0].path, problems[0].message, more)


def print_summary(run: Any) -> None:
    """The run's ``summary.json`` as a table: final loss against the optimum, and each output's
    emergence step (the detector of ``analysis.emergence``; ``-``: not yet; ``.``: nothing to learn; ``?``:
    not measured; a ``c`` after it: the output equals an earlier one, ``analysis.summary.copy_outputs``);
    for a run on a pool, the final loss on fresh ground truth beside it."""
    from .analysis.summary import copy_outputs

    summary = run.run_summary()
    optimum = summary.get("optimal_loss")
    opt_text = f"{optimum:.4f}" if optimum is not None else "n/a"
    pre = summary.get("pretrain")
    pre_text = (f" ({pre['steps']} of them {pre['stream']} pre-training, {pre['tokens_per_seed']:,} tokens a seed)"
                if pre else "")
    print(f"\n{summary['task']}: {summary['steps']} steps{pre_text}; optimal loss {opt_text}")
    fresh = any("fresh_loss" in info for info in summary["seeds"].values())
    print(f"{'seed':>4}  {'final loss':>10}  {'- optimum':>9}  " + (f"{'fresh rules':>11}  " if fresh else "")
          + "step at which each output emerged")
    unjudged = unmeasured = copied = False
    for seed, info in summary["seeds"].items():
        final = info["final_loss"]  # None: no probe measured this seed's loss at the end
        gap = f"{final - optimum:+.4f}" if optimum is not None and final is not None else "n/a"
        skip, absent = set(info.get("not_judged", ())), set(info.get("not_measured", ()))
        copies = copy_outputs(info.get("fan_in", {}))
        unjudged, unmeasured, copied = unjudged or bool(skip), unmeasured or bool(absent), copied or bool(copies)
        learned = " ".join("." if k in skip else "?" if k in absent else
                           ("-" if s is None else str(s)) + ("c" if k in copies else "")
                           for k, s in info["learned_step"].items())
        fresh_text = (f"{info['fresh_loss']:>11.4f}  " if info.get("fresh_loss") is not None
                      else f"{'':>11}  " if fresh else "")
        final_text = f"{final:>10.4f}" if final is not None else f"{'n/a':>10}"
        print(f"{seed:>4}  {final_text}  {gap:>9}  {fresh_text}{learned}")
    if unjudged:
        print("(.: an output with nothing to learn, its optimum at its initial loss; -: not yet)")
    if unmeasured:
        print("(?: no held-out sequence has this output, so it was not measured: raise train.eval_batch_size)")
    if fresh:
        floor = summary.get("fresh_optimal_loss")
        floor_text = f"its floor {floor:.4f}" if floor is not None else "its floor unknown"
        print(f"(fresh rules: the final loss on sequences from outside the pool, {floor_text}: in-context inference "
              "approaches it, a memorised pool does not)")
    if copied:
        print("(c: equal to an earlier output (linear map: two equal rows of A), so learned as a copy; "
              "task.rows=distinct avoids it)")
    figures = sorted(run.figures_dir.glob("*.png")) if run.figures_dir.exists() else []
    if figures:
        print("figures: " + ", ".join(str(f) for f in figures))


def cmd_report(args: argparse.Namespace) -> int:
    from .report import make_figures
    from .store import RunDir

    if args.out is not None and not args.html:
        raise ConfigError("--out FILE: is where --html writes the page; add --html")
    if args.html and not args.run_dir.exists():
        raise ConfigError(f"{args.run_dir}: no such file or directory")
    if args.html and (args.run_dir / "sweep.json").is_file():
        from .report.html import write_html

        print(write_html(args.run_dir, args.out))
        return 0
    run = RunDir(args.run_dir)
    if not run.config_path.exists():
        if run.manifest.path.exists():
            raise CorruptFileError(run.config_path, "missing (the run's manifest.jsonl records it)",
                                   "it cannot be rebuilt: restore it from a backup")
        if not Path(args.run_dir).exists():
            raise ConfigError(f"{args.run_dir}: no such file or directory")
        if (Path(args.run_dir) / "sweep.json").exists():
            raise ConfigError(f"{args.run_dir}: a sweep directory: `emergelab report {args.run_dir} --html` draws "
                              f"its page, `emergelab analyze {args.run_dir}` its tables and figures")
        inside = sorted({path.parent for name in ("sweep.json", "config.yaml")
                         for path in Path(args.run_dir).glob(f"*/{name}")})
        if inside:  # e.g. a reproduce folder, whose sweeps are one level down
            raise ConfigError(f"{args.run_dir}: not a run directory (no config.yaml); below it: "
                              f"{', '.join(str(p) for p in inside[:4])}{', ...' if len(inside) > 4 else ''} "
                              f"(e.g. `emergelab report {inside[0]}{' --html' if args.html else ''}`)")
        raise ConfigError(f"{args.run_dir}: not a run directory (no config.yaml)"
                          + (" or a sweep directory (no sweep.json)" if args.html else ""))
    if is_lm_scan(run.read_config_dict()):
        raise ConfigError(f"{args.run_dir}: an LM checkpoint scan (`emergelab lm scan`); `report` draws training "
                          f"runs and sweeps: `emergelab analyze {args.run_dir}` draws the scan's emergence "
                          "figures and tables")
    if not run.metrics_path.exists():
        if run.summary_path.exists() or run.manifest.expected(run.metrics_path) is not None:
            run.verify_metrics()  # raises: missing from a finished run
        raise ConfigError(f"{args.run_dir}: the run has no metrics.parquet yet; finish it with `emergelab run`")
    if args.html:
        from .report.html import write_html

        _fail_on_problems(run.path)
        print(write_html(run.path, args.out))
        return 0
    check_out_dir(run.path / "figures", flag="the figures folder", run=False)
    for path in make_figures(run):
        print(path)
    _fail_on_problems(run.path)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis.heads import attribute_heads, head_rows
    from .analysis.runs import analyze_runs
    from .analysis.summary import copied_outputs
    from .report.analysis_figures import make_analysis_figures
    from .report.analysis_figures import numeric_fields
    from .report.tables import format_groups, format_plateau_scaling, format_pooling, format_positions, write_tables
    from .store import RunDir, connect
    from .store.query import finished_run_dirs

    for path in args.paths:
        if not path.exists():
            raise ConfigError(f"{path}: no such file or directory")
    if args.out is not None:
        check_out_dir(args.out, run=False)
    if not (args.solved_tol >= 0 and math.isfinite(args.solved_tol)):
        raise ConfigError(f"--solved-tol={args.solved_tol}: must be a finite number of nats >= 0")
    by = [f.strip() for f in args.by.split(",") if f.strip()] if args.by else None
    pool = [f.strip() for f in args.pool.split(",") if f.strip()] if args.pool else None
    if args.outcome is None and args.success_at is not None:
        raise ConfigError("--success-at: applies to --outcome (a seed succeeds when its outcome reaches it)")
    if args.outcome is not None:
        if not by or len(by) != 1:
            raise ConfigError(f"--outcome needs --by with one numeric config field (the scale), e.g. "
                              f"--by model.layers; got --by {args.by!r}")
        args.success_at = 0.5 if args.success_at is None else args.success_at
        if not math.isfinite(args.success_at):
            raise ConfigError(f"--success-at={args.success_at}: must be a finite number")
        for flag in ("pool", "vs"):
            if getattr(args, flag):
                raise ConfigError(f"--{flag} does not apply to --outcome (configs are the --by field's values)")
    try:
        con = connect(args.paths, check_config=check_saved_config)  # damaged runs: left out, warned
    except FileNotFoundError:
        raise ConfigError(f"no finished runs (metrics.parquet + config.yaml) at or below "
                          f"{', '.join(map(str, args.paths))}") from None
    runs = [RunDir(row[0]) for row in con.sql("SELECT run FROM runs ORDER BY run").fetchall()]
    found = {str(r.path.resolve()) for p in args.paths for r in finished_run_dirs(p)}
    single = len(args.paths) == 1 and len(found) == 1
    folder = Path(args.paths[0]) if len(args.paths) == 1 and Path(args.paths[0]).is_dir() else None
    # one run, or one folder of runs (a sweep): beside them (./analysis let two sweeps' analyses overwrite
    # each other); several paths: ./analysis
    out = args.out or (runs[0].path / "analysis" if single else folder / "analysis" if folder else Path("analysis"))
    check_out_dir(out, flag="the output folder", run=False)  # before the work, not after it
    if args.outcome is not None:
        return _analyze_outcome(con, args.outcome, by[0], args.success_at, out, len(runs))
    result = analyze_runs(con, by=by, pool=pool, pool_rest=args.pool_rest, solved_tol=args.solved_tol)
    if args.vs and args.vs in result.aliases:
        raise ConfigError(f"--vs {args.vs}: changes only together with {', '.join(result.by)} here; make it the "
                          f"config field with --by {args.vs}")
    if args.vs and args.vs not in result.by:
        raise ConfigError(f"--vs {args.vs}: not one of the --by fields ({', '.join(result.by) or 'none'})")
    if args.vs and args.vs not in numeric_fields(result):
        values = sorted({str(row.get(args.vs)) for row in result.groups.to_pylist()})
        raise ConfigError(f"--vs {args.vs}: the plateau scaling needs a numeric field with at least 2 positive "
                          f"values across configs; it takes {', '.join(values)}")
    heads = attribute_heads(con, emergence=(result.curves, result.jumps))
    print(f"{len(runs)} run(s), {result.seeds.num_rows} seed(s); configs by "
          f"{', '.join(result.by) or '(all runs together)'}")
    for line in format_pooling(result):
        print(line)
    print(format_groups(result))
    vs = args.vs or next(iter(numeric_fields(result)), None)
    if vs:
        print()
        print(format_plateau_scaling(result, vs))
    print()
    print(format_positions(result, copies=copied_outputs(con)))
    paths = write_tables(result, out, {"heads": heads, "head_rows": head_rows(con)})
    paths += make_analysis_figures(result, out, vs=args.vs)
    tables = [p.stem for p in paths if p.suffix == ".parquet"]
    figures = [p.name for p in paths if p.suffix not in (".parquet", ".csv")]
    print(f"\nwrote {len(paths)} files to {out}: tables {', '.join(tables)} (.parquet and .csv each); "
          f"figures {', '.join(figures) or 'none'}")
    return 0


def _analyze_outcome(con: Any, outcome: str, by: str, success_at: float, out: Path, n_runs: int) -> int:
    """``analyze --outcome``: the across-scales table and figure of each seed's final outcome (as
    ``reproduce random-scaling`` writes them)."""
    import numpy as np

    from .analysis.scales import final_outcomes
    from .report.analysis_figures import scales_figure
    from .report.tables import format_outcomes
    from .store import write_text

    metric, _, index = outcome.partition(":")
    known = [r[0] for r in con.sql('SELECT DISTINCT metric || CASE WHEN "index" = \'\' THEN \'\' ELSE \':\' || '
                                   '"index" END FROM metrics ORDER BY 1').fetchall()]
    if outcome not in known:
        same = [k for k in known if k.startswith(metric + ":")]
        if same:  # the metric is there, at other indices
            indices = ", ".join(k.partition(":")[2] for k in same[:12]) + (", ..." if len(same) > 12 else "")
            raise ConfigError(f"--outcome {outcome}: {metric} has no index {index!r} in these runs; its indices: "
                              f"{indices}")
        whole = [k for k in known if ":" not in k]  # a metric's value over all outputs first, then the rest
        raise ConfigError(f"--outcome {outcome}: not a metric of these runs; they have {', '.join(whole)} "
                          f"and per-index ones such as {', '.join([k for k in known if ':' in k][:4])}")
    from .analysis.runs import pooled_fields, run_rows

    pooled = pooled_fields(run_rows(con), [by])
    try:
        analysis, scales, outcomes = final_outcomes(con, metric, by, index=index, threshold=success_at)
    except ConfigError as error:
        raise ConfigError(str(error).replace("by=", "--by=", 1)) from None
    finally:
        con.close()
    table = format_outcomes(analysis, by, outcome, prefix=f"{n_runs} run(s), ")
    print(table)
    if pooled:  # each scale's seeds come from runs that differ in these too (as analyze's pooling line says)
        print("pooled (runs that differ in these count as one scale): " + "; ".join(
            f"{f} in {{{', '.join(map(str, values))}}}" for f, values in pooled.items()))
    finite = outcomes[np.isfinite(outcomes)]
    if finite.size and success_at > finite.max():  # legal, but likely a slip (an accuracy is at most 1)
        print(f"note: no seed reaches --success-at {success_at:g}: the largest {outcome} is {finite.max():.4g}")
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_text(out / "scales.txt", table + "\n")]
    paths.append(write_text(out / "scales.json", json.dumps({"outcome": outcome, "by": by, "success_at": success_at,
                                                             "rows": analysis.flat_rows(), "across": analysis.across,
                                                             "bin_edges": analysis.bin_edges}, indent=1)))
    paths += scales_figure(analysis, scales, outcomes, out, by=by, metric=outcome)
    print(f"\nwrote {', '.join(p.name for p in paths)} to {out}")
    return 0


def cmd_patch(args: argparse.Namespace) -> int:
    from .interventions.at_emergence import (folder_table, format_folder, patch_at_emergence,
                                             patch_folder_at_emergence, write_emergence_patching, write_table)
    from .interventions.checkpoints import patch_checkpoints, write_patching
    from .report.patch_figures import write_emergence_patching_figure, write_patching_figures
    from .train.estimate import check_device

    pair = args.early is not None or args.late is not None
    if args.at_emergence and pair:
        raise ConfigError("--at-emergence chooses each output's checkpoints itself: give it or --early/--late, "
                          "not both")
    if args.at_emergence:
        given = [flag for flag, value in (("--direction", args.direction), ("--fraction", args.fraction),
                                          ("--max-heads", args.max_heads)) if value is not None]
        if given:
            raise ConfigError(f"{', '.join(given)}: only with --early/--late (--at-emergence patches both "
                              "directions, one head at a time)")
    elif args.early is None or args.late is None:
        raise ConfigError("give --early STEP and --late STEP (checkpoints before and after an emergence), or "
                          "--at-emergence")
    check_device("--device", args.device)
    if args.out is not None:
        check_out_dir(args.out, run=False)
    elif (args.run_dir / "config.yaml").is_file():  # the default RUN/patching, checked before the work
        check_out_dir(args.run_dir / "patching", flag="the output folder", run=False)

    if args.at_emergence and args.run_dir.is_dir() and not (args.run_dir / "config.yaml").is_file():
        # a folder of runs (a sweep's): each run's own table and figure, then one line per run and one table
        out = args.out if args.out is not None else args.run_dir / "patching"
        if args.out is None:
            check_out_dir(out, flag="the output folder", run=False)
        results, fields = patch_folder_at_emergence(
            args.run_dir, seeds=None if args.seed is None else [args.seed], what=args.what, batch=args.batch,
            device=args.device, progress=not args.quiet)
        for found in results:
            if found.rows:
                write_emergence_patching(found)
                write_emergence_patching_figure(found)
        print(format_folder(results, fields))
        table = folder_table(results, fields)
        paths = write_table(table, out, args.what)
        print(f"wrote each run's table and figure to its patching/ folder, and all {table.num_rows} rows to "
              + ", ".join(map(str, paths)))
        return 0
    if args.at_emergence:
        found = patch_at_emergence(args.run_dir, seeds=None if args.seed is None else [args.seed], what=args.what,
                                   batch=args.batch, device=args.device, progress=not args.quiet)
        print(found.format())
        if not found.rows:
            return 0
        paths = write_emergence_patching(found, args.out) + write_emergence_patching_figure(found, args.out)
        print(f"wrote {len(paths)} files to {paths[0].parent}: " + ", ".join(p.name for p in paths))
        return 0
    result = patch_checkpoints(args.run_dir, args.early, args.late, 0 if args.seed is None else args.seed,
                               what=args.what, fraction=0.9 if args.fraction is None else args.fraction,
                               batch=args.batch, device=args.device,
                               max_heads=8 if args.max_heads is None else args.max_heads, progress=not args.quiet,
                               direction=args.direction or "late-to-early")
    return _print_and_write(result, lambda: write_patching(result, args.out) + write_patching_figures(result, args.out))


def _print_and_write(result: Any, write: Callable[[], list[Path]]) -> int:
    """Print a patching or ablation result's notes and report, call ``write`` and say what it wrote."""
    for note in result.notes:
        print(f"note: {note}")
    print(result.format())
    paths = write()
    print(f"wrote {len(paths)} files to {paths[0].parent}: " + ", ".join(p.name for p in paths))
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from .interventions.checkpoint_ablation import ablate_checkpoint, write_ablation
    from .report.patch_figures import write_ablation_figure
    from .train.estimate import check_device

    check_device("--device", args.device)
    if args.out is not None:
        check_out_dir(args.out, run=False)
    elif (args.run_dir / "config.yaml").is_file():  # the default RUN/patching, checked before the work
        check_out_dir(args.run_dir / "patching", flag="the output folder", run=False)
    result = ablate_checkpoint(args.run_dir, args.step, args.seed, kind=args.kind, what=args.what, batch=args.batch,
                               device=args.device)
    return _print_and_write(result, lambda: write_ablation(result, args.out) + write_ablation_figure(result, args.out))


def _unfinished(run: Any, problems: list) -> list[str]:
    """A note for a training run that has not finished (its files may all be intact)."""
    from .train import ExperimentConfig
    from .train.run import check_existing, fraction_left

    if problems or run.is_complete() or run.metrics_path.exists() or not (run.state_dir / "plan.json").exists():
        return []
    if is_lm_scan(run.read_config_dict()):
        return []
    config = ExperimentConfig.from_run(run).resolved()
    try:
        check_existing(config, run.path)
    except ConfigError as error:  # this emergelab would refuse to resume it
        return [str(error)]
    left = fraction_left(config, run.path)
    if left == 0:
        return [f"{run.path}: every seed is trained, but the run's final files (metrics.parquet, summary.json) "
                "are not written yet; re-run its `emergelab run` or sweep command to write them"]
    return [f"{run.path}: unfinished ({1.0 - left:.0%} of its seed-steps trained); re-run its `emergelab run` "
            "or sweep command to resume"]


def cmd_check(args: argparse.Namespace) -> int:
    from .store import Problem, RunDir, check_run, find_run_dirs
    from .train import ExperimentConfig

    roots: list[Path] = []
    for path in args.paths:
        if not path.exists():
            raise ConfigError(f"{path}: no such file or directory")
        found = find_run_dirs(path)
        if not found:
            raise ConfigError(f"{path}: no run directories (config.yaml, manifest.jsonl or metrics.parquet) "
                              "at or below it")
        roots += [p for p in found if p not in roots]
    total, damaged, busy = 0, 0, 0
    for root in roots:
        run = RunDir(root)
        lock = run.state_dir / "run.lock"
        if is_locked(lock):  # its files change until it ends
            print(f"note: {root}: being trained by another process now; not checked (check it when it ends)")
            busy += 1
            continue
        had_state = lock.exists()  # an unfinished run (a finished one has removed its state/)
        problems, notes = check_run(root)
        if problems and had_state and (is_locked(lock) or not lock.exists()):
            problems, notes = check_run(root)  # it resumed or finished (and removed its state) while read
        if run.config_path.exists() and not any(p.path == run.config_path for p in problems):
            try:
                if not is_lm_scan(run.read_config_dict()):
                    ExperimentConfig.from_run(run)  # an `emergelab lm scan` has no training config
            except (ConfigError, CorruptFileError) as error:
                problems.append(Problem(run.config_path, f"not a valid config ({error})"))
            else:
                notes += _unfinished(run, problems)
        for note in notes:
            print(f"note: {note}")
        for problem in problems:
            print(problem)
        total += len(problems)
        damaged += bool(problems)
    skipped = f" ({busy} being trained, not checked)" if busy else ""
    if total:
        print(f"checked {len(roots) - busy} run(s): {total} problem(s) in {damaged} run(s){skipped}")
        return 2
    print(f"checked {len(roots) - busy} run(s): every file is intact{skipped}")
    return 0


FEW_FORECAST_SEEDS = 10  # training seeds per half below which forecast intervals are noted as unreliable


def _seed_list(seeds: list[int]) -> str:
    """``0..15`` for a contiguous list, else ``0, 3, 7``."""
    if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}..{seeds[-1]}"
    return ", ".join(map(str, seeds)) or "none"


def cmd_forecast(args: argparse.Namespace) -> int:
    import pyarrow.compute as pc

    from .analysis.forecast import default_forecasters, evaluate_forecasts, forecast_run
    from .report.forecast import format_evaluation, format_forecasts, write_evaluation
    from .store import connect
    from .store.query import finished_run_dirs

    if not args.path.exists():
        raise ConfigError(f"{args.path}: no such file or directory")
    if args.evaluate and (args.at is not None or args.seed is not None):
        raise ConfigError("--at/--seed: for forecasts at one step; --evaluate forecasts every seed at ~15 fixed "
                          "steps of each run")
    if args.at is not None and args.at < 0:
        raise ConfigError(f"--at={args.at}: must be >= 0")
    if not 1 <= args.condition_bins <= 10:
        raise ConfigError(f"--condition-bins={args.condition_bins}: must be an integer in 1..10")
    if args.out is not None:
        check_out_dir(args.out, run=False)
    try:
        con = connect(args.path, check_config=check_saved_config)
    except FileNotFoundError:
        raise ConfigError(f"no finished runs (metrics.parquet + config.yaml) at or below {args.path}") from None
    if not args.evaluate:
        table = forecast_run(con, args.at, make=lambda: default_forecasters(args.condition_bins))
        if args.seed is not None:
            seeds = sorted(set(table["seed"].to_pylist()))
            table = table.filter(pc.equal(table["seed"], args.seed))
            if table.num_rows == 0 and args.seed not in seeds:
                trained = [row[0] for row in con.sql("SELECT DISTINCT seed FROM metrics ORDER BY seed").fetchall()]
                if args.seed not in trained:
                    raise ConfigError(f"--seed {args.seed}: not a seed of the run (its seeds: "
                                      f"{_seed_list(trained)})")
                raise ConfigError(f"--seed {args.seed}: no output of that seed to forecast (seeds with one: "
                                  f"{', '.join(map(str, seeds)) or 'none'})")
        print(format_forecasts(table))
        for run, seeds in con.sql('SELECT run, "train.seeds" FROM runs ORDER BY run').fetchall():
            if seeds is not None and seeds // 2 < FEW_FORECAST_SEEDS:
                half = f"{seeds // 2}-{seeds - seeds // 2}" if seeds % 2 else str(seeds // 2)
                print(f"note: {Path(run).name} has {seeds} seed(s): each seed's forecasters learn from the other "
                      f"half ({half} seeds), too few for 80% intervals (docs/results.md evaluates forecasting "
                      "with 64 seeds)")
        return 0
    evaluation = evaluate_forecasts(con, make=lambda: default_forecasters(args.condition_bins))
    print(format_evaluation(evaluation))
    runs = finished_run_dirs(args.path)
    out = args.out or (runs[0].path / "forecast" if len(runs) == 1 else Path("forecast"))
    paths = write_evaluation(evaluation, out)
    print(f"\nwrote {len(paths)} files to {out}: " + ", ".join(p.name for p in paths))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .models import model_class, model_names
    from .presets import PRESETS
    from .tasks import task_class, task_names
    from .train import ExecutionConfig, TrainConfig

    def fields(cls: type) -> str:
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        return ", ".join(f"{name}={defaults[name]!r}" for name in field_names(cls))

    def show(name: str, section: str, find: Any) -> None:
        try:  # installed plugins' too, loaded here: a broken one is listed with its error
            print(f"  {name}\n    {section}.* fields: {fields(find(name))}")
        except ConfigError as error:
            print(f"  {name}\n    not usable: {error}")

    print("tasks:")
    for name in task_names():
        show(name, "task", task_class)
    print("models (model.name):")
    for name in model_names():
        show(name, "model", model_class)
    print(f"training:\n    train.* fields: {fields(TrainConfig)}")
    print(f"execution (never changes the numbers):\n    execution.* fields: {fields(ExecutionConfig)}")
    print("presets:")
    for name, preset in PRESETS.items():
        print(f"  {name} ({preset['task']['name']}): {preset['description']}")
    from .models import onednn
    from .models.native import describe

    print("this machine's CPU training kernels (models/native.py, models/onednn.py):")
    print("\n".join("  " + line for line in describe().splitlines()))
    print("  " + onednn.describe())
    return 0

# ------------------------------------------------------------------------------------ emergelab lm ...
@contextlib.contextmanager
def _lm_errors() -> Iterator[None]:
    """Language-model failures as one line (exit 2): a missing ``lm`` extra, bad ``--param`` names and
    checkpoint mismatches (TypeError, ValueError, FileNotFoundError), and the hub's own errors (a missing
    repo or revision, a gated repo). Unreachable or offline hubs are already a ConfigError
    (``HubUnavailableError``)."""
    try:
        yield
    except ConfigError:
        raise
    except ImportError as error:
        raise ConfigError(str(error)) from None
    except (TypeError, ValueError, FileNotFoundError) as error:
        raise ConfigError(" ".join(str(error).split())) from None
    except Exception as error:
        if type(error).__module__.startswith("huggingface_hub"):
            raise ConfigError(f"{type(error).__name__}: {' '.join(str(error).split())[:300]}") from None
        raise


def _lm_params(texts: list[str]) -> dict[str, Any]:
    """``--param KEY=VALUE`` flags -> ``{key: value}`` (values read as YAML: 16 is an int)."""
    import yaml

    params = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {text!r}: expected KEY=VALUE")
        params[key.strip()] = yaml.safe_load(value)
    return params


def _add_lm_parser(sub: Any) -> None:
    lm = sub.add_parser("lm", help="language-model checkpoints (Pythia, any HF causal LM): capability scans and "
                        "head patching")
    lm_sub = lm.add_subparsers(dest="lm_command", required=True, parser_class=_Parser)
    scan = lm_sub.add_parser("scan", help="find each seed's revision of emergence by a coarse-to-fine search")
    patch = lm_sub.add_parser("patch", help="patch each head of a late revision into an early one")
    for p in (scan, patch):
        p.add_argument("--pythia", metavar="SIZE", help="EleutherAI/pythia-SIZE (and -seedK for seeds 1..9)")
        p.add_argument("--variant", default="seed", metavar="VARIANT",
                       help="with --pythia: seed (default: pythia-SIZE, -seedK) | deduped (pythia-SIZE-deduped) | "
                            "data-seed, weight-seed (pythia-160m-data-seedK, -weight-seedK, K = 1..3)")
        p.add_argument("--repo", help="a hub repo of a causal LM (GPT-NeoX, Llama, Qwen2, ...; revisions stepN)")
        p.add_argument("--local", type=_path, metavar="DIR", help="local revisions: DIR/seed<k>/<revision>/")
        p.add_argument("--capability", default="repetition", help="repetition | induction | ioi")
        p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                       help="a prompt-set knob, e.g. --param length=16 (repeatable)")
        p.add_argument("--n-prompts", type=int, default=200, help="prompts per evaluation (default 200)")
        p.add_argument("--prompt-seed", type=int, default=0)
        p.add_argument("--tokenizer", help="tokenizer.json to use instead of the checkpoint's")
        p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
        p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | mps (default cpu)")
        p.add_argument("--retries", type=int, default=5, help="tries per hub request, 1..1000 (default 5)")
        p.add_argument("--backoff", type=float, default=2.0, help="first retry delay in seconds, 0..3600, doubling "
                       "(default 2)")
        p.add_argument("--out", type=_path, required=True,
                       help="output folder (a scan resumes in it)" if p is scan else "output folder (four files)")
    scan.add_argument("--seeds", help="suite seeds, e.g. 0-9 or 0,3 (default 0; with --local: every DIR/seed<k> "
                      "folder)")
    scan.add_argument("--revisions", help="comma-separated revisions (default: all of the source's)")
    scan.add_argument("--metric", default="solved_fraction", help="solved_fraction | target_prob | logit_diff")
    scan.add_argument("--threshold", type=float, default=0.5, help="emergence: metric >= this (default 0.5)")
    scan.add_argument("--coarse", type=int, default=8, help="coarse log-spaced revisions per seed (default 8)")
    scan.add_argument("--exhaustive", action="store_true", help="evaluate every revision")
    scan.add_argument("--batch-size", type=int, default=64)
    scan.add_argument("--disk-budget-gb", type=float, default=20.0, help="largest checkpoint held (default 20)")
    patch.add_argument("--seed", type=int, help="suite seed (default 0; 1 with --variant data-seed or weight-seed)")
    patch.add_argument("--early", required=True, metavar="REVISION", help="e.g. step1000 (before --late)")
    patch.add_argument("--late", required=True, metavar="REVISION", help="e.g. step8000 (after --early)")
    patch.add_argument("--what", choices=("pattern", "scores"), default="pattern")
    patch.add_argument("--direction", choices=("late-to-early", "early-to-late"), default="late-to-early",
                       help="late-to-early (default): late heads into the early revision; early-to-late: early "
                            "heads into the late one (which heads it cannot do without)")
    patch.add_argument("--top-k", type=int, default=5, help="top heads patched together, >= 1 (default 5)")
    patch.add_argument("--fraction", type=float, default=0.9, help="greedy target fraction, in (0, 1] (default 0.9)")
    patch.add_argument("--max-heads", type=int, default=8, help="greedy set size limit; 0 skips it (default 8)")
    patch.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_lm(args: argparse.Namespace) -> int:
    with _lm_errors():
        from .config import require_float, require_int
        from .lm import ScanConfig, require_transformers, scan
        from .lm.patch import PATCH_FLAGS, check_patch, patch_revisions, write_patch
        from .lm.scan import SCAN_FLAGS, with_flags
        from .lm.sources import make_sources, parse_seeds
        from .train.estimate import check_device

        require_transformers()
    # Every flag is checked first (one line naming it), before a source is opened or anything written.
    params: dict[str, Any] = {}
    for text in args.param:
        try:
            params.update(_lm_params([text]))
        except ConfigError:
            raise
        except Exception as error:  # a YAML syntax error in the value
            reason = " ".join(str(error).split())[:200]
            raise ConfigError(f"--param {text!r}: the value is not valid YAML ({reason})") from None
    require_int("--retries", args.retries, 1, 1000)
    require_float("--backoff", args.backoff, 0.0, 3600.0)
    check_device("--device", args.device)
    scanning = args.lm_command == "scan"
    check_out_dir(args.out, run=scanning)  # a scan is a run directory; patch writes four files into a folder
    try:
        if scanning:
            config = ScanConfig(capability=args.capability, params=params, n_prompts=args.n_prompts,
                                prompt_seed=args.prompt_seed, metric=args.metric, threshold=args.threshold,
                                coarse=args.coarse, exhaustive=args.exhaustive, batch_size=args.batch_size,
                                disk_budget_gb=args.disk_budget_gb, dtype=args.dtype, device=args.device,
                                tokenizer=args.tokenizer)
        else:
            check_patch(args.early, args.late, capability=args.capability, params=params,
                        n_prompts=args.n_prompts, prompt_seed=args.prompt_seed, what=args.what, top_k=args.top_k,
                        fraction=args.fraction, greedy_max_heads=args.max_heads, dtype=args.dtype,
                        direction=args.direction)
    except ConfigError as error:
        raise with_flags(error, SCAN_FLAGS if scanning else PATCH_FLAGS) from None
    if scanning:
        seeds = parse_seeds(args.seeds) if args.seeds is not None else None  # None: make_sources' default
    else:
        if args.seed is not None:
            require_int("--seed", args.seed, 0)
        seeds = [args.seed] if args.seed is not None else (None if args.pythia else [0])  # None: the variant's first
    revisions = [r.strip() for r in args.revisions.split(",")] if getattr(args, "revisions", None) else None
    hub = {"attempts": args.retries, "backoff": args.backoff}
    with _lm_errors():
        sources = make_sources(pythia=args.pythia, repo=args.repo, local=args.local, seeds=seeds,
                               revisions=revisions, variant=args.variant, **hub)
        if scanning:
            result = scan(sources, config, args.out, log=print)  # checks the sources before writing to --out
            print(result.format())
            print(f"wrote {args.out}/metrics.parquet and summary.json")
            return 0
        (source,) = sources.values()  # the one seed patched
        result = patch_revisions(source, args.early, args.late, capability=args.capability,
                                 params=params, n_prompts=args.n_prompts, prompt_seed=args.prompt_seed,
                                 what=args.what, top_k=args.top_k, fraction=args.fraction,
                                 greedy_max_heads=args.max_heads, dtype=args.dtype, device=args.device,
                                 tokenizer=args.tokenizer, progress=not args.quiet, direction=args.direction)
    for note in result.notes:
        print(f"note: {note}")
    print(result.format())
    paths = write_patch(result, args.out)
    print(f"wrote {len(paths)} files to {args.out}: " + ", ".join(p.name for p in paths))
    return 0


# ------------------------------------------------- emergelab reproduce lm-emergence --pythia [SIZES]
# Knobs only --pythia takes, with their defaults (None in the parser, so a stray one is an error).
PYTHIA_DEFAULTS: dict[str, Any] = {"seeds": "0-9", "local": None, "capability": "repetition", "param": [],
                                   "metric": "solved_fraction", "threshold": 0.5, "coarse": 8, "n_prompts": 200,
                                   "dtype": "float32", "disk_budget_gb": 20.0}


def _add_pythia_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pythia", nargs="?", const="", metavar="SIZES",
                   help="lm-emergence only: scan the real Pythia suites (EleutherAI/pythia-SIZE, -seedK) instead of "
                        "the mini-suite; SIZES comma-separated (default 14m,31m,70m,160m,410m); needs the hub and "
                        "the lm extra (disk and time: src/emergelab/lm/README.md); re-run to resume")
    p.add_argument("--seeds", help="with --pythia: suite seeds, e.g. 0-9 or 0,3 (default 0-9; with --local: the "
                                   "seed folders every size has)")
    p.add_argument("--local", type=_path, metavar="DIR", help="with --pythia: local suites DIR/<size>/seed<k>/<revision>/ "
                                                           "instead of the hub (default SIZES: DIR's size folders)")
    p.add_argument("--capability", help="with --pythia: repetition | induction | ioi (default repetition)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="with --pythia: a prompt-set knob (repeatable)")
    p.add_argument("--metric", help="with --pythia: solved_fraction (default) | target_prob | logit_diff")
    p.add_argument("--threshold", type=_float, help="with --pythia: emergence = metric >= this (default 0.5)")
    p.add_argument("--coarse", type=_int, help="with --pythia: coarse log-spaced revisions per seed (default 8)")
    p.add_argument("--n-prompts", type=_int, help="with --pythia: prompts per evaluation (default 200)")
    p.add_argument("--dtype", help="with --pythia: float32 (default) | bfloat16 | float16")
    p.add_argument("--disk-budget-gb", type=_float, help="with --pythia: largest checkpoint held (default 20)")


def _reject_stray_pythia_knobs(args: argparse.Namespace) -> None:
    for key in PYTHIA_DEFAULTS:
        if getattr(args, key) is not None:
            raise ConfigError(f"--{key.replace('_', '-')}: only with --pythia "
                              "(emergelab reproduce lm-emergence --pythia [SIZES])")


def cmd_reproduce_pythia(args: argparse.Namespace) -> int:
    """``reproduce lm-emergence --pythia [SIZES]``: the suite scan of ``lm.suite`` (reproduce/ never imports
    lm, so the dispatch lives here)."""
    if args.target != "lm-emergence":
        raise ConfigError(f"--pythia: only with lm-emergence (the Pythia suites), not {args.target}")
    for flag, given in (("--scale", args.scale is not None), ("--workers", args.workers is not None),
                        ("--analyse-only", args.analyse_only)):
        if given:
            raise ConfigError(f"{flag}: not with --pythia (choose the suites with --pythia SIZES and --seeds)")
    if args.device is not None:
        from .train.estimate import check_device

        check_device("--device", args.device)
    knobs = {key: default if getattr(args, key) is None else getattr(args, key)
             for key, default in PYTHIA_DEFAULTS.items()}
    with _lm_errors():
        from .lm import ScanConfig, require_transformers
        from .lm.sources import parse_seeds
        from .lm.suite import DEFAULT_SIZES, local_seeds, local_sizes, parse_sizes, scan_suite, suite_sources

        require_transformers()
        sizes = (parse_sizes(args.pythia) if args.pythia else local_sizes(knobs["local"]) if knobs["local"]
                 else list(DEFAULT_SIZES))
        # a local suite's seeds are its folders', as its sizes are (unless --seeds says otherwise)
        seeds = (local_seeds(knobs["local"], sizes) if knobs["local"] and args.seeds is None
                 else parse_seeds(knobs["seeds"]))
        config = ScanConfig(capability=knobs["capability"], params=_lm_params(knobs["param"]),
                            n_prompts=knobs["n_prompts"], metric=knobs["metric"], threshold=knobs["threshold"],
                            coarse=knobs["coarse"], disk_budget_gb=knobs["disk_budget_gb"], dtype=knobs["dtype"],
                            device=args.device or "cpu")
        if args.retries is not None and args.retries < 0:
            raise ConfigError(f"--retries={args.retries}: must be >= 0")
        attempts = 5 if args.retries is None else args.retries + 1
        sources = suite_sources(sizes, seeds, local=knobs["local"], attempts=attempts)
        out = args.out or Path("runs") / "reproduce" / "lm-emergence-pythia"
        check_out_dir(out, run=False)
        if args.dry_run:
            _print_suite_plan(sources, config, out)
            return 0
        from .reproduce.run import command_line

        result = scan_suite(sources, config, out, log=print, command=command_line())
    print(result.table)
    for note in result.notes:
        print(f"note: {note}")
    if result.patch is not None:
        print(result.patch.text)
    print(f"\nwrote {out / 'RESULT.md'}, {out / 'table.txt'} and {result.figure}"
          + (f"; the patching in {out / 'patch'}/" if result.patch is not None else ""))
    return 0


def _print_suite_plan(sources: dict[str, dict[int, Any]], config: Any, out: Path) -> None:
    from .lm.suite import estimate_evaluations

    total = 0
    for size, by_seed in sources.items():
        most = sum(estimate_evaluations(src.revisions(), config.coarse) for src in by_seed.values())
        total += most
        names = [src.name for src in by_seed.values()]
        print(f"{size}: {len(names)} seed(s) into {out / size}, at most {most} checkpoint(s): {names[0]}"
              + (f" .. {names[-1]}" if len(names) > 1 else ""))
    print(f"at most {total} checkpoint fetches in all, one held at a time (disk budget {config.disk_budget_gb:g} GB), "
          "then 2 for the patching; nothing fetched (--dry-run)")


def _check_reproduce_out(out: Path, name: str) -> None:
    """Refuse an ``--out`` that is a run directory or holds another target's reproduction (its
    ``result.json`` says which)."""
    if (out / "config.yaml").exists():
        raise ConfigError(f"--out {out}: a run directory, not a reproduction's; choose a new or empty directory")
    other = _result_record(out).get("target")
    if isinstance(other, str) and other != name:
        raise ConfigError(f"--out {out}: holds the reproduction of {other} (its result.json); choose another "
                          f"--out for {name}")


def _check_reproduce_contents(out: Path, name: str, scale: str, sweeps: dict[str, Any], *, analyse_only: bool,
                              dry_run: bool) -> None:
    """Refuse an ``--out`` whose contents would mix into this reproduction: files it does not write, another
    scale's result, runs its plan does not have (another scale's or version's: the analysis reads every run
    there). A dry run only warns of the runs."""
    written = set(sweeps) | {"result.json", "RESULT.md", "table.txt", "figures"}
    strays = sorted(p.name for p in out.iterdir() if p.name not in written and not p.name.startswith(".")) \
        if out.is_dir() else []
    if strays:
        raise ConfigError(f"--out {out}: holds {strays[0]!r}{' and more' if len(strays) > 1 else ''}, which a "
                          f"reproduction of {name} does not write; choose a new or empty directory")
    trained = _previous_scale(out)
    if trained is not None and trained != scale and not dry_run:
        raise ConfigError(f"--scale {scale}: {out} holds the {trained}-scale runs of {name} (its result.json); "
                          + (f"analyse them with --scale {trained}" if analyse_only else
                             f"train the {scale} scale into another --out (the analysis reads every run there)"))
    for part, sweep in sweeps.items():
        runs_dir = out / part / "runs"
        extra = sorted({p.name for p in runs_dir.iterdir() if p.is_dir()} - {r.name for r in sweep.runs}) \
            if runs_dir.is_dir() else []
        if extra:
            line = (f"{runs_dir}: {len(extra)} run(s) that the {scale}-scale plan of {name} does not have (e.g. "
                    f"{extra[0]}: another scale's, or an earlier version's); the analysis reads every run there, "
                    "so reproduce into another --out")
            if not dry_run:
                raise ConfigError(line)
            print(f"emergelab: warning: {line}", file=sys.stderr)


def _previous_scale(out: Path) -> str | None:
    """The scale ``out``'s result.json says its runs were trained at (None: no readable record)."""
    scale = _result_record(out).get("scale")
    return scale if isinstance(scale, str) else None


def _result_record(out: Path) -> dict[str, Any]:
    """``out``'s result.json (a reproduction's record), or {} when there is none readable."""
    import json

    try:
        record = json.loads((out / "result.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce.run import analyse, check_scale, command_line, default_out, load_parts, reproduce, target

    if args.retries is not None and args.retries < 0:  # before anything is printed, with --dry-run too
        raise ConfigError(f"--retries={args.retries}: must be >= 0")
    if args.pythia is not None:
        return cmd_reproduce_pythia(args)
    _reject_stray_pythia_knobs(args)
    t, scale = target(args.target), check_scale(args.scale or "cpu")
    out = args.out or default_out(t.name, scale)
    if args.device is not None:
        from .train.estimate import check_device

        check_device("--device", args.device)
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers={args.workers}: must be >= 1")
    check_out_dir(out, run=False)
    _check_reproduce_out(out, t.name)
    if args.analyse_only and args.dry_run:
        raise ConfigError("--analyse-only with --dry-run: a dry run lists what training would do and "
                          "--analyse-only trains nothing; give one of them")
    sweeps = load_parts(t, scale, out, args.device)  # validates every run before any work
    _check_reproduce_contents(out, t.name, scale, sweeps, analyse_only=args.analyse_only, dry_run=args.dry_run)
    refused = {part: check_sweep_runs(sweep, out / part, dry_run=args.dry_run) for part, sweep in sweeps.items()}
    if args.analyse_only:
        missing = [part for part in sweeps if not (out / part / "sweep.json").exists()]
        if missing:
            raise ConfigError(f"--analyse-only: {out / missing[0]} holds no runs of {t.name}; train them first "
                              "(the same command without --analyse-only)")
    if args.dry_run:  # each part as `emergelab sweep --dry-run` shows it: runs, cost, state
        for part, sweep in sweeps.items():
            print(f"{part}: {len(sweep.runs)} run(s) in {out / part}")
            _sweep_dry_run(sweep, out / part, args, timed=not refused[part])
        return 0
    if args.analyse_only:
        result = analyse(t, scale, out, runs=sum(len(s.runs) for s in sweeps.values()), command=command_line())
    else:
        from .sweep import local_sweep_executor

        print(f"reproduce {t.name} at {scale} scale into {out}: "
              + ", ".join(f"{part} {len(s.runs)} run(s)" for part, s in sweeps.items()))
        result = reproduce(t.name, scale, out, executor=local_sweep_executor(args.workers), device=args.device,
                           retries=1 if args.retries is None else args.retries, progress=not args.quiet,
                           command=command_line())
    print(result.table)
    if result.failed:
        print(f"failed runs: {', '.join(result.failed)} (`emergelab sweep status {out}/PART`)")
    print(f"\nwrote {out / 'RESULT.md'}, {out / 'table.txt'} and {len(result.figures)} figure(s) in {out / 'figures'}")
    return 1 if result.failed else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import load_sweep, sweep_out
    from .sweep.spec import with_trackers

    targets = args.targets
    if any(not t.strip() for t in targets):
        raise ConfigError("sweep: an empty path; give a sweep file (or: emergelab sweep status DIR)")
    if targets[0] == "status":
        if len(targets) != 2:
            raise ConfigError("usage: emergelab sweep status DIR")
        return _sweep_status(Path(targets[1]))
    if len(targets) != 1:
        raise ConfigError(f"expected one sweep file, got {' '.join(targets)} (or: emergelab sweep status DIR)")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers={args.workers}: must be >= 1")
    if args.retries < 0:
        raise ConfigError(f"--retries={args.retries}: must be >= 0")
    if args.executor == "local" and args.address:
        raise ConfigError("--address joins a Ray cluster: use it with --executor ray")
    for flag, value in (("--cpus-per-unit", args.cpus_per_unit), ("--gpus-per-unit", args.gpus_per_unit)):
        if not math.isfinite(value) or value < 0 or (flag == "--cpus-per-unit" and value == 0):
            raise ConfigError(f"{flag}={value}: must be a finite number "
                              + ("> 0" if flag == "--cpus-per-unit" else ">= 0"))
    if args.executor == "local" and (args.gpus_per_unit or args.cpus_per_unit != 1.0):
        raise ConfigError("--cpus-per-unit / --gpus-per-unit size Ray tasks: use them with --executor ray "
                          "(local workers take --workers)")
    sweep = load_sweep(targets[0], args.out, args.scale)
    if args.log:
        sweep = with_trackers(sweep, _trackers(args.log))
    out = sweep_out(sweep, args.out)
    refused = check_sweep_runs(sweep, out, dry_run=args.dry_run)
    dup = f" ({sweep.duplicates} duplicate point(s) merged)" if sweep.duplicates else ""
    print(f"sweep: {len(sweep.runs)} run(s) in {out}{dup}")
    if args.dry_run:
        return _sweep_dry_run(sweep, out, args, timed=not refused)
    if args.executor == "ray":
        from .sweep import ray_executor
        from .sweep.ray_tasks import _import_ray

        _import_ray()
        executor = ray_executor(args.address, args.cpus_per_unit, args.gpus_per_unit)
        executor.connect()  # a cluster that is not there, or has no GPU for the units: said before any work
    else:
        if any(r.config.execution.device.startswith("cuda") for r in sweep.runs):
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("execution.device=cuda: CUDA is not available here; use cpu")
        from .sweep import local_sweep_executor

        executor = local_sweep_executor(args.workers)
    from .sweep import run_sweep

    result = run_sweep(sweep, out, executor=executor, retries=args.retries, progress=not args.quiet)
    print(f"done {len(result.done)}, failed {len(result.failed)}, busy elsewhere {len(result.busy)} "
          f"(of {len(sweep.runs)}); `emergelab sweep status {out}` for details")
    from .sweep.driver import last_line

    for name, error in result.failed.items():
        print(f"  failed {name}: {last_line(error)}")
    for name in result.busy:
        print(f"  busy {name}: another emergelab process is training it; left alone")
    if args.figures:
        _sweep_figures([r for r in sweep.runs if r.name in set(result.done)], out)
    return 1 if result.failed else 0


def _sweep_figures(runs: list[Any], out: Path) -> None:
    """Each finished run's figures (``--figures``), with one line for the lot."""
    from .report import make_figures
    from .store import RunDir

    for spec in runs:
        make_figures(RunDir(spec.path(out)))
    print(f"figures of {len(runs)} run(s): {out}/runs/NAME/figures/")


def check_sweep_runs(sweep: Any, out: Path, dry_run: bool = False) -> list[str]:
    """Refuse, before anything is written, a sweep directory ``out`` that is a file or a run directory, a
    run whose device is not here, or one whose training would not fit in memory (as ``run`` does). A dry
    run (which trains nothing, so can list a plan sized for another machine) only warns of the last two,
    and returns what it would refuse (then it must not calibrate: that builds the runs)."""
    from .train.estimate import check_device, check_fits, estimate_run
    from .train.live import check_forecast_source

    check_out_dir(out, run=False)
    if (out / "config.yaml").exists() and not (out / "sweep.json").exists():
        raise ConfigError(f"--out {out}: a run directory, not a sweep's; choose a new or empty directory")
    sources = {(run.config.execution.forecast_from, run.config.task.name): run for run in sweep.runs}
    for run in sources.values():  # a config error wherever it runs: refused by a dry run too
        try:
            check_forecast_source(run.config)
        except ConfigError as error:
            raise ConfigError(f"{run.name}: {error}") from None
    refused = []
    for run in sweep.runs:
        try:
            device = check_device(f"{run.name}: execution.device", run.config.execution.device)
            check_fits(estimate_run(run.config), device, f"{run.name}")
        except ConfigError as error:
            if not dry_run:
                raise
            refused.append(str(error))
    if refused:
        print(f"note: {len(refused)} of {len(sweep.runs)} run(s) would be refused on this machine (the first: "
              f"{refused[0]}); the plan below is for one that can take them, without a time estimate "
              "(calibrating builds the runs)")
    return refused


def _values(overrides: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in overrides.items()) or "-"


def _sweep_dry_run(sweep: Any, out: Path, args: argparse.Namespace, timed: bool = True) -> int:
    """The runs, their FLOPs, estimated time (not ``timed``: none, as for runs this machine cannot build)
    and state."""
    from .sweep.driver import default_workers
    from .sweep.cost import Estimate, estimate, format_seconds, wall_seconds
    from .store import RunDir
    from .train.estimate import probe_flops
    from .train.run import train_flops

    workers = args.workers or default_workers()
    estimates = estimate(sweep.runs) if timed else \
        [Estimate(r, train_flops(r.config), float("nan"), probe_flops(r.config)) for r in sweep.runs]
    rows = []
    for e in estimates:
        run = RunDir(e.run.path(out))
        state = "done" if run.is_complete() else ("started" if run.state_dir.exists() else "new")
        rows.append([e.run.name, _values(e.run.overrides), str(e.run.config.train.seeds),
                     str(e.run.config.train.steps), f"{e.flops:.2e}", f"{100 * e.probe_flops / e.flops:.0f}%",
                     format_seconds(e.total_seconds), state])
    print(_format_table(["run", "values", "seeds", "steps", "FLOPs", "probes", "est. time", "state"], rows))
    todo = [e for e, row in zip(estimates, rows) if row[-1] != "done"]
    if not timed:
        print(f"total {sum(e.flops for e in estimates):.2e} FLOPs; to do: {len(todo)} run(s)")
        return 0
    print(f"total {sum(e.flops for e in estimates):.2e} FLOPs; to do: {len(todo)} run(s), "
          f"{format_seconds(sum(e.total_seconds for e in todo))} of one thread, about "
          f"{format_seconds(wall_seconds(todo, workers))} on {workers} worker(s)")
    print("(FLOPs: the training steps'; probes: their forward FLOPs beside those, counted in the time at the "
          "steps' rate; a probe's attention maps and metrics, checkpoints and start-up come on top)")
    return 0


def _status_progress(status: Any) -> str:
    """A run's progress for ``sweep status``: rounded down unless done (99.7% is not 100%), and a run
    trained to the end whose results were not written yet (interrupted while finishing) says so."""
    if status.state == "done":
        return "100%"
    if status.progress >= 1:
        return "100% (trained; re-run the sweep to write its results)" if status.state == "pending" else "100%"
    return f"{math.floor(100 * status.progress)}%"


def _sweep_status(out: Path) -> int:
    from .sweep import sweep_status
    from .sweep.driver import STATES, last_line

    statuses = sweep_status(out)
    rows = [[s.name, s.state, _status_progress(s), _values(s.overrides),
             (f"after {s.attempts} attempt(s): " if s.attempts else "") + last_line(s.error) if s.error else ""]
            for s in statuses]
    print(_format_table(["run", "state", "progress", "values", "error"], rows))
    counts = {state: sum(s.state == state for s in statuses) for state in STATES}
    print(", ".join(f"{n} {state}" for state, n in counts.items()) + f" (of {len(statuses)})")
    return 0


def _format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *rows]]
    return "\n".join(lines)


def cmd_query(args: argparse.Namespace) -> int:
    import csv
    import io
    import json

    import duckdb

    from .store import connect

    if not args.path.exists():
        raise ConfigError(f"{args.path}: no such file or directory")
    if not args.sql.strip():
        raise ConfigError('SQL: empty; e.g. "SELECT metric, count(*) FROM metrics GROUP BY metric"')
    try:
        con = connect(args.path, check_config=check_saved_config)
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None
    try:
        relation = con.sql(args.sql)
        if relation is None:  # a statement without a result (CREATE, SET ...)
            return 0
        columns, rows = relation.columns, relation.fetchall()
    except duckdb.InterruptException:  # Ctrl-C or SIGTERM reached DuckDB mid-query
        raise KeyboardInterrupt from None
    except RuntimeError as error:  # how duckdb 2.0 reports the same
        if "interrupted" not in str(error).lower():
            raise
        raise KeyboardInterrupt from None
    except duckdb.Error as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"bad SQL: {first}") from None
    if args.format == "json":
        print(json.dumps([dict(zip(columns, row)) for row in rows], indent=1, default=str))
    elif args.format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        print(buffer.getvalue(), end="")
    else:
        def cell(value: Any) -> str:
            if value is None:
                return "NULL"
            return f"{value:.6g}" if isinstance(value, float) else str(value)

        print(_format_table(list(columns), [[cell(v) for v in row] for row in rows]))
        print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return 0


COMMANDS = {"reproduce": cmd_reproduce, "run": cmd_run, "report": cmd_report, "list": cmd_list, "analyze": cmd_analyze,
            "patch": cmd_patch, "ablate": cmd_ablate, "check": cmd_check, "lm": cmd_lm, "sweep": cmd_sweep,
            "query": cmd_query, "forecast": cmd_forecast}


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``kill``), raised in the main thread by the console command so that a run stops
    as it does on Ctrl-C: workers stopped, files closed, one line. Workers have their own handler
    (``train.execute.WorkerStopped``)."""


def terminated() -> Terminated:
    """The console command's SIGTERM stop (``entry``), remembered: a library that catches the exception where
    it arrives and raises its own KeyboardInterrupt (Ray's ``ray.wait``) hid that it was a SIGTERM, and the
    command said "interrupted" and exited 130 instead of 143."""
    TERMINATED.append(signal.SIGTERM)
    return Terminated()


TERMINATED: list[int] = []  # SIGTERMs the console command received (terminated)


RESUMABLE = ("run", "sweep", "reproduce", "lm")  # commands whose work a re-run continues


def main(argv: Sequence[str] | None = None) -> int:
    args = None
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as done:  # --version, --help
            return done.code if isinstance(done.code, int) else 0
        return COMMANDS[args.command](args)
    except (ConfigError, RunLockedError, CorruptFileError) as error:
        message = str(error).replace("\r", "\\r").replace("\n", "\\n")  # one line, whatever a path holds
        print(f"emergelab: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (Terminated)
        resume = "; re-run the same command to resume" if args is None or args.command in RESUMABLE else ""
        by_sigterm = isinstance(stop, Terminated) or bool(TERMINATED)
        print(f"emergelab: {'terminated' if by_sigterm else 'interrupted'}{resume}", file=sys.stderr)
        return 128 + signal.SIGTERM if by_sigterm else 130
    except BrokenPipeError:  # the reader left early (`emergelab list | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail again
        return 128 + signal.SIGPIPE
    except OSError as error:
        if error.filename is None or error.errno is None:  # not about a path the user gave: a bug, shown whole
            raise
        # a file the user's paths lead to that cannot be read or written (permissions, a folder where a
        # file belongs, a full disk): the path and the reason, in one line
        where = str(error.filename).replace("\n", "\\n")
        print(f"emergelab: error: {where}: {error.strerror or error}", file=sys.stderr)
        return 2


def entry() -> None:
    """The ``emergelab`` command: ``main()``, then the exit handlers, then leave without the interpreter's
    native teardown. Arrow's thread pools can still be alive when the interpreter tears down, and that
    teardown then aborts a finished run ("terminate called without an active exception", exit -6;
    apache/arrow#34314): seen here in about 1 in 6 CLI runs on a loaded machine. Everything a run writes
    is closed (atomically renamed) before ``main`` returns."""
    from .train.stopping import deferring

    # both raised where the main thread is, but held back while a tracker sends a step (train/stopping.py)
    signal.signal(signal.SIGTERM, deferring(terminated))
    signal.signal(signal.SIGINT, deferring(KeyboardInterrupt))
    code = main()
    atexit._run_exitfuncs()  # multiprocessing's, tqdm's, logging's, trackers': what a normal exit runs first
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
