"""The ``emergelab`` command: bad inputs exit 2 with one line before any work; list; a tiny real run."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from emergelab.cli import main
from emergelab.config import field_names
from emergelab.models import MODELS
from emergelab.presets import PRESETS
from emergelab.tasks import TASKS
from emergelab.train import TrainConfig


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty current directory (the default output ``runs/`` would appear here)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# (arguments after `emergelab run`, words the one error line must contain)
BAD_INPUTS = [
    (["no-such-task"], ["no-such-task", "allowed tasks", "linear-map", "cellular-automata"]),
    (["linear-map", "--set", "model.hedas=3"], ["model.hedas", "allowed fields", "heads", "head_dim"]),
    (["linear-map", "--set", "task.sparisty=3"], ["task.sparisty", "allowed fields", "sparsity"]),
    (["linear-map", "--preset", "nope"], ["nope", "allowed presets", *PRESETS]),
    (["cellular-automata", "--preset", "demo"], ["--preset demo", "linear-map"]),
    (["linear-map", "--preset", "demo", "--set", "model.name=mamba"],
     ["unknown field model.heads", "set by --preset demo", "model.name=transformer", "leave out --preset"]),
    (["linear-map", "--set", "model.name=lru", "--set", "train.bias_beta=3"],
     ["train.bias_beta=3.0", "model.name=lru has no attention scores to bias"]),
    (["linear-map", "--set", "task.sparsity=9"], ["task.sparsity=9", "[1, task.state_size=8]"]),
    (["linear-map", "--set", "task.sparsity=0"], ["task.sparsity=0", "[1, task.state_size=8]"]),
    (["cellular-automata", "--set", "task.alphabet=1"], ["task.alphabet=1", "[2, 1024]"]),
    (["linear-map", "--set", "model.heads=0"], ["model.heads=0", "[1, 4096]"]),
    (["linear-map", "--set", "model.head_dim=-4"], ["model.head_dim=-4", "[1, 65536]"]),
    (["linear-map", "--steps", "0"], ["train.steps=0", "[1, 100000000]"]),
    (["linear-map", "--steps", "1e9"], ["train.steps=1000000000", "[1, 100000000]"]),
    (["linear-map", "--set", "execution.seed_batch=1e30"], ["execution.seed_batch", "[0, 2**63-1]"]),
    (["linear-map", "--seeds", "0"], ["train.seeds=0", "[1, 1000000]"]),
    (["linear-map", "--set", "train.batch_size=0"], ["train.batch_size=0", "[1, inf]"]),
    (["linear-map", "--set", "task.sparsity"], ["task.sparsity", "expected section.field=value"]),
    (["linear-map", "--set", "foo.bar=1"], ["foo", "allowed sections are task, model, train"]),
    (["linear-map", "--set", "sparsity=1"], ["sparsity=1", "section.field"]),
    (["linear-map", "--set", "train.lr=abc"], ["train.lr='abc'", "must be a number"]),
    (["linear-map", "--set", "train.lr=[1"], ["train.lr=[1", "does not parse"]),
    (["linear-map", "--set", "task.name=cellular-automata"], ["task.name", "positional TASK"]),
    (["linear-map", "--strategy", "fast"], ["execution.strategy='fast'", "auto, ensemble, workers"]),
    (["linear-map", "--device", "tpu"], ["execution.device='tpu'", "cpu, cuda"]),
    (["linear-map", "--device", "cpu:abc"], ["execution.device='cpu:abc'", "cpu, cuda"]),
    (["linear-map", "--device", "cpu:3"], ["execution.device='cpu:3'", "one CPU device"]),
    (["linear-map", "--set", "task.sparsity=true"], ["task.sparsity=True", "must be an integer"]),
    (["linear-map", "--set", "model.heads=yes"], ["model.heads=True", "must be an integer"]),
    (["linear-map", "--set", "train.batch_size=64.5"], ["train.batch_size=64.5", "must be an integer"]),
    (["linear-map", "--set", "train.lr=nan"], ["train.lr='nan'", "must be a number"]),
    (["linear-map", "--set", "train.lr=.nan"], ["train.lr=nan", "must be a number"]),
    (["linear-map", "--set", "train.grad_clip=.inf"], ["train.grad_clip=inf", "must be a number"]),
    (["linear-map", "--set", "model.vocab_size=3"], ["model.vocab_size=3", "set by the task", "vocab_size 2"]),
    (["linear-map", "--set", "model.context_length=99"], ["model.context_length=99", "set by the task", "15"]),
    (["linear-map", "--set", "task.state_size=4096"], ["memory", "available", "train.eval_batch_size"]),
    (["linear-map", "--set", "train.batch_size=1e8"], ["memory", "available", "train.batch_size"]),
    (["cellular-automata", "--set", "task.state_size=65536", "--set", "task.trajectory_length=65536"],
     ["model.context_length", "set by the task"]),
    (["cellular-automata", "--set", "task.state_size=1024", "--set", "task.trajectory_length=64"],
     ["memory", "available"]),
    (["linear-map", "--set", "train.bias_beta=1", "--set", "train.bias_heads=[4]"],
     ["train.bias_heads=[4]", "[0, 3]", "model.heads=4"]),
    (["linear-map", "--steps", "abc"], ["--steps", "invalid int value"]),
    (["linear-map", "--no-such-flag"], ["unrecognized arguments", "--no-such-flag"]),
]


@pytest.mark.parametrize("args,words", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line_before_any_work(workdir, capsys, args, words):
    out = workdir / "out"
    code = main(["run", *args, "--out", str(out), "--quiet", "--no-figures"])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("emergelab: error: ")
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert captured.out == ""  # nothing started, not even the "run directory" line
    assert list(workdir.iterdir()) == []  # no run directory, no default runs/ folder


def test_cuda_when_unavailable(workdir, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        code = main(["run", "linear-map", "--device", device, "--out", str(workdir / "out")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1
        assert f"execution.device={device!r}" in err[0] and "CUDA is not available" in err[0] and "cpu" in err[0]
    assert list(workdir.iterdir()) == []


def test_missing_command_and_task(workdir, capsys):
    for argv in ([], ["run"], ["frobnicate"]):
        assert main(argv) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_report_on_a_non_run(workdir, capsys):
    assert main(["report", str(workdir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a run directory" in err[0]
    assert main(["report", str(workdir / "nope")]) == 2  # named as analyze, check and query name it
    assert capsys.readouterr().err.strip() == f"emergelab: error: {workdir / 'nope'}: no such file or directory"
    (workdir / "sweep").mkdir()
    (workdir / "sweep" / "sweep.json").write_text("{}")
    assert main(["report", str(workdir / "sweep")]) == 2  # a sweep has an HTML page, not figures of its own
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a sweep directory" in err[0] and "--html" in err[0]
    (workdir / "outer" / "inner").mkdir(parents=True)  # a reproduce folder: its sweeps one level down
    (workdir / "outer" / "inner" / "sweep.json").write_text("{}")
    assert main(["report", str(workdir / "outer"), "--html"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"below it: {workdir / 'outer' / 'inner'}" in err[0], err


def test_bad_input_in_a_real_process(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "emergelab.cli", "run", "linear-map", "--set", "model.hedas=3",
                           "--out", str(out)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "model.hedas" in done.stderr and "allowed fields" in done.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_reader_that_leaves_early_ends_the_command_quietly(tmp_path):
    """`emergelab list | head -1`: no BrokenPipeError traceback; the shell's 128 + SIGPIPE. The reader closes
    its end before the command has imported, so every write finds the pipe broken."""
    command = subprocess.Popen([sys.executable, "-m", "emergelab.cli", "list"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=tmp_path)
    command.stdout.close()
    err = command.stderr.read().decode()
    assert command.wait(timeout=60) == 141 and err == ""


def test_list_shows_tasks_fields_and_presets(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for name, cls in TASKS.items():
        assert name in text
        line = next(l for l in text.splitlines() if l.strip().startswith("task.* fields") and
                    all(f"{f}=" in l for f in field_names(cls)))
        assert line
    for cls in MODELS.values():
        assert all(f"{f}=" in text for f in field_names(cls))
    assert all(f"{f}=" in text for f in field_names(TrainConfig))
    for name, preset in PRESETS.items():
        assert name in text and preset["description"] in text
    from emergelab.models import native

    kernels = text.split("this machine's CPU training kernels")[1]
    if native.kernels() is not None:
        assert str(native.kernels().path) in kernels and "(the reference bits)" in kernels
    else:
        assert "C kernels: " in kernels
    from emergelab.models import onednn

    assert ("matrix products: oneDNN" if onednn.available() else "matrix products: torch's baddbmm") in kernels


def test_list_says_why_there_are_no_kernels(capsys, monkeypatch):
    from emergelab.models import native

    monkeypatch.setenv("EMERGELAB_NATIVE", "0")
    assert main(["list"]) == 0
    assert "C kernels: off (EMERGELAB_NATIVE=0)" in capsys.readouterr().out
    monkeypatch.setenv("EMERGELAB_NATIVE", "1")
    monkeypatch.setenv("CC", "/nonexistent-compiler")
    native.kernels.cache_clear()
    try:
        assert main(["list"]) == 0
        assert "C kernels: not built: emergelab: no C compiler" in capsys.readouterr().out
    finally:
        native.kernels.cache_clear()


def test_list_says_which_library_multiplies(capsys, monkeypatch):
    from emergelab.models import onednn

    monkeypatch.setenv("EMERGELAB_ONEDNN", "0")
    onednn.available.cache_clear()
    try:
        assert main(["list"]) == 0
        assert "matrix products: torch's baddbmm (oneDNN: EMERGELAB_ONEDNN=0)" in capsys.readouterr().out
    finally:
        monkeypatch.delenv("EMERGELAB_ONEDNN")
        onednn.available.cache_clear()


def test_tiny_run_writes_the_run_directory(workdir, capsys):
    out = workdir / "tiny"
    code = main(["run", "linear-map", "--steps", "20", "--seeds", "2", "--out", str(out), "--no-figures",
                 "--quiet", "--set", "model.head_dim=4"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[0] == f"run directory: {out}"
    assert lines[1].startswith("estimate: about ") and "peak memory about" in lines[1]
    assert any(l.startswith("linear-map: 20 steps; optimal loss 0.3235") for l in lines)
    header = next(i for i, l in enumerate(lines) if "final loss" in l and "seed" in l)
    rows = [l.split() for l in lines[header + 1:header + 3]]
    assert [r[0] for r in rows] == ["0", "1"]
    assert all(0.0 < float(r[1]) < 1.0 and len(r[3:]) == 8 for r in rows)  # loss, gap, 8 learned steps
    for name in ("config.yaml", "metrics.parquet", "summary.json"):
        assert (out / name).is_file()
    for seed in ("seed-000", "seed-001"):
        assert any((out / "checkpoints" / seed).glob("step-*.safetensors"))
        assert (out / "checkpoints" / seed / "step-00000020.safetensors").is_file()
    assert not (out / "state").exists() and not (out / "figures").exists()
    assert [p.name for p in workdir.iterdir()] == ["tiny"]
    # re-running the same command finds it finished, says so and prints the same summary
    assert main(["run", "linear-map", "--steps", "20", "--seeds", "2", "--out", str(out), "--no-figures",
                 "--quiet", "--set", "model.head_dim=4"]) == 0
    again = capsys.readouterr().out.splitlines()
    assert again[0] == lines[0] and again[1] == f"{out}: already finished; nothing to train"
    assert lines[2].startswith("trained in ") and "(estimated " in lines[2]  # only when it trained
    assert again[2:] == lines[3:]


def test_ctrl_c_while_the_command_line_imports_is_one_line():
    """A Ctrl-C in the first second or two (torch and pyarrow importing) ends like one later: one line,
    exit 130, no traceback. The interrupt is raised where the import of ``emergelab.cli`` starts."""
    import subprocess
    import sys

    code = ("import sys\n"
            "class Interrupt:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'emergelab.cli':\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Interrupt())\n"
            "from emergelab._entry import entry\n"
            "entry()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130 and done.stderr == "emergelab: interrupted\n", done.stderr


def test_sigterm_stops_a_run_like_ctrl_c(tmp_path):
    """SIGTERM (a scheduler, `kill`) to the console command: workers stopped, one line, exit 143; the
    workers themselves keep SIGTERM's default action (the parent stops them with it)."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    command = [sys.executable, "-c", "from emergelab._entry import entry; entry()", "run", "linear-map",
               "--preset", "linear-map-tiny", "--steps", "50000", "--strategy", "workers", "--no-figures",
               "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("run directory:")
    deadline = time.monotonic() + 60
    while not list(out.glob("state/group-*")) and time.monotonic() < deadline:  # the workers have started
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.replace("\r", "\n").rstrip().splitlines()[-1] == \
        "emergelab: terminated; re-run the same command to resume"
    assert "Traceback" not in err


