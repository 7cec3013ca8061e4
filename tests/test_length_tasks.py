"""Length-generalization tasks (count, reverse-addition) against plain-Python decoders, their ground-truth
masks against loops written from the docstrings, and the held-out length evaluation (LengthEval) on
models that implement the algorithms by hand."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from emergelab.config import ConfigError
from emergelab.tasks import (CountConfig, ReverseAdditionConfig, TASKS, length_eval_tokens, make_generator,
                             seed_streams, supports_lengths)
from emergelab.train import ExperimentConfig, LengthEval, SeedGroup
from emergelab.train.measure import probe

# ----------------------------------------------------------------------------------------------------
# Plain-Python references
# ----------------------------------------------------------------------------------------------------


def ref_count_decode(seq: list[int], N: int, M: int) -> int:
    """Check one count sequence by hand; returns its length."""
    SEP, PAD = N + 1, N + 2
    assert len(seq) == M + 3
    start, end, sep = seq[:3]
    assert 0 <= start <= end <= N and sep == SEP
    length = end - start + 1
    expected = [start + j for j in range(length)] + [PAD] * (M - length)
    assert seq[3:] == expected
    return length


def ref_count_mask(M: int, train_max: int) -> list[list[bool]]:
    """Query 2 (emits number 0) reads the start (key 0); query 2+i (emits number i >= 1) reads number i-1,
    which sits at token 3+i-1 = 2+i; for the outputs i <= train_max only (later queries hold PAD in every
    training sequence)."""
    P = M + 2
    mask = [[False] * P for _ in range(P)]
    mask[2][0] = True
    for i in range(1, min(M, train_max + 1)):
        mask[2 + i][2 + i] = True
    return mask


def ref_addition_decode(seq: list[int], D: int, offsets: bool = False) -> int:
    """Check one reverse-addition sequence by hand (hints, padding, the sum); returns its digit count.
    ``offsets``: the hints may start at any h_o (the same o in all three numbers), else at h_0."""
    H, PLUS, EQ, PAD = 10, D + 11, D + 12, D + 13
    assert len(seq) == 6 * D + 4
    a_block, plus, b_block, eq, c_block = seq[:2 * D], seq[2 * D], seq[2 * D + 1:4 * D + 1], seq[4 * D + 1], seq[4 * D + 2:]
    assert plus == PLUS and eq == EQ
    if offsets:
        H = a_block[0]
        assert 10 <= H <= 10 + D

    def digits(block: list[int], width: int) -> list[int]:
        out = []
        for i in range(width):
            hint, digit = block[2 * i], block[2 * i + 1]
            if hint == PAD:
                assert digit == PAD and all(t == PAD for t in block[2 * i:])
                break
            assert hint == H + i and 0 <= digit <= 9
            out.append(digit)
        return out

    a, b, c = digits(a_block, D), digits(b_block, D), digits(c_block, D + 1)
    n = len(a)
    assert n >= 1 and len(b) == n and len(c) == n + 1
    assert H - 10 + n <= D  # the sum's last hint h_{o+n} is one of h_0..h_D
    value = lambda ds: sum(d * 10 ** i for i, d in enumerate(ds))  # least significant digit first
    assert value(a) + value(b) == value(c)
    return n


def ref_addition_mask(D: int, train_max: int) -> list[list[bool]]:
    """The query holding hint h_i in the result (position 4D+2+2i, predicts c_i) reads a_i (token 2i+1),
    b_i (token 2D+1+2i+1) and c_{i-1} (token 4D+2+2(i-1)+1); for the outputs i <= train_max only (later
    queries hold PAD in every training sequence)."""
    P = 6 * D + 3
    mask = [[False] * P for _ in range(P)]
    for i in range(train_max + 1):
        q = 4 * D + 2 + 2 * i
        if i < D:
            mask[q][2 * i + 1] = True
            mask[q][2 * D + 1 + 2 * i + 1] = True
        if i >= 1:
            mask[q][4 * D + 2 + 2 * (i - 1) + 1] = True
    return mask


# ----------------------------------------------------------------------------------------------------
# Generators and masks
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_count_sequences_decode_to_correct_counts(seed):
    rng = random.Random(seed)
    N = rng.choice([5, 13, 40])
    train_max = rng.randint(1, min(N + 1, 9))
    evals = sorted({rng.randint(1, N + 1) for _ in range(3)})
    task = CountConfig(max_number=N, train_max_length=train_max, eval_lengths=evals).build(make_generator(seed))
    M = max(train_max, max(evals))
    n_out = min(M, train_max + 1)
    assert (task.seq_len, task.vocab_size, task.n_outputs) == (M + 3, N + 3, n_out)
    tokens = task.sample(600, make_generator(seed + 100)).tokens
    lengths = [ref_count_decode(s, N, M) for s in tokens.tolist()]
    assert set(lengths) == set(range(1, train_max + 1))  # every training length appears, no other
    assert task.length_of(tokens).tolist() == lengths
    for length in evals:
        batch = task.sample_length(50, length, make_generator(seed)).tokens
        assert [ref_count_decode(s, N, M) for s in batch.tolist()] == [length] * 50
    starts = task.sample_length(2000, 1, make_generator(seed)).tokens[:, 0]
    assert set(starts.tolist()) == set(range(N + 1))  # start uniform over 0..N - length + 1
    assert task.attention_mask.tolist() == ref_count_mask(M, train_max)
    P = M + 2
    assert task.loss_mask.tolist() == [p >= 2 for p in range(P)]
    assert task.output_index.tolist() == [p - 2 if 2 <= p < 2 + n_out else -1 for p in range(P)]
    assert task.output_optima() == [0.0] * n_out and task.optimal_loss() == 0.0
    positions = torch.arange(P)
    beyond = (positions >= 2 + n_out)[None].expand_as(tokens[:, :-1])
    assert (tokens[:, :-1][beyond] == N + 2).all() and (tokens[:, 1:][beyond] == N + 2).all()  # PAD -> PAD
    if n_out == train_max + 1:  # the last output's query (the stop): a number in the longest training counts
        assert (tokens[:, 2 + train_max] != N + 2).any()


@pytest.mark.parametrize("seed", range(4))
def test_reverse_addition_sequences_decode_to_correct_sums(seed):
    rng = random.Random(seed)
    train_max = rng.randint(1, 5)
    evals = sorted({rng.randint(1, 8) for _ in range(3)})
    task = ReverseAdditionConfig(train_max_digits=train_max, eval_digits=evals).build(make_generator(seed))
    D = max(train_max, max(evals))
    assert (task.seq_len, task.vocab_size, task.n_outputs) == (6 * D + 4, D + 14, train_max + 1)
    tokens = task.sample(500, make_generator(seed + 7)).tokens
    lengths = [ref_addition_decode(s, D) for s in tokens.tolist()]
    assert set(lengths) == set(range(1, train_max + 1))
    assert task.length_of(tokens).tolist() == lengths
    for n in evals:
        batch = task.sample_length(40, n, make_generator(seed)).tokens
        assert [ref_addition_decode(s, D) for s in batch.tolist()] == [n] * 40
    carries = task.sample_length(400, D, make_generator(seed)).tokens[:, -1]
    assert set(carries.tolist()) == {0, 1}  # the carry out is exercised
    assert task.attention_mask.tolist() == ref_addition_mask(D, train_max)
    P = 6 * D + 3
    assert task.loss_mask.tolist() == [p >= 4 * D + 1 for p in range(P)]
    expected = [(p - 4 * D - 2) // 2 if p >= 4 * D + 2 and (p - 4 * D) % 2 == 0 and (p - 4 * D - 2) // 2 <= train_max
                else -1 for p in range(P)]
    assert task.output_index.tolist() == expected
    beyond = torch.arange(P) > 4 * D + 3 + 2 * train_max  # past the longest sums' stop: PAD -> PAD in training
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    assert (inputs[:, beyond] == D + 13).all() and (targets[:, beyond] == D + 13).all()
    assert (inputs[:, 4 * D + 2 + 2 * train_max] != D + 13).any()  # the last output's query holds a hint


@pytest.mark.parametrize("seed", range(3))
def test_randomly_offset_hints_cover_every_hint_in_training(seed):
    """``task.hints: random-offset``: per sequence one offset o, uniform in 0..D-n, shifts every hint; the
    digits, the sum, the masks and the outputs are fixed hints' (same positions)."""
    rng = random.Random(seed)
    train_max, evals = rng.randint(1, 3), [rng.randint(4, 6)]
    fixed = ReverseAdditionConfig(train_max_digits=train_max, eval_digits=evals).build(make_generator(0))
    task = ReverseAdditionConfig(train_max_digits=train_max, eval_digits=evals, hints="random-offset").build(
        make_generator(0))
    D = max(train_max, max(evals))
    tokens = task.sample(3000, make_generator(seed)).tokens
    lengths = [ref_addition_decode(s, D, offsets=True) for s in tokens.tolist()]
    assert task.length_of(tokens).tolist() == lengths
    offsets = [s[0] - 10 for s in tokens.tolist()]
    for n in set(lengths):  # every offset 0..D-n occurs, about equally often
        counts = np.bincount([o for o, m in zip(offsets, lengths) if m == n], minlength=D - n + 1)
        assert len(counts) == D - n + 1 and counts.min() > 0.5 * counts.mean()
    hints = {t for s in tokens.tolist() for t in s[4 * D + 2::2] if 10 <= t <= 10 + D}
    assert hints == set(range(10, 11 + D))  # training sees h_0..h_D, the longest eval length's too
    for n in evals:
        assert [ref_addition_decode(s, D, offsets=True) for s in
                task.sample_length(50, n, make_generator(seed)).tokens.tolist()] == [n] * 50
    for name in ("attention_mask", "loss_mask", "output_index"):
        assert torch.equal(getattr(task, name), getattr(fixed, name)), name
    with pytest.raises(ConfigError, match="task.hints='random'"):
        ReverseAdditionConfig(hints="random")


