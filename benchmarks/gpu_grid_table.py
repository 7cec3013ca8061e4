"""The tables of docs/results.md's paper-scale S = 16 grid, from ``gpu_grid.py --results`` folders.

    python benchmarks/gpu_grid_table.py DIR [DIR ...] [--out grid_tables.json]

Each DIR holds a ``grid_summary.json`` (one entry per sparsity; a sparsity found in an earlier DIR is not
read again). Per seed the summary gives each bit's ``learned_step`` (null: not learned within the run;
"learned" = its loss halfway from its plateau to its optimum) and, where recorded, its ``fan_in``: the
fewest tokens it is the XOR of, through up to two earlier outputs (``tasks.shortcut_fan_in``; 1 = a copy
of an earlier output, two equal rows of A). Printed, as Markdown:

1. per sparsity: seeds that learned any bit, seeds that learned all 16, bits learned per seed, the step a
   bit is learned (median, 10%-90% over every learned bit), the final loss (median over seeds);
2. per sparsity with ``fan_in``: seeds with a copy (and the number expected of independent rows,
   ``64 * (1 - prod_{i<S} (1 - i / C(S, s)))``), copies learned, fan-in-3 and fan-in >= 5 bits learned
   (bit 0 apart), bit 0;
3. per sparsity with seeds both with and without a copy: how many of each learn another bit (not a copy),
   their fan-in-3 bits learned, the mean fan-in-3 bits a seed, and Fisher's exact test on the seeds
   (``analysis.seeds.fisher_exact``).

Writes the same numbers as JSON (atomic) with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from emergelab.analysis.seeds import fisher_exact
from emergelab.store import write_text


def load(dirs: list[Path]) -> dict[int, dict]:
    """sparsity -> the run's summary (``state_size``, ``seeds``), the first DIR that finished it winning."""
    runs: dict[int, dict] = {}
    for folder in dirs:
        path = folder / "grid_summary.json"
        if not path.is_file():
            raise SystemExit(f"{folder}: no grid_summary.json (a `gpu_grid.py --results` folder)")
        for row in json.loads(path.read_text()):
            if "summary" in row and row["sparsity"] not in runs:
                runs[row["sparsity"]] = row["summary"]
    if not runs:
        raise SystemExit(f"no finished run in {', '.join(map(str, dirs))}")
    return runs


def expected_copy_seeds(state_size: int, sparsity: int, seeds: int) -> float:
    """Seeds of ``seeds`` expected to have two equal rows among S independent rows of s ones each."""
    rows = math.comb(state_size, sparsity)
    return seeds * (1 - math.prod(1 - i / rows for i in range(state_size)))


def _steps(values: list) -> list[float]:
    return [float(v) for v in values if v is not None]


def sparsity_row(sparsity: int, summary: dict) -> dict:
    """Table 1's numbers for one run."""
    seeds = summary["seeds"].values()
    steps = _steps(s for seed in seeds for s in seed["learned_step"].values())
    q10, q50, q90 = np.percentile(steps, [10, 50, 90]) if steps else (None,) * 3
    return {"s": sparsity, "seeds": len(seeds), "learned_any": sum(seed["n_learned"] > 0 for seed in seeds),
            "learned_all": sum(bool(seed["all_learned"]) for seed in seeds),
            "bits_per_seed": float(np.mean([seed["n_learned"] for seed in seeds])),
            "step_median": None if q50 is None else float(q50), "step_q10": None if q10 is None else float(q10),
            "step_q90": None if q90 is None else float(q90),
            "final_loss_median": float(np.median([seed["final_loss"] for seed in seeds]))}