def test_a_sigterm_is_reported_as_one_when_a_library_raised_its_own_keyboard_interrupt(capsys, monkeypatch):
    """Ray's ``ray.wait`` catches the stop raised in it and raises a plain KeyboardInterrupt: a SIGTERM to
    ``emergelab sweep --executor ray`` said "interrupted" and exited 130. The command's handler remembers
    the SIGTERM (``cli.terminated``)."""
    import signal

    from emergelab import cli

    monkeypatch.setattr(cli, "TERMINATED", [])

    def stopped_inside_a_library(args):
        cli.terminated()  # what the SIGTERM handler does
        raise KeyboardInterrupt  # what the library raised instead of it

    monkeypatch.setitem(cli.COMMANDS, "list", stopped_inside_a_library)
    assert main(["list"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip() == "emergelab: terminated"
    monkeypatch.setattr(cli, "TERMINATED", [])
    monkeypatch.setitem(cli.COMMANDS, "list", lambda args: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(["list"]) == 130 and capsys.readouterr().err.strip() == "emergelab: interrupted"


def test_copies_of_earlier_outputs_are_marked_in_the_run_table(workdir, capsys):
    """The linear map records each bit's fan-in at step 0 (``fan_in``, from ``tasks.shortcut_fan_in``); the
    summary keeps it and the run table marks a copy (fan-in 1) with ``c``. Master seed 0, S = 8, s = 3: seed
    0's bit 5 repeats bit 3 (equal rows), seed 1 has no copy; ``task.rows=distinct`` has none."""
    from emergelab.tasks import seed_task, shortcut_fan_in
    from emergelab.train import ExperimentConfig

    args = ["run", "linear-map", "--steps", "10", "--seeds", "2", "--no-figures", "--quiet",
            "--set", "task.state_size=8", "--set", "task.sparsity=3", "--set", "model.head_dim=4"]
    assert main(args + ["--out", str(workdir / "plain")]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, l in enumerate(lines) if "final loss" in l and "seed" in l)
    steps = [l.split()[3:] for l in lines[header + 1:header + 3]]
    assert [i for i, s in enumerate(steps[0]) if s.endswith("c")] == [5] and not any("c" in s for s in steps[1])
    assert any(l.startswith("(c: equal to an earlier output") for l in lines)
    config = ExperimentConfig.from_dict({"task": {"name": "linear-map", "state_size": 8, "sparsity": 3}}).resolved()
    summary = json.loads((workdir / "plain" / "summary.json").read_text())
    for seed in (0, 1):
        expected = [fan for fan, _ in shortcut_fan_in(seed_task(config.task, 0, seed).matrix)]
        assert list(summary["seeds"][str(seed)]["fan_in"].values()) == expected
    metrics = pq.read_table(workdir / "plain" / "metrics.parquet").to_pylist()
    assert {row["step"] for row in metrics if row["metric"] == "fan_in"} == {0}
    assert main(["analyze", str(workdir / "plain"), "--out", str(workdir / "analysis")]) == 0
    lines = capsys.readouterr().out.splitlines()
    top = next(i for i, l in enumerate(lines) if l.startswith("emergence step per output"))
    assert "'c' = equal to an earlier output" in lines[top]
    table = [l.split() for l in lines[top + 2:top + 4]]  # rows of seeds 0 and 1: run, seed, loss, outputs
    assert [i for i, cell in enumerate(table[0][3:]) if cell.endswith("c")] == [5]
    assert not any(cell.endswith("c") for cell in table[1][3:])
    assert main(args + ["--set", "task.rows=distinct", "--out", str(workdir / "distinct")]) == 0
    assert not any(l.startswith("(c:") for l in capsys.readouterr().out.splitlines())
