"""Seed by seed: a linear map with A's rows as drawn against the same seeds with equal rows drawn again.

    python benchmarks/copy_pairs.py SWEEP_DIR [--out copy_pairs.json]

SWEEP_DIR holds two finished runs of the linear map that differ only in ``task.rows`` (``independent``:
the paper's task, where two rows of A can be equal, so a bit copies an earlier output; ``distinct``: equal
rows drawn again, every other row unchanged), e.g. ``examples/linear-map-S16-copies.yaml``. Each seed has
the same A in both runs unless its A had a copy, so the pair isolates the copy. From each run's
``summary.json`` (per bit ``learned_step``, null when not learned, and ``fan_in``, 1 for a copy), per seed:
whether A had a copy, and in each run the bits learned that are not copies and the first step one was, and
the fan-in-3 bits besides the copied ones (the same unless a shortcut ran through the copied output).
Printed, as Markdown: the seeds with a copy, each in both runs; then, over them, how many learn another bit
with the copy and how many without, and the exact McNemar test on those pairs
(``analysis.seeds.mcnemar_exact``); and whether every seed without a copy ran bit for bit the same in both
(same final loss, same steps: the task's guarantee that only the redrawn rows change).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from emergelab.analysis.seeds import mcnemar_exact
from emergelab.store import write_text


def _runs(sweep: Path) -> dict[str, dict]:
    """task.rows -> summary.json of the finished runs below ``sweep``."""
    out = {}
    for config in sorted(sweep.rglob("config.yaml")):
        summary = config.parent / "summary.json"
        if not summary.is_file():
            continue
        rows = yaml.safe_load(config.read_text())["task"].get("rows", "independent")
        if rows in out:
            raise SystemExit(f"{sweep}: two finished runs with task.rows={rows}; keep one of each")
        out[rows] = json.loads(summary.read_text())
    if set(out) != {"independent", "distinct"}:
        raise SystemExit(f"{sweep}: needs one finished run with task.rows=independent and one with distinct, "
                         f"found {sorted(out) or 'none'}")
    return out


def seed_bits(seed: dict) -> dict:
    """One seed of a summary: ``copy`` (a bit with fan-in 1), the learned bits that are not copies
    (``others``: bit -> step) and ``first`` (the earliest of them, None if none)."""
    fan, learned = seed["fan_in"], seed["learned_step"]
    others = {int(b): float(s) for b, s in learned.items() if s is not None and fan[b] != 1}
    return {"copy": any(f == 1 for f in fan.values()), "others": others, "first": min(others.values(), default=None)}


def pairs(runs: dict[str, dict]) -> dict:
    """The per-seed pairs and the statistics the module describes."""
    drawn, redrawn = runs["independent"]["seeds"], runs["distinct"]["seeds"]
    rows, same = [], []
    for key in sorted(drawn, key=int):
        a, b = seed_bits(drawn[key]), seed_bits(redrawn[key])
        if a["copy"]:
            # the other bits' shortcuts: the same unless they ran through the copied output
            copied = {bit for bit, f in drawn[key]["fan_in"].items() if f == 1}
            fan3 = [sum(f == 3 for bit, f in run[key]["fan_in"].items() if bit not in copied and bit != "0")
                    for run in (drawn, redrawn)]
            rows.append({"seed": int(key), "with_copy": {**a, "fan3": fan3[0]},
                         "without_copy": {**b, "fan3": fan3[1]}})
        else:  # the same A in both runs: the same numbers
            same.append(drawn[key]["final_loss"] == redrawn[key]["final_loss"]
                        and drawn[key]["learned_step"] == redrawn[key]["learned_step"])
    only_with = sum(bool(r["with_copy"]["others"]) and not r["without_copy"]["others"] for r in rows)
    only_without = sum(not r["with_copy"]["others"] and bool(r["without_copy"]["others"]) for r in rows)
    return {"seeds": len(drawn), "copy_seeds": rows,
            "learn_other_with_copy": sum(bool(r["with_copy"]["others"]) for r in rows),
            "learn_other_without_copy": sum(bool(r["without_copy"]["others"]) for r in rows),
            "only_with_copy": only_with, "only_without_copy": only_without,
            "mcnemar_p": mcnemar_exact(only_with, only_without),
            "seeds_without_copy": len(same), "seeds_without_copy_identical": sum(same)}


def _first(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def markdown(result: dict) -> str:
    lines = ["| seed | with the copy: other bits learned (first at) | copy drawn again: other bits learned (first at) "
             "| fan-in-3 bits besides the copies: with, without |", "|---|---|---|---|"]
    for r in result["copy_seeds"]:
        w, o = r["with_copy"], r["without_copy"]
        lines.append(f"| {r['seed']} | {len(w['others'])} ({_first(w['first'])}) | {len(o['others'])} "
                     f"({_first(o['first'])}) | {w['fan3']}, {o['fan3']} |")
    n = len(result["copy_seeds"])
    lines += ["", f"{n} of {result['seeds']} seeds have a copy; another bit is learned by "
              f"{result['learn_other_with_copy']} of them with the copy and {result['learn_other_without_copy']} "
              f"with it drawn again ({result['only_with_copy']} only with it, {result['only_without_copy']} only "
              f"without; exact McNemar p = {result['mcnemar_p']:.2g}); the {result['seeds_without_copy']} seeds "
              f"without a copy ran the same in both runs: {result['seeds_without_copy_identical']} of them"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--out", type=Path, help="also write the numbers as JSON here")
    args = parser.parse_args()
    result = pairs(_runs(args.sweep))
    print(markdown(result))
    if args.out:
        write_text(args.out, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
