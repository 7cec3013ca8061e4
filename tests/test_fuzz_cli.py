"""Fuzzing ``emergelab run`` / ``patch`` / ``report`` in-process: seeded random combinations of fields,
values (types, ranges, notations, unicode, empty), devices and output paths. Every outcome is exit 0, or
exit 2 with exactly one line on stderr; never a traceback, never another exception.

Every case either fails validation or is a tiny run (``--steps 2``, a 4-dim model, batches of 4); values
large enough to be slow (``1e8``) are in fields the memory estimate or a range check refuses.
"""

from __future__ import annotations

import random

import pytest

from emergelab.cli import main

FIELDS = {
    "task": ["state_size", "sparsity", "trajectory_length", "alphabet", "window", "rules", "boundary", "name",
             "nope"],
    "model": ["layers", "heads", "head_dim", "d_model", "mlp_ratio", "init_std", "vocab_size", "context_length",
              "name", "expand", "state_size"],
    "train": ["batch_size", "lr", "weight_decay", "beta1", "beta2", "warmup_steps", "schedule", "min_lr_ratio",
              "grad_clip", "eval_every", "eval_batch_size", "checkpoints", "attention_snapshots", "seeds", "seed",
              "bias_beta", "bias_layers", "bias_heads", "bias_steps", "bias_schedule", "strategy"],
    "execution": ["strategy", "workers", "threads", "seed_batch", "resume_every", "device"],
}
VALUES = ["1", "2", "3", "0", "-1", "1e0", "2.0", "1e-3", "1E-3", "1e8", "64.5", "nan", ".nan", "inf", ".inf", "-inf",
          "true", "false", "null", "~", "[1,2]", "[0]", "{}", "{a: 1}", "", "é", "日本", "abc", "0x10", "1_000",
          "2020-01-01", "'3'", "\"1e-3\"", "[", "cosine", "constant", "linear", "all", "periodic", "zero",
          "ensemble", "auto", "fast", "cpu", "mamba", "transformer", "lru", "linear-map", "1e400", "9" * 30]
PLAUSIBLE = ["1", "2", "1e0", "2.0", "1e-3", "5e-3", "0", "0.5", "1e8"]
DEVICES = ["cpu", "cpu:0", "cpu:1", "cpu:abc", "mps", "", "é", "cuda:x", "tpu", "CPU"]
TASKS = ["linear-map", "cellular-automata", "nope", ""]


def tiny_base(task: str, model_name: str | None) -> list[str]:
    base = ["--steps", "2", "--quiet", "--no-figures", "--set", "train.batch_size=4", "--set", "train.eval_batch_size=4",
            "--set", "train.checkpoints=1", "--set", "train.attention_snapshots=1", "--set", "execution.threads=1"]
    if model_name is None:
        base += ["--set", "model.head_dim=4", "--set", "model.heads=2"]
    else:
        base += ["--set", f"model.name={model_name}", "--set", "model.d_model=8"]
    if task == "cellular-automata":
        base += ["--set", "task.state_size=4", "--set", "task.trajectory_length=3"]
    return base


def make_case(rng: random.Random, tmp_path) -> list[str]:
    kind = rng.random()
    task = rng.choice(TASKS[:2]) if rng.random() < 0.9 else rng.choice(TASKS)
    model_name = None if rng.random() < 0.8 else rng.choice(["mamba", "lru", "mlstm", "mlp_mixer"])
    argv = ["run", task, *tiny_base(task, model_name)]
    for _ in range(rng.randint(0, 3)):
        section = rng.choice(list(FIELDS))
        value = rng.choice(PLAUSIBLE if rng.random() < 0.6 else VALUES)
        argv += ["--set", f"{section}.{rng.choice(FIELDS[section])}={value}"]
    if rng.random() < 0.1:
        argv += ["--set", rng.choice(["train.lr", "train", "=1", "train.lr:1", "a.b.c=1", "task.=2", ".x=1"])]
    if rng.random() < 0.15:
        argv += ["--device", rng.choice(DEVICES)]
    if rng.random() < 0.1:
        argv += [rng.choice(["--seeds", "--steps"]), rng.choice(["0", "2", "1e0", "abc", "-1", "2.5", ""])]
    if rng.random() < 0.05:
        argv += ["--preset", rng.choice(["demo", "nope", "cellular-automata-small", ""])]
    if rng.random() < 0.05:
        argv += ["--strategy", rng.choice(["ensemble", "workers-x", "auto", ""])]
    out = rng.choice(["new", "new", "new", "new", "new", "file", "under-file", "full-dir", "empty-dir", "unicode", "long", "nested"])
    argv += ["--out", str(out_path(out, tmp_path, rng))]
    if kind < 0.05:  # other commands
        argv = rng.choice([["report", str(out_path("full-dir", tmp_path, rng))], ["list"], ["--version"], [],
                           ["analyze", str(tmp_path / "nothing")], ["frobnicate"], ["run"],
                           ["patch", str(tmp_path), "--early", "1", "--late", "2"],
                           ["patch", str(tmp_path), "--early", "x", "--late", "2"]])
    return argv


def out_path(kind: str, tmp_path, rng: random.Random):
    name = f"case{rng.randrange(10 ** 9)}"
    if kind == "file":
        path = tmp_path / f"{name}.txt"
        path.write_text("x")
        return path
    if kind == "under-file":
        path = tmp_path / f"{name}.txt"
        path.write_text("x")
        return path / "run"
    if kind == "full-dir":
        path = tmp_path / name
        path.mkdir()
        (path / "notes.txt").write_text("x")
        return path
    if kind == "empty-dir":
        path = tmp_path / name
        path.mkdir()
        return path
    if kind == "unicode":
        return tmp_path / f"ü é 日本 {name}"
    if kind == "long":
        return tmp_path / ("x" * 300)
    if kind == "nested":
        return tmp_path / name / "a" / "b"
    return tmp_path / name


def check(argv: list[str], capsys) -> int:
    try:
        code = main(argv)
    except BaseException as error:  # noqa: BLE001 - the point is that nothing escapes
        raise AssertionError(f"{argv}: {type(error).__name__}: {error}") from error
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out, argv
    assert code in (0, 2), (argv, code, captured.err)
    if code == 2:
        lines = captured.err.strip("\n").split("\n")
        assert len(lines) == 1 and lines[0].startswith("emergelab: error: "), (argv, captured.err)
    return code


def run_fuzz(n: int, seed: int, tmp_path, capsys, monkeypatch) -> dict[int, int]:
    monkeypatch.chdir(tmp_path)
    rng = random.Random(seed)
    codes = {0: 0, 2: 0}
    for _ in range(n):
        codes[check(make_case(rng, tmp_path), capsys)] += 1
    return codes


def test_fuzz_cli(tmp_path, capsys, monkeypatch):
    codes = run_fuzz(150, 0, tmp_path, capsys, monkeypatch)
    assert codes[0] >= 10 and codes[2] >= 50, codes  # both outcomes are exercised


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fuzz_cli_more(tmp_path, capsys, monkeypatch, seed):
    run_fuzz(500, seed, tmp_path, capsys, monkeypatch)