@pytest.mark.parametrize("hints", ["fixed", "random-offset"])
def test_outputs_count_only_where_a_sequence_has_them(hints):
    """Per held-out sequence, output i counts where the sequence has an i-th answer token to predict:
    counting, emitted token i with i <= the count (i = count: the stop); reverse addition, c_i with i <= n
    (c_n: the carry out). Elsewhere the query holds PAD; so does its ground-truth row."""
    count = CountConfig(max_number=12, train_max_length=5, eval_lengths=[7]).build(make_generator(0))
    tokens = count.sample(300, make_generator(1)).tokens
    index, mask = count.sample_output_index(tokens), count.sample_attention_mask(tokens)
    P = count.seq_len - 1
    for row, m, gt in zip(index.tolist(), count.length_of(tokens).tolist(), mask):
        assert row == [p - 2 if 2 <= p <= 2 + m else -1 for p in range(P)]
        assert torch.equal(gt, count.attention_mask & torch.tensor([2 <= p <= 2 + m for p in range(P)])[:, None])
    addition = ReverseAdditionConfig(train_max_digits=3, eval_digits=[5], hints=hints).build(make_generator(0))
    D = 5
    tokens = addition.sample(300, make_generator(2)).tokens
    index, mask = addition.sample_output_index(tokens), addition.sample_attention_mask(tokens)
    for row, n, gt in zip(index.tolist(), addition.length_of(tokens).tolist(), mask):
        assert row == [(p - 4 * D - 2) // 2 if p >= 4 * D + 2 and (p - 4 * D) % 2 == 0 and (p - 4 * D - 2) // 2 <= n
                       else -1 for p in range(6 * D + 3)]
        assert torch.equal(gt.any(-1), torch.tensor([x >= 0 for x in row]))  # every output's query, no other


