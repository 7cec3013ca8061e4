"""Each output's marginal loss (tasks.marginal): the counting against Python counters, closed forms, the
property that no prediction from the position alone beats the task's optimum, and what a run records."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import emergelab.tasks.marginal as marginal
from emergelab.tasks import (MARGINAL_SEQUENCES, TASKS, CellularAutomataConfig, LinearMapConfig,
                             aggregate_marginal_loss, aggregate_marginal_loss_reference, make_generator,
                             marginal_sequences, marginal_tokens, output_marginal_losses,
                             output_marginal_losses_reference, seed_task)

SMALL = {  # every built-in task, small enough for a Python loop over its pairs
    "linear-map": {"state_size": 6, "sparsity": 2},
    "cellular-automata": {"state_size": 8, "trajectory_length": 5, "alphabet": 3, "rules": 4},
    "count": {},
    "reverse-addition": {},
    "question-formation": {},
    "repetition": {},
}


def built(name: str, seed: int = 0):
    return TASKS[name](**SMALL[name]).build(make_generator(seed))


def test_every_builtin_task_is_covered():
    assert set(SMALL) == set(TASKS)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("dense", [True, False])
def test_counting_matches_python_counters(name, dense, monkeypatch):
    """Both ways of counting (dense cells, sorted keys) against a Python ``Counter`` per (position,
    output), on every task, per-sequence outputs (count, reverse addition, question formation) included."""
    if not dense:
        monkeypatch.setattr(marginal, "DENSE_CELLS", 0)
    task = built(name)
    tokens = marginal_tokens(task, 0, 0, 300)
    fast = output_marginal_losses(task, tokens)
    slow = output_marginal_losses_reference(task, tokens)
    assert fast.shape == (task.n_outputs,) and fast.dtype == torch.float64
    assert np.allclose(fast.numpy(), slow, rtol=0, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("dense", [True, False])
def test_aggregate_counting_matches_python_counters(name, dense, monkeypatch):
    """The aggregate loss's marginal (per ``loss_mask`` position, then their mean), both ways of counting,
    against a Python ``Counter`` per position, on every task."""
    if not dense:
        monkeypatch.setattr(marginal, "DENSE_CELLS", 0)
    task = built(name)
    tokens = marginal_tokens(task, 0, 0, 300)
    assert aggregate_marginal_loss(task, tokens) == pytest.approx(aggregate_marginal_loss_reference(task, tokens),
                                                                  abs=1e-12)


def test_aggregate_closed_form_and_bound():
    """The linear map's loss positions are its S - 1 free bits of x1 and its S output bits, each a uniform
    bit: ln 2. On every task the aggregate marginal is never below the aggregate optimum (up to the plug-in
    bias): a predictor from the position alone is one of those the optimum beats."""
    task = LinearMapConfig(state_size=8, sparsity=3).build(make_generator(1))
    got = aggregate_marginal_loss(task, marginal_tokens(task, 0, 1, MARGINAL_SEQUENCES))
    assert got == pytest.approx(math.log(2), abs=1e-3)
    for name in SMALL:
        task = built(name)
        got, optimum = aggregate_marginal_loss(task, marginal_tokens(task, 0, 0, MARGINAL_SEQUENCES)), task.optimal_loss()
        assert optimum is None or got >= optimum - 0.01, (name, got, optimum)


def test_closed_forms():
    """A bit of the linear map is a parity of uniform bits: ln 2; a cellular automaton's first state is
    uniform over k symbols: ln k (its optimum). Plug-in entropy at 4096 sequences is within 1e-3 of both."""
    task = LinearMapConfig(state_size=8, sparsity=3).build(make_generator(1))
    got = output_marginal_losses(task, marginal_tokens(task, 0, 1, MARGINAL_SEQUENCES))
    assert np.allclose(got.numpy(), math.log(2), atol=1e-3)
    for k in (2, 3, 4):
        task = CellularAutomataConfig(state_size=8, trajectory_length=4, alphabet=k).build(make_generator(2))
        got = output_marginal_losses(task, marginal_tokens(task, 0, 2, MARGINAL_SEQUENCES))
        assert got[0].item() == pytest.approx(math.log(k), abs=1e-3)
        assert task.output_optima()[0] == pytest.approx(math.log(k))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_no_prediction_from_the_position_alone_beats_the_optimum(name):
    """The optimum is the best loss of any predictor; one that sees the position alone is one of them, so its
    loss (the marginal) is never below the optimum, up to the plug-in estimate's bias (below 0.01 here)."""
    for seed in (0, 1):
        task = built(name, seed)
        got = output_marginal_losses(task, marginal_tokens(task, 0, seed, MARGINAL_SEQUENCES)).numpy()
        for o, optimum in enumerate(task.output_optima()):
            if optimum is not None and np.isfinite(got[o]):
                assert got[o] >= optimum - 0.01, (o, got[o], optimum)


def test_long_sequences_sample_fewer():
    from emergelab.tasks import marginal_sequences

    assert [marginal_sequences(L) for L in (16, 256, 257, 1024, 4096, 10**6)] == [4096, 4096, 4080, 1024, 256, 256]
    for name in SMALL:  # every built-in task at its defaults samples the full 4096
        cfg = TASKS[name]()
        assert marginal_sequences(cfg.build(make_generator(0)).seq_len) == MARGINAL_SEQUENCES


def test_the_sample_is_its_own_stream():
    """The marginal's sequences come from their own generator: not the held-out batch, not the data."""
    from emergelab.tasks import held_out_tokens

    task = built("linear-map")
    a = marginal_tokens(task, 0, 0, 64)
    assert torch.equal(a, marginal_tokens(task, 0, 0, 64))
    assert not torch.equal(a, held_out_tokens(task, 0, 0, 64))
    assert not torch.equal(a, marginal_tokens(task, 0, 1, 64))


def test_a_run_records_it_once_per_seed(tmp_path):
    """``marginal_loss`` at step 0 only, per seed and output, equal to the function on the seed's own task
    and sample; the seed's other metrics are those of a run that trains it alone (nothing else drew)."""
    from emergelab.train import ExperimentConfig, train

    config = ExperimentConfig.from_dict({
        "task": {"name": "cellular-automata", "state_size": 8, "trajectory_length": 4, "rules": 2},
        "model": {"layers": 1, "heads": 2, "head_dim": 4},
        "train": {"steps": 4, "seeds": 2, "eval_every": 2, "eval_batch_size": 32, "checkpoints": 0,
                  "attention_snapshots": 0}}).resolved()
    rows = train(config, tmp_path / "r", progress=False).metrics().to_pylist()
    recorded = [r for r in rows if r["metric"] == "marginal_loss"]
    assert {r["step"] for r in recorded} == {0} and len(recorded) == 2 * (1 + 4)
    for seed in (0, 1):
        task = seed_task(config.task, config.train.seed, seed)
        sample = marginal_tokens(task, config.train.seed, seed, marginal_sequences(task.seq_len))
        want = [aggregate_marginal_loss(task, sample)] + output_marginal_losses(task, sample).tolist()
        got = [r["value"] for r in recorded if r["seed"] == seed]
        assert [r["index"] for r in recorded if r["seed"] == seed] == ["", "0", "1", "2", "3"]
        assert got == want
    assert pq.read_table(tmp_path / "r" / "metrics.parquet").num_rows == len(rows)
