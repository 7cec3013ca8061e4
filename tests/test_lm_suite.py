"""``lm.suite`` and ``emergelab reproduce lm-emergence --pythia``, offline: local suites of tiny GPT-NeoX
models stand in for Pythia.

* sizes parse and order by parameter count ("10m" after "2m", "1.4b" after "1b");
* the seed shown is the largest size's emerged seed with the median step;
* the suite scan end to end (Python API and CLI with ``--local``): the planted emergence revisions, the
  table (unsolved seeds "not by" the last revision), a drawn figure, the patching at the shown seed's
  emergence revision, RESULT.md; a re-run fetches nothing and reuses the patching;
* bad input and an unreachable or offline hub are one line and exit 2.

The suites: ``DIR/<size>/seed<k>/step<N>/`` for sizes "2m" (hidden 32) and "10m" (hidden 48), seeds 0
and 1. Each size has a model trained for ~90 steps on digit repetition ("good") and its initialisation;
revision ``stepN`` holds the init weights before the seed's planted step and the good ones from it on,
each plus a little noise, so the capability emerges exactly at the planted step (builders as in
tests/test_lm.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from transformers import GPTNeoXConfig, GPTNeoXForCausalLM  # noqa: E402

import test_lm  # noqa: E402  (the tiny GPT-NeoX builders of the single-suite tests)
from emergelab.cli import main  # noqa: E402
from emergelab.config import ConfigError  # noqa: E402
from emergelab.lm import ScanConfig  # noqa: E402
from emergelab.lm.scan import ScanResult, SeedScan  # noqa: E402
from emergelab.lm.suite import (estimate_evaluations, order_sizes, parse_size, parse_sizes, pick_seed,  # noqa: E402
                                scan_suite, suite_sources)

ROOT = Path(__file__).resolve().parents[1]
STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256]
HIDDEN = {"2m": 32, "10m": 48}
PLANTED = {"2m": {0: 16, 1: 64}, "10m": {0: 4, 1: None}}  # size -> seed -> first trained revision (None: never)
REP = {"length": 8, "repeat": 4}  # the repetition prompts the tiny models were trained for
KNOBS = ["--param", "length=8", "--param", "repeat=4", "--n-prompts", "64", "--coarse", "5"]


def tiny_config(hidden: int) -> GPTNeoXConfig:
    return test_lm.tiny_config(hidden_size=hidden, intermediate_size=2 * hidden)


@pytest.fixture(scope="module")
def suites(tmp_path_factory) -> Path:
    """``DIR/<size>/seed<k>/step<N>/`` (see the module doc)."""
    root = tmp_path_factory.mktemp("suites")
    for size, planted_by_seed in PLANTED.items():
        torch.manual_seed(0)
        model = GPTNeoXForCausalLM(tiny_config(HIDDEN[size]))
        init = {k: v.clone() for k, v in model.state_dict().items()}
        test_lm.train_repetition(model)
        good = {k: v.clone() for k, v in model.state_dict().items()}
        for seed, planted in planted_by_seed.items():
            g = torch.Generator().manual_seed(seed)
            for step in STEPS:
                base = good if planted is not None and step >= planted else init
                model.load_state_dict({k: v + 1e-3 * torch.randn(v.shape, generator=g) if v.is_floating_point()
                                       else v for k, v in base.items()})
                folder = root / size / f"seed{seed}" / f"step{step}"
                model.save_pretrained(folder)
                test_lm.save_tokenizer(folder)
    return root


def _config(**kw) -> ScanConfig:
    return ScanConfig(capability="repetition", params=REP, n_prompts=64, threshold=0.5, coarse=5, **kw)


# ------------------------------------------------------------------------------------ sizes, choice

def test_sizes_parse_and_order_by_parameter_count():
    assert parse_size("14m") == 14e6 and parse_size("1.4b") == 1.4e9 and parse_size("1B") == 1e9
    assert order_sizes(["1b", "14m", "410m", "1.4b", "70m", "160m"]) == ["14m", "70m", "160m", "410m", "1b", "1.4b"]
    assert order_sizes(["10m", "2m"]) == ["2m", "10m"]  # not the lexicographic order
    assert parse_sizes(" 70m, 14m ") == ["14m", "70m"]
    for bad in ("14", "m", "fourteen", "1.4.b", "-1m"):
        with pytest.raises(ConfigError, match="expected a parameter count"):
            parse_size(bad)
    with pytest.raises(ConfigError, match="different parameter count"):
        order_sizes(["1b", "1000m"])
    with pytest.raises(ConfigError, match="expected a list"):
        parse_sizes(" , ")


def test_the_seed_shown_is_the_largest_sizes_emerged_seed_with_the_median_step():
    def result(outcomes: dict[int, tuple[str, int | None]]) -> ScanResult:
        return ScanResult(Path("x"), _config(), {seed: SeedScan(seed, "src", status, None, step)
                                                  for seed, (status, step) in outcomes.items()})

    scans = {"14m": result({0: ("emerged", 100)}),
             "70m": result({0: ("emerged", 300), 1: ("not_emerged", None), 2: ("emerged", 100),
                            3: ("emerged", 200), 4: ("at_start", 0)}),
             "160m": result({0: ("not_emerged", None), 1: ("at_start", 0)})}
    # 160m has no seed that crossed inside its scan; 70m's emerged steps 100, 200, 300 -> seed 3
    assert pick_seed(scans, ["14m", "70m", "160m"]) == ("70m", 3)
    scans["70m"] = result({0: ("emerged", 300), 1: ("emerged", 100)})  # two middles: the lower
    assert pick_seed(scans, ["14m", "70m", "160m"]) == ("70m", 1)
    assert pick_seed({"14m": result({0: ("not_emerged", None)})}, ["14m"]) is None


def test_evaluations_per_seed_estimate():
    from emergelab.lm import pythia_revisions

    assert estimate_evaluations(pythia_revisions(), 8) == 15  # 8 coarse + ceil(log2(117)) in the widest gap
    assert estimate_evaluations([f"step{s}" for s in STEPS], len(STEPS)) == len(STEPS)


# ------------------------------------------------------------------------------------- end to end

def test_suite_scan_end_to_end_resumes_and_patches(suites, tmp_path):
    out = tmp_path / "suite"
    sources = suite_sources(["10m", "2m"], [0, 1], local=suites)
    assert list(sources) == ["2m", "10m"]
    result = scan_suite(sources, _config(), out)
    assert result.sizes == ["2m", "10m"]
    for size, by_seed in PLANTED.items():
        for seed, planted in by_seed.items():
            s = result.scans[size].seeds[seed]
            assert (s.status, s.emergence_step) == (("emerged", planted) if planted else ("not_emerged", None))
            assert len(s.evaluated) < len(STEPS)
            assert (out / size / "summary.json").exists()

    table = (out / "table.txt").read_text()
    assert table == result.table + "\n"
    lines = table.splitlines()
    assert any(line.split()[:6] == ["2m", "2", "2", "40", "[16,", "64]"] for line in lines), table
    assert any(line.split()[:5] == ["10m", "2", "1", "4", "[4,"] for line in lines), table
    assert any(line.split()[:2] == ["10m", "1"] and "not by step256 (the last revision)" in line for line in lines)
    assert lines.index(next(line for line in lines if line.startswith("2m "))) < \
        lines.index(next(line for line in lines if line.startswith("10m ")))
    figure = out / "pythia_emergence.png"
    assert result.figure == figure and figure.stat().st_size > 5000

    # the shown seed: the largest size's (10m) only emerged seed; patched from step2 into step4
    assert result.chosen == ("10m", 0)
    p = result.patch
    assert (p.early, p.late, p.reused) == ("step2", "step4", False) and p.gains.shape == (2, 4)
    text = (out / "patch" / "patch.txt").read_text()
    assert "of step4 patched into step2" in text and "top heads" in text and "greedy set" in text
    assert json.loads((out / "patch" / "patch.json").read_text())["late"] == "step4"
    assert np.isfinite(p.gains).all() and p.gains.max() > 0
    report = (out / "RESULT.md").read_text()
    assert "pythia_emergence.png" in report and "step4 into step2" in report and "not by step256" in report
    record = json.loads((out / "suite.json").read_text())
    assert record["chosen"] == {"size": "10m", "seed": 0} and record["sizes"]["2m"]["seeds"]["1"]["emergence_step"] == 64

    lines_logged: list[str] = []
    again = scan_suite(sources, _config(), out, log=lines_logged.append)  # resumes: nothing fetched
    assert again.fetched() == {"2m": 0, "10m": 0}
    assert again.patch.reused and again.table == result.table
    totals = json.loads((out / "suite.json").read_text())["sizes"]["2m"]
    assert totals["fetched"] == 0 and totals["fetched_all_calls"] == result.fetched()["2m"] > 0
    assert any("reused" in line for line in lines_logged)
    with pytest.raises(ConfigError, match="holds a scan of"):
        scan_suite(sources, ScanConfig(capability="induction"), out)


def test_cli_with_local_suites(suites, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["reproduce", "lm-emergence", "--pythia", "2m", "--local", str(suites), "--seeds", "0", *KNOBS,
            "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "step16" in printed and "patched into step8" in printed
    for name in ("table.txt", "RESULT.md", "suite.json", "pythia_emergence.png", "patch/patch.txt",
                 "2m/summary.json"):
        assert (out / name).exists(), name
    assert (out / "pythia_emergence.png").stat().st_size > 5000
    assert main(["check", str(out / "2m")]) == 0  # each size is a valid run directory

    assert main(args + ["--dry-run"]) == 0
    assert "at most" in capsys.readouterr().out
    # no SIZES with --local: every size folder of DIR, ordered by parameter count
    assert main(["reproduce", "lm-emergence", "--pythia", "--local", str(suites), "--seeds", "0,1", *KNOBS,
                 "--dry-run", "--out", str(tmp_path / "plan")]) == 0
    plan = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in plan[:2]] == ["2m", "10m"]
    # no --seeds with --local either: the seed folders every size has (not 0-9, which would fail)
    assert main(["reproduce", "lm-emergence", "--pythia", "--local", str(suites), *KNOBS,
                 "--dry-run", "--out", str(tmp_path / "plan")]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == plan[:2]


# ---------------------------------------------------------------------------------- errors, offline

@pytest.mark.parametrize("args, message", [
    (["reproduce", "seeds", "--pythia"], "--pythia: only with lm-emergence"),
    (["reproduce", "lm-emergence", "--pythia", "--scale", "smoke"], "--scale: not with --pythia"),
    (["reproduce", "lm-emergence", "--pythia", "--workers", "2"], "--workers: not with --pythia"),
    (["reproduce", "lm-emergence", "--seeds", "0-2"], "--seeds: only with --pythia"),
    (["reproduce", "lm-emergence", "--pythia", "14x"], "model size '14x'"),
    (["reproduce", "lm-emergence", "--pythia", "14m", "--seeds", "0,0"], "distinct seeds"),
    (["reproduce", "lm-emergence", "--pythia", "3m", "--dry-run"], "pythia size '3m'"),
    (["reproduce", "lm-emergence", "--pythia", "14m", "--metric", "loss", "--dry-run"], "metric 'loss'"),
    (["reproduce", "lm-emergence", "--pythia", "14m", "--param", "lenght=8", "--dry-run"], "unknown knob 'lenght'"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_local_without_a_size_folder_is_one_line(suites, tmp_path, capsys):
    assert main(["reproduce", "lm-emergence", "--pythia", "2m,70m", "--local", str(suites),
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "no folder" in err and "70m" in err and not (tmp_path / "x").exists()


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["reproduce", "lm-emergence", "--pythia", "14m", "--out", str(tmp_path / "file")]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err


def test_dry_run_names_the_hub_repos_without_the_network(capsys):
    assert main(["reproduce", "lm-emergence", "--pythia", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "EleutherAI/pythia-14m .. EleutherAI/pythia-14m-seed9" in out and "pythia-410m-seed9" in out
    assert "at most 150 checkpoint(s)" in out  # 10 seeds x 15 per seed


def test_offline_without_cache_is_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-m", "emergelab.cli", "reproduce", "lm-emergence", "--pythia", "14m",
                          "--seeds", "0", "--out", str(tmp_path / "suite")], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "HF_HUB_OFFLINE=1" in lines[0] and "pythia-14m" in lines[0]


def test_unreachable_hub_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))

    def unreachable(*args, **kwargs):
        raise ConnectionError("name resolution failed")

    monkeypatch.setattr("huggingface_hub.snapshot_download", unreachable)
    monkeypatch.setattr("huggingface_hub.HfApi.model_info", unreachable)
    assert main(["reproduce", "lm-emergence", "--pythia", "14m", "--seeds", "0", "--retries", "0",
                 "--out", str(tmp_path / "suite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the Hugging Face hub" in err[0] and "after 1 tries" in err[0], err
