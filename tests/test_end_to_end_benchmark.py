"""``benchmarks/end_to_end.py``'s probe share times the probe every ``eval_every`` steps pays, not step 0's
(which also records each output's marginal loss once a run)."""

from __future__ import annotations

from emergelab.train.group import SeedGroup


def test_the_probe_share_times_a_regular_probe(benchmark_script, monkeypatch):
    end_to_end = benchmark_script("end_to_end")
    measure, calls = SeedGroup._measure, []

    def spy(self, step):
        probed = measure(self, step)
        calls.append((step, probed, step == self.config.train.eval_every))
        return probed

    monkeypatch.setattr(SeedGroup, "_measure", spy)
    row = end_to_end.probe_share("demo", 100)
    assert len(calls) == 5 and all(step > 0 and probed and regular for step, probed, regular in calls)
    assert row["probe_cpu_s"] > 0 and row["step_cpu_s"] > 0
    assert row["probe_share"] == row["probe_cpu_s"] / (50 * row["step_cpu_s"])
