"""The run store: atomic writes, the metrics table, run directories, and DuckDB over many runs."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from emergelab import __version__
from emergelab.store import (SCHEMA, MetricsBuffer, RunDir, atomic_write, connect, curve, sort_rows,
                             write_parquet, write_safetensors, write_text)
from emergelab.store.metrics import arrow_owned
from emergelab.train import ExperimentConfig, SeedGroup, train
from emergelab.train import load_model
from emergelab.train.schedule import log_spaced_steps


def tiny_config(sparsity: int = 2, **train_fields) -> ExperimentConfig:
    fields = {"steps": 12, "batch_size": 8, "eval_every": 4, "eval_batch_size": 16, "checkpoints": 3,
              "attention_snapshots": 3, "seeds": 2, **train_fields}
    return ExperimentConfig.from_dict({"task": {"name": "linear-map", "state_size": 6, "sparsity": sparsity},
                                       "model": {"layers": 1, "heads": 2, "head_dim": 4, "mlp_ratio": 2},
                                       "train": fields}).resolved()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[RunDir, RunDir]:
    """Two finished runs (sparsity 2 and 3) below one folder."""
    root = tmp_path_factory.mktemp("runs")
    return (train(tiny_config(2), root / "s2", progress=False),
            train(tiny_config(3), root / "nested" / "s3", progress=False))


# ----------------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------------


def test_atomic_write_leaves_only_the_target(tmp_path):
    write_text(tmp_path / "a" / "b.txt", "hello")  # creates the parent folder
    assert (tmp_path / "a" / "b.txt").read_text() == "hello"
    write_text(tmp_path / "a" / "b.txt", "again")
    assert (tmp_path / "a" / "b.txt").read_text() == "again"
    table = pa.table({"x": [1, 2, 3]})
    write_parquet(tmp_path / "a" / "t.parquet", table)
    assert pq.read_table(tmp_path / "a" / "t.parquet").equals(table)
    write_safetensors(tmp_path / "a" / "w.safetensors", {"w": torch.arange(6.0).view(2, 3).t()},
                      metadata={"k": "v"})  # non-contiguous input is fine
    from safetensors.torch import load_file

    torch.testing.assert_close(load_file(str(tmp_path / "a" / "w.safetensors"))["w"], torch.arange(6.0).view(2, 3).t())
    assert sorted(os.listdir(tmp_path / "a")) == ["b.txt", "t.parquet", "w.safetensors"]


def test_the_same_tensors_and_metadata_give_the_same_bytes(tmp_path):
    """safetensors orders the metadata at random (a Rust HashMap): 30 saves of the same dict gave 16
    different headers before ``sort_safetensors_metadata``."""
    import hashlib

    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = {"b": torch.randn(3, 5), "a": torch.arange(7), "h": torch.ones(2, dtype=torch.float16)}
    metadata = {"step": "3000", "seed": "1", "zeta": "\u00e9", "alpha": "x"}
    digests = set()
    for i in range(20):
        path = write_safetensors(tmp_path / f"w{i}.safetensors", tensors, metadata=metadata)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    loaded = load_file(str(path))
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == metadata


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failed_write_keeps_the_old_file(tmp_path, error):
    target = tmp_path / "file.txt"
    write_text(target, "old complete content")

    def write_half_then_fail(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("new but only ha")
        raise error("disk full")

    with pytest.raises(error):
        atomic_write(target, write_half_then_fail)
    assert target.read_text() == "old complete content"
    assert os.listdir(tmp_path) == ["file.txt"]  # no temporary file left behind


def test_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        atomic_write(tmp_path / "new.txt", lambda tmp: (_ for _ in ()).throw(ValueError("boom")))
    assert os.listdir(tmp_path) == []


def test_reader_never_sees_a_partial_file(tmp_path):
    target = tmp_path / "file.txt"
    write_text(target, "A" * 1000)
    seen = []

    def write_slowly(tmp: str) -> None:
        with open(tmp, "w") as f:
            for _ in range(10):
                f.write("B" * 100)
                f.flush()
                seen.append(target.read_text())  # what a concurrent reader would see meanwhile

    atomic_write(target, write_slowly)
    assert set(seen) == {"A" * 1000}
    assert target.read_text() == "B" * 1000


# ----------------------------------------------------------------------------------------------------
# Metrics table
# ----------------------------------------------------------------------------------------------------


def test_metrics_buffer_round_trip(tmp_path):
    buffer = MetricsBuffer()
    assert buffer.table().schema == SCHEMA and buffer.table().num_rows == 0
    buffer.add(0, np.array([3, 5]), "loss", [""], np.array([[0.7], [0.6]]))
    buffer.add(10, np.array([3, 5]), "attn_entropy", ["0.0", "0.1"], np.array([[1.0, 2.0], [3.0, 4.0]]))
    buffer.add(10, np.array([3, 5]), "loss", [""], np.array([0.5, 0.4]))  # [E] reshapes to [E, 1]
    table = buffer.table()
    assert table.schema == SCHEMA
    assert table.num_rows == 2 + 4 + 2
    assert table.slice(2, 4).to_pylist() == [
        {"step": 10, "seed": 3, "metric": "attn_entropy", "index": "0.0", "value": 1.0},
        {"step": 10, "seed": 3, "metric": "attn_entropy", "index": "0.1", "value": 2.0},
        {"step": 10, "seed": 5, "metric": "attn_entropy", "index": "0.0", "value": 3.0},
        {"step": 10, "seed": 5, "metric": "attn_entropy", "index": "0.1", "value": 4.0},
    ]
    write_parquet(tmp_path / "m.parquet", table)
    back = pq.read_table(tmp_path / "m.parquet")
    assert back.schema == SCHEMA and back.equals(table)

    again = MetricsBuffer()
    again.extend(back)
    assert again.table().equals(table)
    steps, values = curve(table, "loss", 5)
    assert steps.tolist() == [0, 10] and values.tolist() == [0.6, 0.4]
    steps, values = curve(table, "attn_entropy", 3, "0.1")
    assert steps.tolist() == [10] and values.tolist() == [2.0]

    ordered = sort_rows(table)
    keys = list(zip(ordered["seed"].to_pylist(), ordered["metric"].to_pylist(), ordered["index"].to_pylist(),
                    ordered["step"].to_pylist()))
    assert keys == sorted(keys)
    with pytest.raises(ValueError):
        buffer.add(0, np.array([1, 2]), "loss", [""], np.zeros(3))  # wrong number of values



def test_metrics_buffer_merges_blocks_and_owns_its_memory():
    """Against a slow reference (one table per block): the same rows in the same order, in O(log n)
    tables, and no buffer shared with the numpy arrays it was given (MetricsBuffer's docstring: why)."""
    rng = np.random.default_rng(0)
    buffer, blocks = MetricsBuffer(), []
    for step in range(300):
        seeds = np.array([0, 1, 2])
        labels = [str(i) for i in range(int(rng.integers(1, 9)))]
        values = rng.normal(size=(3, len(labels)))
        before = buffer.num_rows
        buffer.add(step, seeds, "m", labels, values)
        blocks.append(pa.table({"step": np.full(3 * len(labels), step, dtype=np.int64),
                                "seed": np.repeat(seeds.astype(np.int32), len(labels)),
                                "metric": ["m"] * (3 * len(labels)), "index": labels * 3,
                                "value": values.reshape(-1)}, schema=SCHEMA))
        assert buffer.rows_since(before).equals(blocks[-1])
        sizes = [t.num_rows for t in buffer.chunks]
        assert all(a > 2 * b for a, b in zip(sizes, sizes[1:]))
        assert len(buffer.chunks) <= buffer.num_rows.bit_length()
    assert buffer.table().equals(pa.concat_tables(blocks).combine_chunks())
    assert buffer.rows_since(buffer.num_rows).num_rows == 0 and MetricsBuffer().rows_since(0).num_rows == 0

    capped = MetricsBuffer()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("emergelab.store.metrics.MERGE_UP_TO", 40)
        for block in blocks:
            capped.extend(block)
    assert capped.table().equals(buffer.table())
    sizes = [t.num_rows for t in capped.chunks]
    assert max(sizes) < 2 * 40 + 3 * 8 and len(sizes) <= capped.num_rows // 40 + 8  # none merged past the cap

    values = np.arange(6, dtype=np.float64)
    owned = arrow_owned(values)
    assert owned.to_pylist() == values.tolist() and owned.buffers()[1].address != values.ctypes.data
    assert pa.array(values).buffers()[1].address == values.ctypes.data  # what arrow_owned avoids
def test_run_metrics_follow_the_schema(two_runs):
    run = two_runs[0]
    table = run.metrics()
    assert table.schema == SCHEMA
    assert sort_rows(table).equals(table)
    metrics = set(table["metric"].to_pylist())
    assert {"loss", "accuracy", "target_prob", "loss_pos", "accuracy_pos", "target_prob_pos", "attn_entropy",
            "attn_gt_mass", "attn_entropy_pos", "attn_gt_mass_pos", "train_loss", "lr"} <= metrics
    assert set(table["seed"].to_pylist()) == {0, 1}
    assert set(curve(table, "loss_pos", 0, "5")[0].tolist()) >= {0, 4, 8, 12}  # one per output bit x1[i]
    assert {i for m, i in zip(table["metric"].to_pylist(), table["index"].to_pylist())
            if m == "attn_entropy"} == {"0.0", "0.1"}


# ----------------------------------------------------------------------------------------------------
# Run directories
# ----------------------------------------------------------------------------------------------------


def test_config_yaml_records_version_and_commit(two_runs):
    run = two_runs[0]
    data = yaml.safe_load(run.config_path.read_text())
    assert data["emergelab"]["version"] == __version__
    assert "git_commit" in data["emergelab"]
    commit = data["emergelab"]["git_commit"]
    assert commit is None or (len(commit) == 40 and int(commit, 16) >= 0)
    assert data["task"]["sparsity"] == 2 and data["model"]["vocab_size"] == 2  # the resolved config
    assert ExperimentConfig.from_run(run) == tiny_config(2)
    assert run.is_complete() and run.summary()["seeds"].keys() == {"0", "1"}


def test_load_model_matches_the_ensemble_member(tmp_path):
    config = tiny_config(steps=12, checkpoints=3)
    run = RunDir(tmp_path / "run")
    run.write_config(config.to_dict())
    group = SeedGroup(config, [4, 7], run=run)
    step = 3  # checkpoints are log-spaced over 12 steps: 0, 1, 3, 12
    group.train(stop_after=step + 1)  # a step past the checkpoint: the ensemble has moved on
    assert run.checkpoint_steps(7) == [0, 1, 3]
    tokens = group.eval_tokens[..., :-1]  # [E, B, P]
    at_checkpoint = SeedGroup(config, [4, 7])
    at_checkpoint.train(stop_after=step)
    with torch.no_grad():
        moved_on = group.model(tokens)
        ensemble_logits = at_checkpoint.model(tokens)  # [E, B, P, V]
        for e, seed in enumerate((4, 7)):
            single = load_model(run, seed, step)
            assert single.n_models == 1
            torch.testing.assert_close(single(tokens[e]), ensemble_logits[e], rtol=0, atol=1e-6)
    # the checkpoint is of that step, not of another
    with torch.no_grad():
        assert not torch.allclose(load_model(run, 7, 1)(tokens[1]), ensemble_logits[1])
        assert not torch.allclose(moved_on[1], ensemble_logits[1])
    with pytest.raises(FileNotFoundError, match="saved steps"):
        load_model(run, 7, 2)


def test_nearest_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(FileNotFoundError):
        run.nearest_checkpoint(0, 5)
    for step in (0, 10, 100, 1000):
        run.save_checkpoint(0, step, {"w": torch.zeros(1)})
    (run.checkpoint_path(0, 50).parent / ".step-00000050.safetensors.abc.tmp").write_text("")  # ignored
    assert run.checkpoint_steps(0) == [0, 10, 100, 1000]
    assert run.checkpoint_steps(1) == []
    assert [run.nearest_checkpoint(0, s) for s in (0, 4, 6, 55, 56, 549, 551, 5000)] == [
        0, 0, 10, 10, 100, 100, 1000, 1000]
    assert run.nearest_checkpoint(0, 5) == 0  # a tie goes to the earlier step


def test_load_attention_shape(two_runs):
    run = two_runs[0]
    config = ExperimentConfig.from_run(run)
    steps = run.attention_steps(1)
    assert steps[0] == 0 and steps[-1] == config.train.steps
    assert steps == log_spaced_steps(config.train.steps, config.train.attention_snapshots)  # every one, no more
    pattern = run.load_attention(1, steps[-1])
    P = config.model.context_length
    assert pattern.shape == (config.model.layers, config.model.heads, P, P)  # [layers, heads, P, P]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(1, 2, P))  # rows of a softmax
    assert torch.all(pattern.triu(1) == 0)  # causal


def test_connect_over_many_runs(two_runs, tmp_path):
    root = two_runs[0].path.parent
    con = connect(root)
    assert con.execute("SELECT count(DISTINCT run) FROM metrics").fetchone()[0] == 2
    rows = con.execute('''SELECT r."task.sparsity" AS s, count(DISTINCT m.seed) AS seeds, min(m.step), max(m.step)
                      FROM metrics m JOIN runs r USING (run) WHERE m.metric = 'loss'
                      GROUP BY ALL ORDER BY s''').fetchall()
    assert rows == [(2, 2, 0, 12), (3, 2, 0, 12)]
    runs = dict(con.execute('SELECT run, "task.sparsity" FROM runs').fetchall())
    assert runs == {str(two_runs[0].path): 2, str(two_runs[1].path): 3}
    total = sum(run.metrics().num_rows for run in two_runs)
    assert con.execute("SELECT count(*) FROM metrics").fetchone()[0] == total
    assert con.execute('SELECT "emergelab.version" FROM runs LIMIT 1').fetchone()[0] == __version__
    # one run directory on its own
    assert connect(two_runs[1].path).execute("SELECT count(DISTINCT run) FROM metrics").fetchone()[0] == 1
    with pytest.raises(FileNotFoundError):
        connect(tmp_path / "empty")


def test_a_forked_child_does_not_keep_its_dead_parents_lock(tmp_path):
    """The training workers are forked: were they to keep the run's lock (flock, shared through the
    inherited descriptor), a run whose main process was killed could not resume until they exit."""
    import subprocess
    import sys

    from emergelab.store.locks import is_locked

    lock, ready = tmp_path / "run.lock", tmp_path / "child-started"
    code = (
        "import multiprocessing as mp, os, sys, time, pathlib\n"
        "from emergelab.store.locks import locked\n"
        "def child(ready):\n"
        "    null = os.open(os.devnull, os.O_WRONLY)\n"
        "    os.dup2(null, 1), os.dup2(null, 2)  # let the test's pipe close when the parent exits\n"
        "    pathlib.Path(ready).touch()\n"
        "    time.sleep(30)\n"
        f"with locked({str(lock)!r}):\n"
        f"    p = mp.get_context('fork').Process(target=child, args=({str(ready)!r},), daemon=False)\n"
        "    p.start()\n"
        f"    while not os.path.exists({str(ready)!r}): time.sleep(0.01)\n"
        "    print(p.pid, flush=True)\n"
        "    os._exit(0)  # as if killed: the lock is not released by the process itself\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    child = int(out.stdout.split()[0])
    try:
        assert os.path.exists(f"/proc/{child}")  # the forked child still runs
        assert not is_locked(lock)
    finally:
        os.kill(child, 9)


def test_one_line_warnings_are_one_write_and_clear_a_terminal_line():
    """A worker's warning lands beside other workers' and a progress bar: one write of one line, which on a
    terminal first clears the line (the bar redraws below it)."""
    import io

    from emergelab.store.verify import _one_line_warning
    from emergelab.train.measure import UnmeasuredOutputWarning

    show = _one_line_warning(lambda *args: None)  # what the store installs as warnings.showwarning

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, prefix in ((io.StringIO(), ""), (Terminal(), "\r\x1b[K")):
        writes = []
        write = stream.write
        stream.write = lambda text, write=write: (writes.append(text), write(text))[1]
        show("no held-out sequence", UnmeasuredOutputWarning, "f.py", 1, stream)
        assert writes == [f"{prefix}emergelab: warning: no held-out sequence\n"]
