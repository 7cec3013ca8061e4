"""``benchmarks/copy_pairs.py``: seed by seed, a linear map with a copy in A against the same seed with the
copied row drawn again."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from emergelab.analysis.seeds import mcnemar_exact


def _run(path: Path, rows: str, seeds: dict) -> None:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"task": {"name": "linear-map", "rows": rows}}))
    (path / "summary.json").write_text(json.dumps({"seeds": seeds}))


def _seed(fan: list[int], learned: list[float | None], final: float) -> dict:
    return {"fan_in": {str(i): f for i, f in enumerate(fan)}, "final_loss": final,
            "learned_step": {str(i): s for i, s in enumerate(learned)}}


def test_pairs_count_the_copy_seeds_that_learn_other_bits_with_and_without_the_copy(tmp_path, monkeypatch, capsys,
                                                                                   benchmark_script):
    same = {"2": _seed([3, 3, 5], [None, 700.0, None], 0.6), "3": _seed([3, 5, 5], [None] * 3, 0.69)}
    _run(tmp_path / "a", "independent", {
        "0": _seed([3, 3, 1], [None, 900.0, 100.0], 0.5),     # a copy (bit 2), then bit 1
        "1": _seed([3, 1, 3], [None, 100.0, 1200.0], 0.5),
        "4": _seed([3, 1, 3], [None, 100.0, None], 0.66), **same})
    _run(tmp_path / "b", "distinct", {
        "0": _seed([3, 3, 3], [None, None, None], 0.69),      # the copy drawn again: nothing
        "1": _seed([3, 3, 3], [None, None, 1500.0], 0.66),
        "4": _seed([3, 3, 3], [None, 2000.0, None], 0.66), **same})
    monkeypatch.setattr(sys, "argv", ["copy_pairs.py", str(tmp_path), "--out", str(tmp_path / "p.json")])
    benchmark_script("copy_pairs").main()
    result = json.loads((tmp_path / "p.json").read_text())
    assert [r["seed"] for r in result["copy_seeds"]] == [0, 1, 4]
    assert result["copy_seeds"][0]["with_copy"] == {"copy": True, "others": {"1": 900.0}, "first": 900.0, "fan3": 1}
    assert result["copy_seeds"][0]["without_copy"]["fan3"] == 1  # bit 2, the copy drawn again, is not counted
    assert (result["learn_other_with_copy"], result["learn_other_without_copy"]) == (2, 2)
    assert (result["only_with_copy"], result["only_without_copy"]) == (1, 1)
    assert result["mcnemar_p"] == mcnemar_exact(1, 1) == 1.0
    assert (result["seeds_without_copy"], result["seeds_without_copy_identical"]) == (2, 2)
    assert "| 0 | 1 (900) | 0 (-) | 1, 1 |" in capsys.readouterr().out


def test_pairs_need_one_run_of_each_kind(tmp_path, benchmark_script):
    _run(tmp_path / "a", "independent", {"0": _seed([1, 3], [100.0, None], 0.6)})
    with pytest.raises(SystemExit, match="one with distinct"):
        script = benchmark_script("copy_pairs")
        script.pairs(script._runs(tmp_path))
