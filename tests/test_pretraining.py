"""Pre-training streams (``tasks/pretraining.py``) against slow references, and pre-pretraining in training
(``train.pretrain``): config checks, hash neutrality, the batches each phase trains on, seed grouping and
resume bit-identity, the pre-training tokens in ``summary.json``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from emergelab.config import ConfigError
from emergelab.store import RunDir
from emergelab.tasks import make_generator, seed_streams
from emergelab.tasks.pretraining import DyckStream, NCAStream, pretraining_stream
from emergelab.train import ExperimentConfig, SeedGroup, train
from emergelab.train.schedule import data_chunk_steps, probe_steps

REPETITION = {"name": "repetition", "vocab": 8, "seq_len": 12, "span": 4}
TINY_MODEL = {"layers": 1, "heads": 2, "head_dim": 4, "mlp_ratio": 2}


def experiment(task: dict = REPETITION, execution: dict | None = None, **fields) -> ExperimentConfig:
    train_fields = {"steps": 60, "batch_size": 16, "lr": 0.01, "eval_every": 10, "eval_batch_size": 16,
                    "checkpoints": 0, "attention_snapshots": 0, "pretrain": "dyck", "pretrain_steps": 23, **fields}
    return ExperimentConfig.from_dict({"task": task, "model": TINY_MODEL, "train": train_fields,
                                       "execution": execution or {}}).resolved()


# ---------------------------------------------------------------------------------------------- Dyck
def dyck_reference(stream: DyckStream, u: torch.Tensor, kinds: torch.Tensor) -> list[list[int]]:
    """The depth process of the module doc, one sequence and one token at a time, with a Python list as
    the stack."""
    L, k = stream.seq_len, stream.brackets
    out = []
    for row_u, row_k in zip(u.tolist(), kinds.tolist()):
        stack: list[int] = []
        seq = []
        for t in range(L):
            if not stack or (len(stack) < L - t and row_u[t] < stream.p_open):
                stack.append(row_k[t])
                seq.append(row_k[t])
            else:
                seq.append(k + stack.pop())
        out.append(seq)
    return out


def well_nested(seq: list[int], k: int) -> tuple[bool, int]:
    """``(every closer closes the innermost open bracket, brackets left open)``."""
    stack: list[int] = []
    for x in seq:
        if x < k:
            stack.append(x)
        elif not stack or stack.pop() != x - k:
            return False, len(stack)
    return True, len(stack)


@pytest.mark.parametrize("vocab,seq_len", [(8, 12), (7, 13), (64, 64), (2, 5)])
def test_dyck_sequences_are_well_nested_and_match_the_reference(vocab, seq_len):
    stream = pretraining_stream("dyck", vocab, seq_len)
    assert isinstance(stream, DyckStream) and stream.brackets == vocab // 2
    tokens = stream.sample(300, make_generator(5))
    assert tokens.shape == (300, seq_len) and tokens.dtype == torch.int64
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 2 * stream.brackets <= vocab
    for seq in tokens.tolist():
        ok, left_open = well_nested(seq, stream.brackets)
        assert ok and left_open == seq_len % 2, seq  # even: balanced; odd: one bracket left open
    g = make_generator(5)  # the same draws, in sample's order
    u = torch.rand(300, seq_len, generator=g, dtype=torch.float64)
    kinds = torch.randint(0, stream.brackets, (300, seq_len), generator=g)
    assert tokens.tolist() == dyck_reference(stream, u, kinds)
    assert torch.equal(stream.sample(300, make_generator(5)), tokens)  # deterministic given the generator
    if seq_len >= 12:
        assert len({tuple(s) for s in tokens.tolist()}) > 250  # and random across sequences
        depth = (tokens < stream.brackets).long().mul(2).sub(1).cumsum(1)
        assert int(depth.max()) >= 4  # nesting, not only "()()()"


# ---------------------------------------------------------------------------------------------- NCA
def nca_reference(stream: NCAStream, rules) -> torch.Tensor:
    """Each trajectory cell by cell: the one-hot window through the dense MLP, then the inverse CDF."""
    n, W, S = rules.initial.shape[0], stream.width, stream.states
    out = torch.empty(n, stream.trajectory_length * W, dtype=torch.int64)
    for i in range(n):
        state = rules.initial[i].tolist()
        out[i, :W] = torch.tensor(state)
        for t in range(stream.trajectory_length - 1):
            new = []
            for c in range(W):
                x = torch.zeros(3 * S, dtype=torch.float64)
                for j, cell in enumerate((state[(c - 1) % W], state[c], state[(c + 1) % W])):
                    x[j * S + cell] = 1.0
                h = torch.relu(x @ rules.w1[i] + rules.b1[i])
                logits = h @ rules.w2[i] + rules.b2[i]
                if stream.temperature == 0:
                    new.append(int(logits.argmax()))
                    continue
                p = torch.softmax(logits / stream.temperature, 0).tolist()
                u, value, acc = float(rules.noise[i, t, c]), S - 1, 0.0
                for s in range(S):
                    acc += p[s]
                    if u < acc:
                        value = s
                        break
                new.append(value)
            state = new
            out[i, (t + 1) * W:(t + 2) * W] = torch.tensor(state)
    return out[:, :stream.seq_len]


@pytest.mark.parametrize("temperature", [0.5, 0.0])
@pytest.mark.parametrize("vocab,seq_len", [(32, 48), (4, 13)])
def test_nca_trajectory_is_the_rule_applied_cell_by_cell(vocab, seq_len, temperature):
    stream = replace(pretraining_stream("nca", vocab, seq_len), temperature=temperature)
    assert isinstance(stream, NCAStream) and stream.states == min(vocab, 10)
    tokens = stream.sample(40, make_generator(11))
    assert tokens.shape == (40, seq_len) and tokens.dtype == torch.int64
    assert 0 <= int(tokens.min()) and int(tokens.max()) < stream.states <= vocab
    rules = stream.draw(40, make_generator(11))
    assert torch.equal(tokens, nca_reference(stream, rules))
    assert torch.equal(stream.sample(40, make_generator(11)), tokens)
    assert not torch.equal(stream.sample(40, make_generator(12)), tokens)


def test_streams_that_do_not_fit_the_task_are_config_errors():
    with pytest.raises(ConfigError, match=r"train.pretrain='nca' does not fit the task \(8 tokens, 3 positions\)"):
        pretraining_stream("nca", 8, 3)
    with pytest.raises(ConfigError, match="dyck.brackets=5: 2 \\* brackets must fit"):
        DyckStream(8, 12, brackets=5)
    with pytest.raises(ConfigError, match="train.pretrain='none'"):
        pretraining_stream("none", 8, 12)


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("fields,message", [
    ({"pretrain": "gpt"}, "train.pretrain='gpt': must be one of none, dyck, nca"),
    ({"pretrain": "none", "pretrain_steps": 5}, "train.pretrain_steps=5: must be 0 with train.pretrain=none"),
    ({"pretrain_steps": 0}, r"train.pretrain_steps=0: must be in \[1, train.steps - 1 = 59\]"),
    ({"pretrain_steps": 60}, r"train.pretrain_steps=60: must be in \[1, train.steps - 1 = 59\]"),
    ({"pretrain_steps": -1}, "train.pretrain_steps=-1: must be an integer"),
    ({"bias_beta": 1.0}, "train.bias_beta=1.0: must be 0 with train.pretrain=dyck"),
])
def test_bad_pretraining_fields_are_one_line_errors(fields, message):
    with pytest.raises(ConfigError, match=message) as error:
        experiment(**fields)
    assert "\n" not in str(error.value)


def test_default_pretraining_keeps_the_run_hash():
    base = {"task": REPETITION, "model": TINY_MODEL, "train": {"steps": 60}}
    plain = ExperimentConfig.from_dict(base).resolved()
    explicit = ExperimentConfig.from_dict({**base, "train": {"steps": 60, "pretrain": "none",
                                                             "pretrain_steps": 0}}).resolved()
    keys = {plain.science_key(), explicit.science_key()}
    assert len(keys) == 1
    for fields in ({"pretrain": "dyck", "pretrain_steps": 10}, {"pretrain": "nca", "pretrain_steps": 10},
                   {"pretrain": "dyck", "pretrain_steps": 11}):
        keys.add(ExperimentConfig.from_dict({**base, "train": {"steps": 60, **fields}}).resolved().science_key())
    assert len(keys) == 4


def test_existing_seed_streams_are_unchanged_by_the_pretrain_stream():
    for master, i in ((0, 0), (7, 3), (2 ** 40, 12)):
        old = np.random.SeedSequence(master, spawn_key=(i,)).generate_state(4, dtype=np.uint64)  # before
        streams = seed_streams(master, i)
        assert [streams[k] for k in ("init", "task", "data", "eval")] == [int(s) >> 1 for s in old]
        assert len(set(streams.values())) == 5


# ---------------------------------------------------------------------------------------------- training
def test_each_phase_trains_on_its_own_stream():
    config = experiment(task={"name": "count", "max_number": 9, "train_max_length": 4, "eval_lengths": [4]},
                        pretrain="nca", pretrain_steps=23)
    group = SeedGroup(config, [1, 3])
    K, B = group.chunk_steps, config.train.batch_size
    stream = pretraining_stream("nca", *config.task_sizes())
    tokens, weights = group._batch(0)
    for e, seed in enumerate((1, 3)):
        expected = stream.sample(K * B, make_generator(seed_streams(0, seed)["pretrain"]))[:B]
        assert torch.equal(tokens[e], expected)
    assert torch.equal(weights, torch.full_like(weights, 1 / weights.numel()))  # every position
    # the task starts from its data stream's first batch, weighted by its loss mask, as without pre-training
    plain = SeedGroup(replace(config, train=replace(config.train, pretrain="none", pretrain_steps=0)), [1, 3])
    for step in range(23):
        group._batch(step)
    task_tokens, task_weights = group._batch(23)
    plain_tokens, plain_weights = plain._batch(0)
    assert torch.equal(task_tokens, plain_tokens) and torch.equal(task_weights, plain_weights)
    assert not torch.equal(task_weights, weights)  # count trains on its answer region only


def test_pretraining_run_in_groups_equals_all_at_once_and_records_its_tokens(tmp_path):
    config = experiment(seeds=3, pretrain="nca", pretrain_steps=23, checkpoints=2)
    executions = {"together": {"strategy": "ensemble", "threads": 1},
                  "alone": {"strategy": "ensemble", "threads": 1, "seed_batch": 1},
                  "workers": {"strategy": "workers", "workers": 2}}
    runs = {name: train(replace(config, execution=replace(config.execution, **knobs)), tmp_path / name,
                        progress=False) for name, knobs in executions.items()}
    reference = runs["together"].metrics()
    for name, run in runs.items():
        assert run.metrics().equals(reference), name
    assert 23 in probe_steps(config.train) and 23 in set(reference["step"].to_pylist())
    summary = runs["together"].summary()
    assert summary["pretrain"] == {"stream": "nca", "steps": 23, "tokens_per_seed": 23 * 16 * 12,
                                   "task_tokens_per_seed": 37 * 16 * 12}
    loss = reference.filter(pc.equal(reference["metric"], "train_loss"))["value"].to_numpy()
    assert np.isfinite(loss).all()
    # the task's loss is on no plateau while the model pre-trains: its initial level is the step-0 loss,
    # or the task's marginal (its loss from token frequencies by position) where that lies lower
    from emergelab.analysis.emergence import NOTHING_TO_LEARN, curve_emergence
    from emergelab.store import connect

    emergence, _ = curve_emergence(connect(runs["together"].path))
    step0 = reference.filter(pc.equal(reference["step"], 0)).to_pylist()
    first = {r["seed"]: r["value"] for r in step0 if r["metric"] == "loss"}
    marginal = {r["seed"]: r["value"] for r in step0 if r["metric"] == "marginal_loss" and r["index"] == ""}
    want = {seed: marginal[seed] if first[seed] - marginal[seed] > NOTHING_TO_LEARN else first[seed] for seed in first}
    rows = [r for r in emergence.to_pylist() if r["target"] == "loss"]
    assert len(rows) == 3 and all(r["initial"] == pytest.approx(want[r["seed"]]) for r in rows)


@pytest.mark.parametrize("stop", [13, 41], ids=["during-pretraining", "after-pretraining"])
def test_run_interrupted_and_resumed_equals_uninterrupted(tmp_path, stop):
    config = experiment(steps=80, pretrain="dyck", pretrain_steps=29, checkpoints=3,
                        execution={"resume_every": 0})
    K = data_chunk_steps(16, 12)
    assert stop % K and (stop - 29) % K and stop not in probe_steps(config.train)  # mid-chunk, between probes

    reference = RunDir(tmp_path / "reference")
    reference.write_config(config.to_dict())
    uninterrupted = SeedGroup(config, [0, 2], run=reference)
    uninterrupted.train()

    run = RunDir(tmp_path / "resumed")
    run.write_config(config.to_dict())
    first = SeedGroup(config, [0, 2], run=run)
    first.train(stop_after=stop)
    first.save_state()
    del first
    second = SeedGroup(config, [0, 2], run=run)
    assert second.resume() and second.step == stop
    second.train()
    assert second.is_done()
    resumed = second.metrics.table()
    assert resumed.num_rows == uninterrupted.metrics.table().num_rows > 0
    assert resumed.equals(uninterrupted.metrics.table())
    for a, b in zip(second.model.parameters(), uninterrupted.model.parameters()):
        assert torch.equal(a, b)