def test_fixed_hints_keep_the_run_hash():
    from emergelab.train import ExperimentConfig

    base = {"name": "reverse-addition", "train_max_digits": 3, "eval_digits": [4]}
    plain = ExperimentConfig.from_dict({"task": base}).resolved().science_key()
    assert plain == "968fae99"  # this config's hash before the field existed (at 8f83721)
    assert plain == ExperimentConfig.from_dict({"task": {**base, "hints": "fixed"}}).resolved().science_key()
    assert plain != ExperimentConfig.from_dict({"task": {**base, "hints": "random-offset"}}).resolved().science_key()


def test_length_configs_are_validated_and_registered():
    assert TASKS["count"] is CountConfig and TASKS["reverse-addition"] is ReverseAdditionConfig
    assert CountConfig(eval_lengths=[12, 5, 12]).eval_lengths == (5, 12)  # YAML lists become sorted tuples
    for bad in ({"eval_lengths": []}, {"eval_lengths": [40]}, {"train_max_length": 0}):
        with pytest.raises(ConfigError):
            CountConfig(max_number=30, **bad)
    with pytest.raises(ConfigError):
        ReverseAdditionConfig(eval_digits=[0])
    with pytest.raises(ConfigError, match=r"task.eval_lengths=\[5, 40\]: each entry must be an integer in "
                                          r"\[1, 31\]; 40 is not"):
        CountConfig(max_number=30, eval_lengths=[5, 40])  # the list and its bad entry named
    assert supports_lengths(CountConfig().build(make_generator(0)))
    assert not supports_lengths(TASKS["linear-map"]().build(make_generator(0)))


