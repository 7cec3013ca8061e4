"""The ``emergelab`` command. Thin: parses arguments, calls the library, prints.

Every bad input exits with code 2 and one line naming the field and what is allowed, before any work.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .config import ConfigError, field_names, number_from_text, parse_override
from .store.locks import RunLockedError


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


def _float(text: str) -> float:
    """A finite real flag (``0.9``, ``5e-2``)."""
    value = number_from_text(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(text)
    return float(value)


_float.__name__ = "float"


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
    run.add_argument("--device", help="cpu | cuda | cuda:N (execution.device)")
    run.add_argument("--strategy", help="auto | ensemble | workers (execution.strategy)")
    run.add_argument("--out", type=Path, help="run directory (default runs/TASK-HASH); re-run to resume")
    run.add_argument("--no-figures", action="store_true", help="skip drawing figures")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    report = sub.add_parser("report", help="redraw the figures of a run directory")
    report.add_argument("run_dir", type=Path)

    analyze = sub.add_parser("analyze", help="emergence steps per seed and output, statistics per config, "
                                             "head attribution; tables and figures")
    analyze.add_argument("paths", nargs="+", type=Path, metavar="RUN_OR_DIR",
                         help="run directories, or folders searched for runs")
    analyze.add_argument("--by", help="comma-separated config fields that define a config, e.g. "
                                      "task.sparsity,model.heads (default: every field that differs)")
    analyze.add_argument("--out", type=Path, help="output folder (default: RUN/analysis for one run, "
                                                  "else ./analysis)")
    analyze.add_argument("--solved-tol", type=_float, default=0.05,
                         help="a seed is solved when its final loss is within this many nats of the optimum "
                              "(or every output emerged); default 0.05")
    analyze.add_argument("--vs", help="config field for the plateau-scaling figure (default: the first --by "
                                      "field with >= 2 positive values)")

    patch = sub.add_parser("patch", help="patch each head's attention from a late checkpoint into an early "
                                         "one; table, greedy head set and figures")
    patch.add_argument("run_dir", type=Path, metavar="RUN")
    patch.add_argument("--early", type=_int, required=True, metavar="STEP",
                       help="checkpoint before emergence (the nearest saved one is used)")
    patch.add_argument("--late", type=_int, required=True, metavar="STEP",
                       help="checkpoint after emergence (the nearest saved one is used)")
    patch.add_argument("--seed", type=_int, default=0, help="run seed index (default 0)")
    patch.add_argument("--what", choices=("pattern", "scores"), default="pattern",
                       help="patch the post-softmax pattern (default) or the pre-softmax scores")
    patch.add_argument("--fraction", type=_float, default=0.9,
                       help="greedy search stops once this fraction of late - early is recovered (default 0.9)")
    patch.add_argument("--batch", type=_int, help="held-out sequences (default train.eval_batch_size)")
    patch.add_argument("--device", default="cpu", help="device to evaluate on (default cpu)")
    patch.add_argument("--out", type=Path, help="output folder (default RUN/patching)")

    sub.add_parser("list", help="list tasks and their fields, models and presets")
    return parser


def experiment_from_args(args: argparse.Namespace) -> Any:
    """The ExperimentConfig that ``emergelab run`` arguments describe (validated, nothing run)."""
    from .presets import preset_dict
    from .tasks import TASKS
    from .train import ExperimentConfig

    if args.task not in TASKS:
        raise ConfigError(f"unknown task {args.task!r}: allowed tasks are {', '.join(TASKS)}")
    data: dict[str, dict[str, Any]] = {"task": {"name": args.task}, "model": {}, "train": {}, "execution": {}}
    if args.preset:
        preset = preset_dict(args.preset)
        if preset["task"]["name"] != args.task:
            raise ConfigError(f"--preset {args.preset} is for task {preset['task']['name']}, not {args.task}")
        for section in data:
            data[section].update(preset.get(section, {}))
    for text in args.overrides:
        section, name, value = parse_override(text)
        if section == "task" and name == "name":
            raise ConfigError("--set task.name: choose the task with the positional TASK argument")
        data[section][name] = value
    for flag, section in (("seeds", "train"), ("steps", "train"), ("device", "execution"), ("strategy", "execution")):
        if getattr(args, flag) is not None:
            data[section][flag] = getattr(args, flag)
    return ExperimentConfig.from_dict(data)


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
    except OSError as error:  # e.g. a name too long, or a path through an unreadable folder
        raise ConfigError(f"{flag} {out}: {error.strerror or error}; choose another path") from None


def cmd_run(args: argparse.Namespace) -> int:
    from .store import RunDir
    from .train import train
    from .train.run import check_existing
    from .train.estimate import (WARN_HOURS, check_device, check_fits, estimate_run, format_bytes,
                                 format_seconds, available_bytes)

    config = experiment_from_args(args)
    device = check_device("execution.device", config.execution.device)
    config = config.resolved()
    out = args.out or Path("runs") / f"{config.task_name}-{config.science_key()}"
    check_out_dir(out)
    check_existing(config, out)
    finished = RunDir(out).is_complete()
    if not finished:
        estimate = estimate_run(config)
        check_fits(estimate, device)
    print(f"run directory: {out}")
    if not finished:
        print(f"estimate: about {format_seconds(estimate.seconds)} ({estimate.flops / 1e9:.3g} GFLOP at "
              f"~{estimate.notes['rate']}), peak memory about {format_bytes(estimate.peak_bytes)} of "
              f"{format_bytes(available_bytes(device))} available")
        if estimate.seconds > WARN_HOURS * 3600:
            print(f"emergelab: warning: this run will take about {format_seconds(estimate.seconds)}; "
                  "fewer train.steps / train.seeds or a smaller model run faster", file=sys.stderr)
    run = train(config, out, progress=not args.quiet, log=print)
    if not args.no_figures:
        from .report import make_figures

        make_figures(run)
    print_summary(run)
    return 0


def print_summary(run: Any) -> None:
    """The run's ``summary.json`` as a table: final loss against the optimum, and each output's
    emergence step (the detector of ``analysis.emergence``; ``-``: not yet)."""
    summary = run.summary()
    optimum = summary.get("optimal_loss")
    opt_text = f"{optimum:.4f}" if optimum is not None else "n/a"
    print(f"\n{summary['task']}: {summary['steps']} steps; optimal loss {opt_text}")
    print(f"{'seed':>4}  {'final loss':>10}  {'- optimum':>9}  step at which each output emerged")
    for seed, info in summary["seeds"].items():
        gap = f"{info['final_loss'] - optimum:+.4f}" if optimum is not None else "n/a"
        learned = " ".join("-" if s is None else str(s) for s in info["learned_step"].values())
        print(f"{seed:>4}  {info['final_loss']:>10.4f}  {gap:>9}  {learned}")
    figures = sorted(run.figures_dir.glob("*.png")) if run.figures_dir.exists() else []
    if figures:
        print("figures: " + ", ".join(str(f) for f in figures))


def cmd_report(args: argparse.Namespace) -> int:
    from .report import make_figures
    from .store import RunDir

    run = RunDir(args.run_dir)
    if not run.config_path.exists():
        raise ConfigError(f"{args.run_dir}: not a run directory (no config.yaml)")
    if not run.metrics_path.exists():
        raise ConfigError(f"{args.run_dir}: the run has no metrics.parquet yet; finish it with `emergelab run`")
    for path in make_figures(run):
        print(path)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis.heads import attribute_heads, head_rows
    from .analysis.runs import analyze_runs
    from .report.analysis_figures import make_analysis_figures
    from .report.tables import format_groups, format_positions, write_tables
    from .store import connect, find_runs

    for path in args.paths:
        if not path.exists():
            raise ConfigError(f"{path}: no such file or directory")
    if args.out is not None:
        check_out_dir(args.out, run=False)
    runs = [run for path in args.paths for run in find_runs(path)]
    if not runs:
        raise ConfigError(f"no finished runs (metrics.parquet + config.yaml) at or below "
                          f"{', '.join(map(str, args.paths))}")
    by = [f.strip() for f in args.by.split(",") if f.strip()] if args.by else None
    con = connect(args.paths)
    result = analyze_runs(con, by=by, solved_tol=args.solved_tol)
    if args.vs and args.vs not in result.groups.column_names:
        raise ConfigError(f"--vs {args.vs}: not one of the --by fields ({', '.join(result.by) or 'none'})")
    single = len(args.paths) == 1 and len({str(r.path.resolve()) for r in runs}) == 1
    out = args.out or (runs[0].path / "analysis" if single else Path("analysis"))
    heads = attribute_heads(con, emergence=(result.curves, result.jumps))
    print(f"{len(runs)} run(s), {result.seeds.num_rows} seed(s); configs by "
          f"{', '.join(result.by) or '(all runs together)'}")
    print(format_groups(result))
    print()
    print(format_positions(result))
    paths = write_tables(result, out, {"heads": heads, "head_rows": head_rows(con)})
    paths += make_analysis_figures(result, out, vs=args.vs)
    print(f"\nwrote {len(paths)} files to {out}: " + ", ".join(p.name for p in paths if p.suffix != ".csv"))
    return 0


def cmd_patch(args: argparse.Namespace) -> int:
    from .interventions.checkpoints import patch_checkpoints, write_patching
    from .report.patch_figures import write_patching_figures
    from .train.estimate import check_device

    check_device("--device", args.device)
    if args.out is not None:
        check_out_dir(args.out, run=False)

    result = patch_checkpoints(args.run_dir, args.early, args.late, args.seed, what=args.what,
                               fraction=args.fraction, batch=args.batch, device=args.device)
    for note in result.notes:
        print(f"note: {note}")
    print(result.format())
    paths = write_patching(result, args.out) + write_patching_figures(result, args.out)
    print(f"wrote {len(paths)} files to {paths[0].parent}: " + ", ".join(p.name for p in paths))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .models import MODELS
    from .presets import PRESETS
    from .tasks import TASKS
    from .train import ExecutionConfig, TrainConfig

    def fields(cls: type) -> str:
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        return ", ".join(f"{name}={defaults[name]!r}" for name in field_names(cls))

    print("tasks:")
    for name, cls in TASKS.items():
        print(f"  {name}\n    task.* fields: {fields(cls)}")
    print("models (model.name):")
    for name, cls in MODELS.items():
        print(f"  {name}\n    model.* fields: {fields(cls)}")
    print(f"training:\n    train.* fields: {fields(TrainConfig)}")
    print(f"execution (never changes the numbers):\n    execution.* fields: {fields(ExecutionConfig)}")
    print("presets:")
    for name, preset in PRESETS.items():
        print(f"  {name} ({preset['task']['name']}): {preset['description']}")
    return 0


COMMANDS = {"run": cmd_run, "report": cmd_report, "list": cmd_list}
COMMANDS["analyze"] = cmd_analyze
COMMANDS["patch"] = cmd_patch


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as done:  # --version, --help
            return done.code if isinstance(done.code, int) else 0
        return COMMANDS[args.command](args)
    except (ConfigError, RunLockedError) as error:
        message = str(error).replace("\r", "\\r").replace("\n", "\\n")  # one line, whatever a path holds
        print(f"emergelab: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emergelab: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
