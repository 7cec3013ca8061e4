"""The figure of docs/results.md, "Copies": does a copied bit speed up the search for the other bits?

    python examples/copies_figure.py runs/copies-width runs/copies-layers --out copies.png

Each DIR is a sweep of ``examples/copies-width.yaml`` / ``copies-layers.yaml`` (A as drawn, and with
``task.rows: distinct``, which redraws only a copied row). For every config and every seed that has a copy,
one point: x = the step of the first bit learned without the copy (``rows: distinct``), y = the step of the
first bit other than the copy learned with it (``first_step_no_copies``); a seed that learned none in the
run is drawn at the run's end (a lower bound). Below the diagonal: the copy came with an earlier start.
A seed without a copy has the same A, and so the same run, in both arms (not drawn).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from emergelab.analysis.runs import analyze_runs  # noqa: E402
from emergelab.store import connect  # noqa: E402


def pairs(sweep: Path) -> list[tuple[float, float, float]]:
    """(without, with, run length) per (config, seed with a copy) of one sweep directory."""
    con = connect(sweep)
    try:
        result = analyze_runs(con, n_boot=10)
        cursor = con.sql("SELECT * FROM runs")
        names = cursor.columns
        runs = [dict(zip(names, row)) for row in cursor.fetchall()]
    finally:
        con.close()
    # a config without its rows setting (and execution knobs): the two arms of one config share it
    key_of = {r["run"]: tuple(sorted((k, str(v)) for k, v in r.items() if k not in ("run", "task.rows")
                                     and not k.startswith(("execution.", "emergelab."))))
              for r in runs}
    rows_of = {r["run"]: r.get("task.rows") or "independent" for r in runs}
    arm: dict = {}
    for r in result.seeds.to_pylist():
        arm.setdefault((key_of[r["run"]], r["seed"]), {})[rows_of[r["run"]]] = r
    out = []
    for both in arm.values():
        a, b = both.get("independent"), both.get("distinct")
        if a is None or b is None or not a["n_copies"]:
            continue
        end = a["last_step"]
        out.append((b["first_step"] if b["first_step"] is not None else end,
                    a["first_step_no_copies"] if a["first_step_no_copies"] is not None else end, end))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweeps", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    formats = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if args.out.suffix.lstrip(".").lower() not in formats:
        raise SystemExit(f"--out {args.out}: the name must end in one of {', '.join('.' + f for f in sorted(formats))}")
    fig, ax = plt.subplots(figsize=(5.2, 5))
    end = 0.0
    for sweep, marker in zip(args.sweeps, "os^D"):
        if not sweep.is_dir():
            what = "not a directory" if sweep.exists() else "no such directory"
            raise SystemExit(f"{sweep}: {what} (give a sweep directory of examples/copies-width.yaml, say)")
        try:
            p = pairs(sweep)
        except FileNotFoundError:
            raise SystemExit(f"{sweep}: no finished runs (metrics.parquet + config.yaml) in it") from None
        if not p:
            raise SystemExit(f"{sweep}: no seed with a copy in both arms (task.rows independent and distinct)")
        x, y, ends = zip(*p)
        end = max(end, *ends)
        earlier = sum(b < a for a, b, _ in p)
        later = sum(b > a for a, b, _ in p)
        neither = sum(a == b == e for a, b, e in p)
        same = sum(a == b < e for a, b, e in p)
        ax.scatter(x, y, marker=marker, alpha=0.6, s=36,
                   label=f"{sweep.name}: {len(p)} (config, seed with a copy)\n  earlier with the copy {earlier}, "
                         f"later {later}{f', same step {same}' if same else ''},\n  none learned either way {neither} (top right)")
    ax.plot([0, end * 1.05], [0, end * 1.05], color="gray", lw=0.8, ls="--")
    ax.axhline(end, color="gray", lw=0.5, ls=":")
    ax.axvline(end, color="gray", lw=0.5, ls=":")
    ax.set_xlim(0, end * 1.05)
    ax.set_ylim(0, end * 1.05)
    ax.set_xlabel("first bit learned without the copy (rows: distinct), step")
    ax.set_ylabel("first other bit learned with the copy, step")
    ax.set_title(f"copy seeds: first non-copy bit with vs without the copy\n(dotted: the run's end, {end:g} steps: none learned)",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