def test_length_eval_batches_derive_from_the_eval_stream_alone():
    task = CountConfig(max_number=20, train_max_length=4, eval_lengths=[6, 8]).build(make_generator(0))
    a = length_eval_tokens(task, 5, 3, 6, 32)
    assert torch.equal(a, length_eval_tokens(task, 5, 3, 6, 32))  # same seed and length: same batch
    assert not torch.equal(a, length_eval_tokens(task, 5, 4, 6, 32))  # another seed: another batch
    assert not torch.equal(a, length_eval_tokens(task, 6, 3, 6, 32))  # another master seed
    assert torch.equal(length_eval_tokens(task, 5, 3, 6, 64)[:32], a)  # a prefix of a larger batch
    assert seed_streams(5, 3)["eval"]  # (the stream it derives from)


# ----------------------------------------------------------------------------------------------------
# Held-out length evaluation on hand-written models
# ----------------------------------------------------------------------------------------------------


class CountOracle(torch.nn.Module):
    """Counts by hand from the input tokens: after SEP the start, then previous + 1 until the end number,
    then PAD. ``stop_after``: stop (PAD) after this many numbers, as a model that learned only the trained
    lengths might."""

    def __init__(self, N: int, stop_after: int | None = None):
        super().__init__()
        self.N, self.stop_after = N, stop_after

    def forward(self, x: torch.Tensor, **inputs) -> torch.Tensor:
        PAD, V = self.N + 2, self.N + 3
        nxt = torch.zeros_like(x)
        nxt[..., 2] = x[..., 0]
        prev = x[..., 3:]
        done = (prev == PAD) | (prev == x[..., 1:2])
        if self.stop_after is not None:
            emitted = torch.arange(1, prev.shape[-1] + 1)
            done = done | (emitted >= self.stop_after)
        nxt[..., 3:] = torch.where(done, PAD, prev + 1)
        return torch.nn.functional.one_hot(nxt, V).float() * 50.0


