"""One command per synthetic-task figure of the paper: ``emergelab reproduce NAME --scale smoke|cpu|paper``.

Each target (``targets.py``) is one or more sweep files shipped in ``sweeps/`` plus the analysis that
draws its figure and prints the table behind it. ``smoke`` runs in seconds (the test suite runs every
target), ``cpu`` is sized to test the claim in about an hour on 2 cores, ``paper`` uses the published
sizes (a GPU). Results: ``OUT/RESULT.md``, ``OUT/table.txt``, ``OUT/figures/``; ``docs/results.md``
collects ours beside the paper's claims.

Example::

    from emergelab.reproduce import reproduce
    result = reproduce("sparsity", scale="smoke", out="runs/reproduce/sparsity-smoke")
    print(result.table)

Sits above ``report`` (it runs sweeps, analyses and draws); only ``cli`` imports it.
"""

from typing import Any

from .targets import SCALES, TARGETS, Target


def reproduce(name: str, scale: str = "cpu", out: Any = None, **kwargs: Any) -> Any:
    """:func:`emergelab.reproduce.run.reproduce` (imported on call: the CLI reads ``TARGETS`` without
    importing torch)."""
    from .run import reproduce as run_target

    return run_target(name, scale, out, **kwargs)


__all__ = ["SCALES", "TARGETS", "Target", "reproduce"]
