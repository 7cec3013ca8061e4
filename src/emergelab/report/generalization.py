"""Which lines a generalization plot draws, shared by ``figures.py`` (``generalization.png``) and the HTML
report's panel (``html.py``), so the two agree on series, order, labels and colours.

A **length task** (``measure_ood.LengthEval``) records exact match per eval length (index ``len:N``, under
``id_accuracy`` for trained lengths and ``ood_accuracy`` for held-out ones, whose mean is ``ood_accuracy``
at index ``""``); a **rule task** (``RuleEval``) records per rule the first-word (``gen_first_word``) and
whole-output (``gen_accuracy``) fractions and ``id_accuracy`` on the training distribution; a **pool task**
(``FreshEval``: a cellular automaton with a pool of rules) records the per-token accuracy on rules outside
the pool (``fresh_accuracy``) beside the probe's own ``accuracy`` on held-out sequences of the training
distribution (the pool's rules, or the mix of pool and fresh ones with ``task.pool_fraction`` below 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

GENERALIZATION_METRICS = ("id_accuracy", "ood_accuracy", "gen_first_word", "gen_accuracy", "fresh_accuracy", "accuracy")
GENERALIZATION_TITLES = {"lengths": "Exact match at each length (trained solid, held out dashed)",
                         "rules": "Generalization set: which rule's question the model writes",
                         "pool": "In-context inference or a memorised pool: accuracy on fresh rules"}
GENERALIZATION_AXES = {"lengths": "exact match", "rules": "fraction of questions", "pool": "per-token accuracy"}
MEAN, TRAINED = -1, -2  # the colour groups of the held-out mean (black) and the training distribution (grey)


@dataclass(frozen=True)
class Series:
    """One line: the values of ``metric`` at ``index``; ``group`` is its colour (one per length or rule,
    a rule's two lines sharing it; ``MEAN`` black, ``TRAINED`` grey)."""

    metric: str
    index: str
    label: str
    dash: bool
    width: float
    group: int


def generalization_series(recorded: Iterable[tuple[str, str]]) -> tuple[str, list[Series], int] | None:
    """From the ``(metric, index)`` pairs a run recorded: ``(kind, series in drawing order, colour groups)``
    with kind ``"lengths"``, ``"rules"`` or ``"pool"``, or None for a run with none of them. The held-out
    mean comes first (so it is drawn beneath the lengths, which it would hide at 0, the usual held-out
    score), then the lengths in order; a rule's first word comes before its whole output, the training
    distribution last; fresh rules before the pool's."""
    pairs = {(m, i) for m, i in recorded if m in GENERALIZATION_METRICS}
    if any(m in ("id_accuracy", "ood_accuracy") and i.startswith("len:") for m, i in pairs):
        lengths = sorted({int(i[4:]) for m, i in pairs if i.startswith("len:")})
        series = [Series("ood_accuracy", "", "held-out lengths (mean)", False, 2.5, MEAN)] \
            if ("ood_accuracy", "") in pairs else []
        for n in lengths:
            for metric, kind in (("id_accuracy", "trained"), ("ood_accuracy", "held out")):
                if (metric, f"len:{n}") in pairs:
                    series.append(Series(metric, f"len:{n}", f"length {n} ({kind})", kind == "held out", 1.2,
                                         lengths.index(n)))
        return "lengths", series, len(lengths)
    if ("fresh_accuracy", "") in pairs:
        series = [Series("fresh_accuracy", "", "fresh rules (outside the pool)", False, 1.8, 0)]
        if ("accuracy", "") in pairs:
            series.append(Series("accuracy", "", "the training distribution (held out)", True, 1.2, TRAINED))
        return "pool", series, 1
    rules = sorted({i for m, i in pairs if m == "gen_first_word"})
    if not rules:
        return None
    series = []
    for k, rule in enumerate(rules):
        series.append(Series("gen_first_word", rule, f"{rule}: first word", False, 1.8, k))
        if ("gen_accuracy", rule) in pairs:
            series.append(Series("gen_accuracy", rule, f"{rule}: whole output", True, 1.0, k))
    if ("id_accuracy", "") in pairs:
        series.append(Series("id_accuracy", "", "training distribution (exact match)", False, 1.0, TRAINED))
    return "rules", series, len(rules)
