"""Markers for the run figures: each output's detected emergence step, labelled with its attributed head."""

from __future__ import annotations

from ..analysis.emergence import curve_emergence
from ..analysis.heads import attribute_heads
from ..store import RunDir, connect


def emergence_markers(run: RunDir) -> dict[int, list[tuple[float, str]]]:
    """``{seed: [(step, label), ...]}``: one marker per emerged output position, e.g. ``"bit 3: 0.2"``
    (output 3's loss crossed its emergence threshold at ``step``; head 0.2 gained most ground-truth mass
    in that jump)."""
    con = connect(run.path)
    try:  # closed explicitly: a DuckDB connection left to interpreter exit can abort the process
        emergence, jumps = curve_emergence(con)
        heads = {(r["seed"], r["position"]): r["top_head"] for r in attribute_heads(
            con, emergence=(emergence, jumps)).to_pylist()}
    finally:
        con.close()
    noun = (run.task_info() or {}).get("output_name", "output")
    markers: dict[int, list[tuple[float, str]]] = {}
    for row in emergence.to_pylist():
        if not row["emerged"] or not row["target"].startswith("pos:"):
            continue
        i = int(row["target"][4:])
        head = heads.get((row["seed"], i))
        label = f"{noun} {i}" + (f": {head}" if head else "")
        markers.setdefault(int(row["seed"]), []).append((float(row["step"]), label))
    return {seed: sorted(marks) for seed, marks in markers.items()}