class AdditionOracle(torch.nn.Module):
    """Adds by hand: reads the operands from the prompt and writes the reverse-order sum with hints."""

    def __init__(self, D: int):
        super().__init__()
        self.D = D

    def forward(self, x: torch.Tensor, **inputs) -> torch.Tensor:
        D = self.D
        PAD, V = D + 13, D + 14
        flat = x.reshape(-1, x.shape[-1])
        nxt = torch.zeros_like(flat)
        for row, seq in enumerate(flat.tolist()):
            a = [t for t in seq[1:2 * D:2] if t != PAD]
            b = [t for t in seq[2 * D + 2:4 * D + 1:2] if t != PAD]
            total = sum(d * 10 ** i for i, d in enumerate(a)) + sum(d * 10 ** i for i, d in enumerate(b))
            c = [(total // 10 ** i) % 10 for i in range(len(a) + 1)]
            result = [t for i, d in enumerate(c) for t in (10 + i, d)]
            result += [PAD] * (2 * (D + 1) - len(result))
            for k, t in enumerate(result):  # result token 4D+2+k is predicted at position 4D+1+k
                nxt[row, 4 * D + 1 + k] = t
        return torch.nn.functional.one_hot(nxt.view_as(x), V).float() * 50.0


def _probe(model, task, seeds, n=24):
    E = len(seeds)
    tasks = [task] * E
    measure = LengthEval.for_seeds(tasks, 0, seeds, n)
    eval_tokens = torch.stack([task.sample(n, make_generator(100 + i)).tokens for i in seeds])
    gt = torch.stack([task.attention_mask] * E)
    metrics, _ = probe(model, [measure], eval_tokens, task.loss_mask, task.output_index, gt, task.n_outputs)
    return {(m.name, label): m.values[:, k] for m in metrics for k, label in enumerate(m.labels)}


def test_a_hand_written_counter_scores_one_on_every_length():
    task = CountConfig(max_number=25, train_max_length=5, eval_lengths=[3, 5, 8, 12]).build(make_generator(0))
    scores = _probe(CountOracle(25), task, [0, 1, 2])
    assert set(scores) == {(m, k) for m in ("id_accuracy", "id_loss") for k in ("", "len:3", "len:5")} | {
        (m, k) for m in ("ood_accuracy", "ood_loss") for k in ("", "len:8", "len:12")}
    for (name, _), values in scores.items():
        assert values.shape == (3,)
        expected = 1.0 if name.endswith("accuracy") else 0.0
        assert values == pytest.approx(expected, abs=1e-6), name
    # stopping at the trained length: perfect in distribution, zero exact match beyond it
    scores = _probe(CountOracle(25, stop_after=5), task, [0, 1])
    assert scores["id_accuracy", ""] == pytest.approx(1.0) and scores["id_accuracy", "len:5"] == pytest.approx(1.0)
    assert scores["ood_accuracy", "len:8"] == pytest.approx(0.0) and scores["ood_accuracy", ""] == pytest.approx(0.0)
    assert (scores["ood_loss", "len:12"] > scores["ood_loss", "len:8"]).all()  # more wrong tokens


def test_a_hand_written_adder_scores_one_on_every_length():
    task = ReverseAdditionConfig(train_max_digits=3, eval_digits=[2, 5]).build(make_generator(0))
    scores = _probe(AdditionOracle(5), task, [0, 1], n=16)
    for (name, _), values in scores.items():
        expected = 1.0 if name.endswith("accuracy") else 0.0
        assert values == pytest.approx(expected, abs=1e-6), name


def test_seed_groups_record_length_metrics_from_the_eval_stream():
    config = ExperimentConfig.from_dict({
        "task": {"name": "count", "max_number": 12, "train_max_length": 4, "eval_lengths": [3, 6]},
        "model": {"layers": 1, "heads": 1, "head_dim": 4},
        "train": {"steps": 2, "seeds": 2, "batch_size": 4, "eval_batch_size": 8}}).resolved()
    group = SeedGroup(config, [1, 0])
    (measure,) = [m for m in group.measurements if isinstance(m, LengthEval)]
    for e, seed in enumerate([1, 0]):
        expected = torch.cat([length_eval_tokens(group.tasks[e], config.train.seed, seed, n, 8) for n in (3, 6)])
        assert torch.equal(measure.tokens[e], expected)
    group.train()
    rows = {(r["metric"], r["index"]) for r in group.metrics.table().to_pylist() if r["step"] == 2}
    assert {("id_accuracy", ""), ("id_accuracy", "len:3"), ("ood_accuracy", "len:6"), ("ood_loss", "")} <= rows
    linear = ExperimentConfig.from_dict({"task": {"name": "linear-map", "state_size": 3, "sparsity": 1},
                                         "model": {"layers": 1, "heads": 1, "head_dim": 4},
                                         "train": {"steps": 1, "seeds": 1}}).resolved()
    assert not any(isinstance(m, LengthEval) for m in SeedGroup(linear, [0]).measurements)


@pytest.mark.parametrize("case", ["count", "count-index", "question-formation", "outside-the-loss"])
def test_scores_at_the_loss_positions_equal_the_full_forwards(case):
    """``loss_position_scores`` (the model asked for the loss positions only) against the reference: the
    full forward's logits into ``sequence_scores``, and the logits at a given position."""
    from emergelab.models import TransformerConfig
    from emergelab.tasks import QuestionFormationConfig
    from emergelab.train.measure_ood import loss_position_scores, sequence_scores

    config = QuestionFormationConfig() if case == "question-formation" else \
        CountConfig(max_number=12, train_max_length=4, eval_lengths=[3, 6])
    task = config.build(make_generator(0))
    mask = task.loss_mask.clone()
    if case == "count-index":
        mask[4] = False  # not one run of positions: an index tensor
    position = {"question-formation": getattr(task, "decision_position", None), "outside-the-loss": 0}.get(case)
    model = TransformerConfig(layers=2, heads=2, head_dim=4, init_std=0.5).resolved(
        task.vocab_size, task.seq_len - 1).build(2, [3, 4])
    tokens = torch.stack([task.sample(32, make_generator(i)).tokens for i in (0, 1)])
    with torch.no_grad():
        scores, at = loss_position_scores(model, tokens, mask, {}, position)
        full = model(tokens[..., :-1])
    torch.testing.assert_close(scores, sequence_scores(full, tokens, mask), rtol=1e-5, atol=1e-6)
    if position is None:
        assert at is None
    else:
        torch.testing.assert_close(at, full[..., position, :], rtol=1e-5, atol=1e-6)


def test_an_output_no_held_out_sequence_has_is_reported_not_zero(tmp_path):
    """eval_batch_size 8: seed 0's held-out counts never reach 10 numbers, so output 10 is not measured: a
    one-line warning (from a worker process too), NaN metrics (not 0, which would read as learned), '?' in
    the run's table and ``not_measured`` in summary.json."""
    import json
    import subprocess
    import sys

    from emergelab.store import RunDir

    out = tmp_path / "count"
    done = subprocess.run([sys.executable, "-m", "emergelab.cli", "run", "count", "--seeds", "2", "--steps", "40",
                           "--set", "train.eval_batch_size=8", "--set", "train.eval_every=20",
                           "--set", "execution.strategy=workers", "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    warning = [line for line in done.stderr.splitlines() if "no held-out sequence of seed 0" in line]
    assert warning == ["emergelab: warning: train.eval_batch_size=8: no held-out sequence of seed 0 has number 10; "
                       "its per-output metrics are NaN (a larger batch measures it)"]
    table = RunDir(out).metrics().to_pylist()
    pos10 = [r["value"] for r in table if r["metric"] == "loss_pos" and r["seed"] == 0 and r["index"] == "10"]
    assert pos10 and all(np.isnan(v) for v in pos10)
    summary = json.loads((out / "summary.json").read_text())
    assert "10" in summary["seeds"]["0"]["not_measured"] and summary["seeds"]["0"]["learned_step"]["10"] is None
    assert summary["seeds"]["0"]["all_learned"] is False  # not measured: not known to be learned
    assert "?: no held-out sequence has this output" in done.stdout
    from emergelab.analysis import analyze_runs
    from emergelab.report.tables import format_positions
    from emergelab.store import connect

    table = format_positions(analyze_runs(connect(out), n_boot=10))
    assert "'?' = not measured" in table
    rows = {line.split()[1]: line.split() for line in table.splitlines() if line.split()[:1] == ["count"]}
    assert rows["1"][3 + 8:] == ["?", "?", "?"] and rows["0"][3 + 10:] == ["?"]  # outputs 8-10 / 10 missing
    seeds = analyze_runs(connect(out), n_boot=10).seeds.to_pylist()
    assert {s["n_outputs"] for s in seeds} == {11} and not any(s["solved"] for s in seeds)


@pytest.mark.parametrize("config", [CountConfig(), ReverseAdditionConfig(),
                                    ReverseAdditionConfig(hints="random-offset")], ids=["count", "add", "add-offset"])
def test_the_optimum_of_zero_holds_on_sampled_sequences(config):
    """Counting and reverse addition report an optimal loss of 0: every scored next token is a function of
    its prefix. Checked on 4096 sampled sequences, independently of the task's own code: no prefix that
    ends at a scored position (``sample_output_index`` >= 0) is followed by two different tokens."""
    task = config.build(make_generator(0))
    assert task.optimal_loss() == 0.0
    tokens = task.sample(4096, make_generator(1)).tokens
    index = task.sample_output_index(tokens)  # [n, P], -1 where the position is not scored
    seen: dict[tuple, int] = {}
    scored = 0
    for row, idx in zip(tokens.tolist(), index.tolist()):
        for p, o in enumerate(idx):
            if o >= 0:
                scored += 1
                assert seen.setdefault(tuple(row[:p + 1]), row[p + 1]) == row[p + 1], (row, p)
    assert scored > 4096
