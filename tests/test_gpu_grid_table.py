"""``benchmarks/gpu_grid_table.py``: the S = 16 grid's tables in docs/results.md, from ``grid_summary.json``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from emergelab.analysis.seeds import fisher_exact


def test_the_expected_seeds_with_equal_rows_match_drawing_the_rows(benchmark_script):
    table = benchmark_script("gpu_grid_table")
    rng = np.random.default_rng(0)
    for S, s in ((8, 6), (10, 7), (16, 14)):
        trials = 4000
        hits = 0
        for _ in range(trials):  # each row: s ones at random places, rows independent
            rows = {tuple(sorted(rng.choice(S, size=s, replace=False))) for _ in range(S)}
            hits += len(rows) < S
        p = table.expected_copy_seeds(S, s, 1)
        assert abs(hits / trials - p) < 4 * math.sqrt(p * (1 - p) / trials)


def _seed(fan: dict[str, int], learned: dict[str, float | None], final: float) -> dict:
    return {"fan_in": fan, "learned_step": learned, "final_loss": final,
            "n_learned": sum(v is not None for v in learned.values()),
            "all_learned": all(v is not None for v in learned.values())}


def test_the_tables_count_copies_shortcuts_and_test_copy_seeds_against_the_others(tmp_path, capsys, monkeypatch,
                                                                                  benchmark_script):
    table = benchmark_script("gpu_grid_table")
    # 3 bits; seeds 0-2 have a copy (bit 2 = bit 1), seeds 3-5 do not; copy seeds learn their fan-in-3 bit
    seeds = {}
    for k in range(6):
        copy = k < 3
        fan = {"0": 4, "1": 3, "2": 1 if copy else 3, "3": 2}  # bit 3: fan-in 2, reported apart
        learned = {"0": None, "1": 900.0 + k if copy else None, "2": 100.0 if copy else None, "3": None}
        seeds[str(k)] = _seed(fan, learned, 0.5 if copy else 0.69)
    summary = {"output_labels": ["bit 0", "bit 1", "bit 2", "bit 3"], "seeds": seeds}
    (tmp_path / "grid_summary.json").write_text(json.dumps([{"sparsity": 2, "summary": summary},
                                                            {"sparsity": 3, "state": "pending"}]))
    monkeypatch.setattr("sys.argv", ["gpu_grid_table.py", str(tmp_path), "--out", str(tmp_path / "t.json")])
    table.main()
    out = json.loads((tmp_path / "t.json").read_text())
    (row,) = out["sparsities"]
    assert (row["s"], row["learned_any"], row["learned_all"], row["bits_per_seed"]) == (2, 3, 0, 1.0)
    assert row["step_median"] == np.median([100.0] * 3 + [900.0, 901.0, 902.0])
    (fan,) = out["fan_in"]
    assert fan["copy_seeds"] == 3 and fan["bits_copy"] == {"learned": 3, "of": 3, "first": 100.0, "last": 100.0}
    assert fan["bits_3"] == {"learned": 3, "of": 9, "first": 900.0, "last": 902.0}
    assert fan["with_copy"]["learn_other"] == 3 and fan["without_copy"]["learn_other"] == 0
    assert fan["fisher_p"] == pytest.approx(fisher_exact([[3, 0], [0, 3]])) == pytest.approx(0.1)
    # S = 4 outputs, s = 2: C(4, 2) = 6 possible rows
    assert fan["copy_seeds_expected"] == pytest.approx(6 * (1 - 1 * (1 - 1 / 6) * (1 - 2 / 6) * (1 - 3 / 6)))
    assert fan["bits_2_or_4"] == {"learned": 0, "of": 6, "first": None, "last": None}
    printed = capsys.readouterr().out
    assert "| 2 | 3/6 | 0/6 |" in printed and "fan-in 2 or 4 bits learned: 0 of 6" in printed
