"""The ``emergelab`` command. Thin: parses arguments, calls the library, prints.

Every bad input exits with code 2 and one line naming the field and what is allowed, before any work;
so does a damaged file of a run directory (one line: the file, the damage, what to do).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import ConfigError, field_names, parse_override
from .store.locks import RunLockedError
from .store.verify import CorruptFileError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="emergelab", description="Train many seeds on tasks with known attention and "
                                                   "watch capabilities emerge.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="train N seeds of a task, write the run directory and its figures")
    run.add_argument("task", help="task name (see `emergelab list`)")
    run.add_argument("--preset", help="start from a named preset (see `emergelab list`)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field, e.g. --set task.sparsity=3 (repeatable)")
    run.add_argument("--seeds", type=int, help="number of seeds (train.seeds)")
    run.add_argument("--steps", type=int, help="optimizer steps (train.steps)")
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
                                      "task.sparsity,model.heads; every other field that differs between "
                                      "runs defines configs too unless pooled (default: every field that differs)")
    analyze.add_argument("--pool", metavar="FIELD,...", help="comma-separated fields whose values are pooled "
                                                            "into one config (a line names them and their values)")
    analyze.add_argument("--pool-rest", action="store_true",
                         help="pool every field that differs but is not in --by")
    analyze.add_argument("--out", type=Path, help="output folder (default: RUN/analysis for one run, "
                                                  "else ./analysis)")
    analyze.add_argument("--solved-tol", type=float, default=0.05,
                         help="a seed is solved when every output emerged (per-output optima); only for runs "
                              "without recorded per-output optima: when its final loss is within this many "
                              "nats of the optimum; default 0.05")
    analyze.add_argument("--vs", help="config field for the plateau-scaling figure (default: the first --by "
                                      "field with >= 2 positive values)")

    patch = sub.add_parser("patch", help="patch each head's attention from a late checkpoint into an early "
                                         "one; table, greedy head set and figures")
    patch.add_argument("run_dir", type=Path, metavar="RUN")
    patch.add_argument("--early", type=int, required=True, metavar="STEP",
                       help="checkpoint before emergence (the nearest saved one is used)")
    patch.add_argument("--late", type=int, required=True, metavar="STEP",
                       help="checkpoint after emergence (the nearest saved one is used)")
    patch.add_argument("--seed", type=int, default=0, help="run seed index (default 0)")
    patch.add_argument("--what", choices=("pattern", "scores"), default="pattern",
                       help="patch the post-softmax pattern (default) or the pre-softmax scores")
    patch.add_argument("--fraction", type=float, default=0.9,
                       help="greedy search stops once this fraction of late - early is recovered (default 0.9)")
    patch.add_argument("--batch", type=int, help="held-out sequences (default train.eval_batch_size)")
    patch.add_argument("--device", default="cpu", help="device to evaluate on (default cpu)")
    patch.add_argument("--out", type=Path, help="output folder (default RUN/patching)")

    check = sub.add_parser("check", help="verify every file of run directories (checksums, structure); "
                                         "exit 0 when all are intact, 2 otherwise")
    check.add_argument("paths", nargs="+", type=Path, metavar="RUN_OR_DIR",
                       help="run directories, or folders searched for runs")

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


def cmd_run(args: argparse.Namespace) -> int:
    config = experiment_from_args(args)
    if config.execution.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"execution.device={config.execution.device!r}: CUDA is not available here; use cpu")
    from .train import train

    out = args.out or Path("runs") / f"{config.task_name}-{config.science_key()}"
    print(f"run directory: {out}")
    run = train(config, out, progress=not args.quiet)
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
        if run.manifest.path.exists():
            raise CorruptFileError(run.config_path, "missing (the run's manifest.jsonl records it)",
                                   "it cannot be rebuilt: restore it from a backup")
        raise ConfigError(f"{args.run_dir}: not a run directory (no config.yaml)")
    if not run.metrics_path.exists():
        if run.summary_path.exists() or run.manifest.expected(run.metrics_path) is not None:
            run.verify_metrics()  # raises: missing from a finished run
        raise ConfigError(f"{args.run_dir}: the run has no metrics.parquet yet; finish it with `emergelab run`")
    for path in make_figures(run):
        print(path)
    _fail_on_problems(run.path)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis.heads import attribute_heads, head_rows
    from .analysis.runs import analyze_runs
    from .report.analysis_figures import make_analysis_figures
    from .report.analysis_figures import numeric_fields
    from .report.tables import format_groups, format_plateau_scaling, format_pooling, format_positions, write_tables
    from .store import RunDir, connect
    from .store.query import finished_run_dirs

    for path in args.paths:
        if not path.exists():
            raise ConfigError(f"{path}: no such file or directory")
    by = [f.strip() for f in args.by.split(",") if f.strip()] if args.by else None
    pool = [f.strip() for f in args.pool.split(",") if f.strip()] if args.pool else None
    try:
        con = connect(args.paths)  # damaged runs are left out with a warning
    except FileNotFoundError:
        raise ConfigError(f"no finished runs (metrics.parquet + config.yaml) at or below "
                          f"{', '.join(map(str, args.paths))}") from None
    runs = [RunDir(row[0]) for row in con.sql("SELECT run FROM runs ORDER BY run").fetchall()]
    found = {str(r.path.resolve()) for p in args.paths for r in finished_run_dirs(p)}
    result = analyze_runs(con, by=by, pool=pool, pool_rest=args.pool_rest, solved_tol=args.solved_tol)
    if args.vs and args.vs not in result.groups.column_names:
        raise ConfigError(f"--vs {args.vs}: not one of the --by fields ({', '.join(result.by) or 'none'})")
    single = len(args.paths) == 1 and len(found) == 1
    out = args.out or (runs[0].path / "analysis" if single else Path("analysis"))
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
    print(format_positions(result))
    paths = write_tables(result, out, {"heads": heads, "head_rows": head_rows(con)})
    paths += make_analysis_figures(result, out, vs=args.vs)
    print(f"\nwrote {len(paths)} files to {out}: " + ", ".join(p.name for p in paths if p.suffix != ".csv"))
    return 0


def cmd_patch(args: argparse.Namespace) -> int:
    from .interventions.checkpoints import patch_checkpoints, write_patching
    from .report.patch_figures import write_patching_figures

    result = patch_checkpoints(args.run_dir, args.early, args.late, args.seed, what=args.what,
                               fraction=args.fraction, batch=args.batch, device=args.device)
    for note in result.notes:
        print(f"note: {note}")
    print(result.format())
    paths = write_patching(result, args.out) + write_patching_figures(result, args.out)
    print(f"wrote {len(paths)} files to {paths[0].parent}: " + ", ".join(p.name for p in paths))
    return 0


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
    total, damaged = 0, 0
    for root in roots:
        problems, notes = check_run(root)
        run = RunDir(root)
        if run.config_path.exists() and not any(p.path == run.config_path for p in problems):
            try:
                ExperimentConfig.from_run(run)
            except (ConfigError, CorruptFileError) as error:
                problems.append(Problem(run.config_path, f"not a valid config ({error})"))
        for note in notes:
            print(f"note: {note}")
        for problem in problems:
            print(problem)
        total += len(problems)
        damaged += bool(problems)
    if total:
        print(f"checked {len(roots)} run(s): {total} problem(s) in {damaged} run(s)")
        return 2
    print(f"checked {len(roots)} run(s): every file is intact")
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
COMMANDS["check"] = cmd_check


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except (ConfigError, RunLockedError, CorruptFileError) as error:
        print(f"emergelab: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emergelab: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
