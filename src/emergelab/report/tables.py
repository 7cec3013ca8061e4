"""Text and file output of an emergence analysis (what ``emergelab analyze`` prints and writes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from ..store import atomic_write, write_parquet


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.0f}" if v.is_integer() and abs(v) >= 1 else f"{v:.{digits}g}"
    return str(v)


def _render(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[k]) for r in rows)) if rows else len(h) for k, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def format_groups(result: Any) -> str:
    """One line per config: seeds, solved fraction, emergence step median [IQR], plateau median."""
    header = ["config", "seeds", "solved", "emergence median", "[q25, q75]", "plateau median", "final loss"]
    rows = []
    for g in result.groups.to_pylist():
        iqr = (f"[{_fmt(g['emergence_q25'])}, {_fmt(g['emergence_q75'])}]"
               if g["emergence_q25"] is not None else "-")
        rows.append([g["label"], str(g["n_seeds"]), f"{g['solved_fraction']:.2f}", _fmt(g["emergence_median"]),
                     iqr, _fmt(g["plateau_median"]), _fmt(g["final_loss_median"])])
    return _render(header, rows)


def format_positions(result: Any, max_rows: int = 40) -> str:
    """Per run and seed: the emergence step of the aggregate loss and of every output ("-" = not yet)."""
    c = result.curves.to_pylist()
    per: dict[tuple[str, int], dict[str, Any]] = {}
    for r in c:
        per.setdefault((r["run"], r["seed"]), {})[r["target"]] = _fmt(r["step"]) if r["emerged"] else "-"
    runs = sorted({run for run, _ in per})
    short = {run: Path(run).name for run in runs}
    if len(set(short.values())) < len(runs):
        short = {run: run for run in runs}
    n_pos = max((sum(t.startswith("pos:") for t in v) for v in per.values()), default=0)
    header = ["run", "seed", "loss"] + [str(i) for i in range(n_pos)]
    rows = []
    for (run, seed), targets in sorted(per.items()):
        rows.append([short[run], str(seed), targets.get("loss", "?")] +
                    [targets.get(f"pos:{i}", "") for i in range(n_pos)])
    more = len(rows) - max_rows
    text = _render(header, rows[:max_rows])
    if more > 0:
        text += f"\n... {more} more rows (see seeds.csv / curves.csv)"
    return ("emergence step per output (columns 0..: loss_pos[i]; '-' = not yet)\n") + text


def write_tables(result: Any, out: str | Path, extra: dict[str, pa.Table] | None = None) -> list[Path]:
    """Each table as ``NAME.parquet`` and ``NAME.csv`` in ``out`` (atomic writes)."""
    import pyarrow.csv as pacsv

    out = Path(out)
    paths = []
    for name, table in {**result.tables(), **(extra or {})}.items():
        paths.append(write_parquet(out / f"{name}.parquet", table))
        paths.append(atomic_write(out / f"{name}.csv", lambda tmp, t=table: pacsv.write_csv(t, tmp)))
    return paths