def fan_in_row(sparsity: int, summary: dict, state_size: int) -> dict | None:
    """Tables 2 and 3's numbers for one run (None without ``fan_in``)."""
    seeds = list(summary["seeds"].values())
    if not all("fan_in" in seed for seed in seeds):
        return None
    by_fan: dict[str, list[float | None]] = {"copy": [], "3": [], ">=5": [], "2_or_4": []}
    bit0, with_copy, without = [], [], []
    for seed in seeds:
        fan, learned = seed["fan_in"], seed["learned_step"]
        bit0.append(learned["0"])
        has_copy = any(f == 1 for f in fan.values())
        others = _steps(learned[b] for b, f in fan.items() if f != 1)
        entry = {"learns_other": bool(others), "first_other": min(others) if others else None,
                 "fan3": sum(f == 3 for b, f in fan.items() if b != "0"),
                 "fan3_learned": sum(f == 3 and learned[b] is not None for b, f in fan.items() if b != "0")}
        (with_copy if has_copy else without).append(entry)
        for b, f in fan.items():
            if b == "0":
                continue
            by_fan["copy" if f == 1 else "3" if f == 3 else ">=5" if f >= 5 else "2_or_4"].append(learned[b])

    def learned(values: list) -> dict:
        steps = _steps(values)
        return {"learned": len(steps), "of": len(values), "first": min(steps, default=None),
                "last": max(steps, default=None)}

    def group(entries: list[dict]) -> dict:
        firsts = _steps(e["first_other"] for e in entries)
        return {"seeds": len(entries), "learn_other": sum(e["learns_other"] for e in entries),
                "first_other": sorted(firsts), "first_other_median": float(np.median(firsts)) if firsts else None,
                "fan3_learned": sum(e["fan3_learned"] for e in entries), "fan3": sum(e["fan3"] for e in entries),
                "fan3_per_seed": float(np.mean([e["fan3"] for e in entries])) if entries else None}

    row = {"s": sparsity, "copy_seeds": len(with_copy),
           "copy_seeds_expected": expected_copy_seeds(state_size, sparsity, len(seeds)),
           "learned_any": sum(seed["n_learned"] > 0 for seed in seeds),
           **{f"bits_{k}": learned(v) for k, v in by_fan.items()}, "bit0_learned": len(_steps(bit0)),
           "final_loss_median": float(np.median([seed["final_loss"] for seed in seeds])),
           "with_copy": group(with_copy), "without_copy": group(without), "fisher_p": None}
    if with_copy and without:
        a, c = row["with_copy"]["learn_other"], row["without_copy"]["learn_other"]
        row["fisher_p"] = fisher_exact([[a, len(with_copy) - a], [c, len(without) - c]])
    return row


def _n(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _bits(entry: dict) -> str:
    if not entry["of"]:
        return "-"
    where = "" if not entry["learned"] else (f", at {_n(entry['first'])}" if entry["first"] == entry["last"]
                                           else f", at {_n(entry['first'])}-{_n(entry['last'])}")
    return f"{entry['learned']} of {entry['of']}{where}"


def markdown(rows: list[dict], fans: list[dict]) -> str:
    lines = ["| s | seeds that learned any bit | seeds that learned all 16 | bits learned per seed (mean) | "
             "step a bit is learned: median (10%-90%) | final loss, median |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['s']} | {r['learned_any']}/{r['seeds']} | {r['learned_all']}/{r['seeds']} | "
                     f"{r['bits_per_seed']:.2f} | {_n(r['step_median'], 1)} ({_n(r['step_q10'])}-{_n(r['step_q90'])}) | "
                     f"{r['final_loss_median']:.3f} |")
    if fans:
        lines += ["", "| s | seeds with a copy (expected) | seeds that learned a bit | copies learned | "
                  "fan-in-3 bits learned | fan-in >= 5 learned (bit 0 apart) | bit 0 learned | final loss, median |",
                  "|---|---|---|---|---|---|---|---|"]
        for f in fans:
            lines.append(f"| {f['s']} | {f['copy_seeds']} ({f['copy_seeds_expected']:.1f}) | {f['learned_any']} | "
                         f"{_bits(f['bits_copy'])} | {_bits(f['bits_3'])} | {_bits(f['bits_>=5'])} | "
                         f"{f['bit0_learned']} | {f['final_loss_median']:.3f} |")
        lines += [f"(s = {f['s']}: besides, fan-in 2 or 4 bits learned: {_bits(f['bits_2_or_4'])})"
                  for f in fans if f["bits_2_or_4"]["of"]]
        both = [f for f in fans if f["fisher_p"] is not None]
        if both:
            lines += ["", "| s | with a copy: learn another bit (first, median) | their fan-in-3 bits learned "
                      "(a seed: mean) | without: learn another bit (first) | their fan-in-3 bits learned (a seed: "
                      "mean) | Fisher's exact p |", "|---|---|---|---|---|---|"]
            for f in both:
                w, o = f["with_copy"], f["without_copy"]
                lines.append(f"| {f['s']} | {w['learn_other']} of {w['seeds']} ({_n(w['first_other_median'])}) | "
                             f"{w['fan3_learned']} of {w['fan3']} ({_n(w['fan3_per_seed'], 2)}) | "
                             f"{o['learn_other']} of {o['seeds']} ({', '.join(_n(v) for v in o['first_other']) or '-'}) | "
                             f"{o['fan3_learned']} of {o['fan3']} ({_n(o['fan3_per_seed'], 2)}) | {f['fisher_p']:.2g} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help="also write the numbers as JSON here")
    args = parser.parse_args()
    runs = load(args.dirs)
    rows = [sparsity_row(s, runs[s]) for s in sorted(runs)]
    fans = [f for f in (fan_in_row(s, runs[s], len(runs[s]["output_labels"])) for s in sorted(runs)) if f]
    print(markdown(rows, fans))
    if args.out:
        write_text(args.out, json.dumps({"sparsities": rows, "fan_in": fans}, indent=1) + "\n")


if __name__ == "__main__":
    main()
