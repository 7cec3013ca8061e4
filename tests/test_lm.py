"""emergelab.lm offline: tiny GPT-NeoX models built with transformers, saved as local revisions.

* the loader's logits equal Hugging Face's own forward (also in Pythia's older config format, and with an
  identity pattern patch); every hook fires and writing to it changes the output;
* the capability prompt sets and their intervals;
* the scan finds a planted emergence revision (the one an exhaustive scan finds) with fewer evaluations
  than revisions, resumes without re-evaluating, respects its disk budget, and is readable by the store;
* the hub source: retries with backoff; offline and unreachable are one line and exit 2;
* head patching between two revisions end to end (library and CLI).

The planted suite: a model trained for ~80 steps on digit repetition ("good") and its initialisation
("init"); revision ``stepN`` of seed ``s`` holds init weights before the seed's planted step and good
weights from it on, each plus a little noise, so the capability emerges exactly at the planted step.
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

from emergelab.cli import main  # noqa: E402
from emergelab.interventions import ablation_table, greedy_heads, patching_table, run_with_head_edits  # noqa: E402
from emergelab.interventions.patching import PatchTarget  # noqa: E402
from emergelab.lm import (LocalSource, ScanConfig, build_prompts, coarse_revisions, load_neox,  # noqa: E402
                          pythia_repo, pythia_revisions, scan, score_prompts)
from emergelab.lm.capabilities import wilson  # noqa: E402
from emergelab.lm.sources import HubSource, HubUnavailableError, with_retries  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORDS = ([str(d) for d in range(10)] + ["Mary", "John", "Alice", "Bob", "Tom", "Anna", "store", "park", "school",
         "drink", "book", "ball", "When", "and", "went", "to", "the", ",", "gave", "a", "Then", "had", "long",
         "talk", "at", "."])
STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000]
PLANTED = {0: 2000, 1: 64}  # seed -> first revision holding the trained weights
REP = {"length": 8, "repeat": 4}  # the repetition prompts the tiny model was trained for


def tiny_config(**overrides) -> GPTNeoXConfig:
    fields = dict(vocab_size=len(WORDS) + 2, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64, rotary_pct=0.5, attn_implementation="eager")
    return GPTNeoXConfig(**{**fields, **overrides})


def save_tokenizer(folder: Path, words: list[str] = WORDS) -> None:
    """A word-level tokenizer: [UNK] 0, [BOS] 1, then ``words`` (the digits first: ids 2..11)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "[BOS]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["[UNK]", "[BOS]"])
    tok.save(str(folder / "tokenizer.json"))


def train_repetition(model: GPTNeoXForCausalLM, steps: int = 90, k: int = 8) -> None:
    torch.manual_seed(1)
    digits = torch.arange(2, 12)  # the ids of "0".."9"
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        x = digits[torch.randint(0, 10, (64, k))]
        seq = torch.cat([x, x], 1)
        logits = model(seq[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits[:, k - 1:].reshape(-1, logits.shape[-1]),
                                                 seq[:, k:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    """``ROOT/seed{s}/step{N}/`` for seeds 0 and 1 (see the module doc)."""
    root = tmp_path_factory.mktemp("suite")
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(tiny_config())
    init = {k: v.clone() for k, v in model.state_dict().items()}
    train_repetition(model)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    for seed, planted in PLANTED.items():
        g = torch.Generator().manual_seed(seed)
        for step in STEPS:
            base = good if step >= planted else init
            state = {k: v + 1e-3 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                     for k, v in base.items()}
            model.load_state_dict(state)
            folder = root / f"seed{seed}" / f"step{step}"
            model.save_pretrained(folder)
            save_tokenizer(folder)
    return root


@pytest.fixture(scope="module")
def tokenizer(suite):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(suite / "seed0" / "step0" / "tokenizer.json"))


# ------------------------------------------------------------------------------------------- loader

@pytest.mark.parametrize("parallel", [True, False])
def test_logits_equal_hugging_face(tmp_path, parallel):
    torch.manual_seed(3)
    hf = GPTNeoXForCausalLM(tiny_config(use_parallel_residual=parallel)).eval()
    hf.save_pretrained(tmp_path)
    model = load_neox(tmp_path)
    tokens = torch.randint(0, hf.config.vocab_size, (3, 23))
    with torch.no_grad():
        expected = hf(tokens).logits
        assert torch.allclose(model(tokens), expected, atol=1e-5, rtol=0)
        # an identity pattern patch leaves the logits as they are
        patched = run_with_head_edits(model, torch.cat([tokens, tokens[:, :1]], 1),
                                      [(PatchTarget(1, 2), lambda a: a), (PatchTarget(0, 0), lambda a: a)])
        assert torch.allclose(patched, expected, atol=1e-5, rtol=0)


def test_pythia_config_format_and_safetensors_only(tmp_path):
    """Pythia's config.json names rotary fields rotary_pct / rotary_emb_base; pickle weights are refused."""
    torch.manual_seed(4)
    hf = GPTNeoXForCausalLM(tiny_config(rotary_pct=0.25, rotary_emb_base=10000)).eval()
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("rope_parameters", None)
    config.update(rotary_pct=0.25, rotary_emb_base=10000)
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = load_neox(tmp_path)
    assert model.spec.rotary_dim == 2
    tokens = torch.randint(0, hf.config.vocab_size, (2, 11))
    with torch.no_grad():
        reference = GPTNeoXForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
        assert torch.allclose(model(tokens), reference(tokens).logits, atol=1e-5, rtol=0)
    for f in tmp_path.glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(FileNotFoundError, match="pickle weights are not loaded"):
        load_neox(tmp_path)


def test_every_hook_fires_with_its_shape_and_writes_change_the_output(tmp_path):
    torch.manual_seed(5)
    GPTNeoXForCausalLM(tiny_config()).save_pretrained(tmp_path)
    model = load_neox(tmp_path)
    tokens = torch.randint(0, 40, (2, 9))
    logits, cache = model.run_with_cache(tokens)
    assert set(cache) == set(model.hook_dict)
    assert cache["blocks.1.attn.hook_pattern"].shape == (2, 4, 9, 9)
    assert cache["blocks.0.attn.hook_q"].shape == (2, 9, 4, 8)
    assert cache["blocks.0.hook_resid_post"].shape == (2, 9, 32)
    assert torch.allclose(cache["blocks.0.attn.hook_pattern"].sum(-1), torch.ones(2, 4, 9))
    for name in model.hook_dict:
        changed = model.run_with_hooks(tokens, fwd_hooks=[(name, lambda x, hook: x * 0.5 + 0.1)])
        assert not torch.allclose(changed, logits), name


# ------------------------------------------------------------------------------------- capabilities

def test_prompt_sets(tokenizer):
    rep = build_prompts("repetition", tokenizer, n=50, seed=0, **REP)
    assert rep.tokens.shape == (50, 13) and torch.equal(rep.tokens[:, 8:], rep.tokens[:, :5])
    assert rep.loss_mask.tolist() == [False] * 11 + [True]
    ind = build_prompts("induction", tokenizer, n=20, seed=1, length=12, token_range=(2, 40))
    for row in ind.tokens.tolist():
        a, b = row[-2], row[-1]
        assert row[:-2].count(a) == 1 and row[row.index(a) + 1] == b
    ioi = build_prompts("ioi", tokenizer, n=30, seed=2)
    text = tokenizer.decode(ioi.tokens[0].tolist())
    assert text.startswith("When") and ioi.wrong is not None and not torch.equal(ioi.wrong, ioi.answers)
    assert len({tuple(r) for r in ioi.tokens.tolist()}) > 1
    with pytest.raises(Exception, match="capability 'copy'"):
        build_prompts("copy", tokenizer)


def test_scores_and_intervals(suite, tokenizer):
    prompts = build_prompts("repetition", tokenizer, n=100, seed=0, **REP)
    good = score_prompts(load_neox(suite / "seed0" / "step8000"), prompts)
    bad = score_prompts(load_neox(suite / "seed0" / "step0"), prompts)
    assert good.solved_fraction > 0.9 > 0.3 > bad.solved_fraction
    for s in (good, bad):
        assert s.solved_ci[0] <= s.solved_fraction <= s.solved_ci[1]
        assert s.target_prob_ci[0] <= s.target_prob <= s.target_prob_ci[1]
    lo, hi = wilson(8, 10)
    assert abs(lo - 0.4902) < 1e-3 and abs(hi - 0.9433) < 1e-3  # the textbook Wilson interval
    ioi = score_prompts(load_neox(suite / "seed0" / "step0"), build_prompts("ioi", tokenizer, n=20))
    assert "logit_diff" in ioi.metrics()


# --------------------------------------------------------------------------------------------- scan

def test_pythia_naming():
    revisions = pythia_revisions()
    assert len(revisions) == 154 and revisions[:3] == ["step0", "step1", "step2"]
    assert revisions[10:13] == ["step512", "step1000", "step2000"] and revisions[-1] == "step143000"
    assert pythia_repo("160m") == "EleutherAI/pythia-160m" and pythia_repo("14m", 3) == "EleutherAI/pythia-14m-seed3"
    coarse = coarse_revisions(revisions, 8)
    assert coarse[0] == 0 and coarse[-1] == 153 and 6 <= len(coarse) <= 8


def _config(**kw) -> ScanConfig:
    return ScanConfig(capability="repetition", params=REP, n_prompts=64, threshold=0.5, coarse=5, **kw)


def test_scan_finds_the_planted_revision_resumes_and_respects_the_budget(suite, tmp_path):
    sources = {s: LocalSource(suite / f"seed{s}") for s in PLANTED}
    size = LocalSource(suite / "seed0").size("step0")
    out = tmp_path / "scan"
    result = scan(sources, _config(disk_budget_gb=1.5 * size / 1e9), out)
    for seed, planted in PLANTED.items():
        s = result.seeds[seed]
        assert (s.status, s.emergence_step) == ("emerged", planted)
        assert len(s.evaluated) < len(STEPS) // 2
    assert 0 < result.peak_cache_bytes <= 1.5 * size and not any((out / "cache").rglob("*.safetensors"))

    exhaustive = scan({0: sources[0]}, _config(exhaustive=True), tmp_path / "all")
    assert exhaustive.seeds[0].emergence_step == PLANTED[0] and len(exhaustive.seeds[0].evaluated) == len(STEPS)

    again = scan(sources, _config(disk_budget_gb=1.5 * size / 1e9), out)  # resumes: nothing new
    assert all(s.fetched == 0 for s in again.seeds.values())
    assert again.seeds[0].emergence_step == PLANTED[0]

    from emergelab.store import connect

    con = connect(out)
    rows = con.sql("SELECT seed, step, value FROM metrics WHERE metric = 'solved_fraction' ORDER BY seed, step").fetchall()
    assert {r[0] for r in rows} == {0, 1} and len(rows) == sum(len(s.evaluated) for s in result.seeds.values())
    assert con.sql('SELECT "task.capability" FROM runs').fetchall() == [("repetition",)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"]["0"]["emergence_revision"] == "step2000"

    with pytest.raises(Exception, match="over the disk budget"):
        scan(sources, _config(disk_budget_gb=0.5 * size / 1e9), tmp_path / "small")
    with pytest.raises(Exception, match="holds a scan of"):
        scan(sources, ScanConfig(capability="induction"), out)


def test_duplicate_weights_are_reported_and_a_relapse_is_not_emergence(suite, tmp_path):
    import shutil

    for name, copy_of in (("step0", "step0"), ("step1000", "step1000"), ("step2000", "step2000"),
                          ("step3000", "step0")):
        shutil.copytree(suite / "seed0" / copy_of, tmp_path / "revs" / name)
    result = scan({0: LocalSource(tmp_path / "revs")}, _config(exhaustive=True), tmp_path / "scan")
    assert result.seeds[0].duplicates == [["step0", "step3000"]]
    assert result.seeds[0].status == "not_emerged"  # back below the threshold at the last revision
    summary = json.loads((tmp_path / "scan" / "summary.json").read_text())
    assert summary["seeds"]["0"]["duplicates"] == [["step0", "step3000"]]


def test_retries_then_one_clear_error():
    calls, delays = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("connection reset")
        return "ok"

    assert with_retries(flaky, "x@step1", attempts=5, backoff=1.0, sleep=delays.append) == "ok"
    assert delays == [1.0, 2.0]
    with pytest.raises(HubUnavailableError) as info:
        with_retries(lambda: (_ for _ in ()).throw(TimeoutError("timed out")), "EleutherAI/pythia-14m@step0",
                     attempts=3, backoff=0.0, sleep=lambda s: None)
    assert "after 3 tries" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(KeyError):  # not a network error: raised at once
        with_retries(lambda: {}["missing"], "x", sleep=lambda s: None)


def test_offline_without_cache_is_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-m", "emergelab.cli", "lm", "scan", "--pythia", "14m",
                          "--out", str(tmp_path / "scan")], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "HF_HUB_OFFLINE=1" in lines[0] and "pythia-14m" in lines[0]


def test_unreachable_hub_source_raises_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    source = HubSource("EleutherAI/pythia-14m", attempts=2, backoff=0.0, use_cache=False, sleep=lambda s: None)

    def unreachable(*args, **kwargs):
        raise ConnectionError("name resolution failed")

    monkeypatch.setattr("huggingface_hub.snapshot_download", unreachable)
    with pytest.raises(HubUnavailableError, match="after 2 tries"):
        source.fetch("step0", tmp_path / "x")


def test_cli_scan(suite, tmp_path, capsys):
    args = ["lm", "scan", "--local", str(suite), "--seeds", "0", "--param", "length=8", "--param", "repeat=4",
            "--n-prompts", "64", "--coarse", "5", "--out", str(tmp_path)]
    assert main(args) == 0
    assert "step2000" in capsys.readouterr().out
    assert main(["check", str(tmp_path)]) == 0  # a scan directory is a valid run directory
    # without --seeds: every seed<k> folder of the suite (0 and 1)
    assert main(["lm", "scan", "--local", str(suite), *args[6:-2], "--out", str(tmp_path / "all")]) == 0
    assert sorted(json.loads((tmp_path / "all" / "summary.json").read_text())["seeds"]) == ["0", "1"]
    assert main(["lm", "scan", "--local", str(suite), "--seeds", "0,7", "--out", str(tmp_path / "b")]) == 2
    assert "seed7" in capsys.readouterr().err
    assert main(["lm", "scan", "--local", str(suite), "--param", "lenght=8", "--out", str(tmp_path / "c")]) == 2
    assert "unknown knob 'lenght'" in capsys.readouterr().err and not (tmp_path / "c").exists()


# ----------------------------------------------------------------------------------------- patching

def test_patching_runs_unchanged_on_the_loaded_model(suite, tokenizer):
    early, late = load_neox(suite / "seed0" / "step1000"), load_neox(suite / "seed0" / "step2000")
    prompts = build_prompts("repetition", tokenizer, n=32, seed=0, **REP)
    table = patching_table(early, late, prompts.tokens, loss_mask=prompts.loss_mask)
    assert table.prob_gain.shape == (2, 4)
    assert float(table.late["mean_prob"]) > float(table.early["mean_prob"])
    same = patching_table(late, late, prompts.tokens, loss_mask=prompts.loss_mask)
    assert torch.allclose(same.prob_gain, torch.zeros(2, 4), atol=1e-6)
    greedy = greedy_heads(early, late, prompts.tokens, loss_mask=prompts.loss_mask, max_heads=2)
    assert len(greedy.heads) <= 2
    ablation = ablation_table(late, prompts.tokens, loss_mask=prompts.loss_mask)
    assert ablation.prob_drop.shape == (2, 4) and float(ablation.prob_drop.max()) > 0


def test_cli_patch(suite, tmp_path, capsys):
    args = ["lm", "patch", "--local", str(suite), "--seed", "1", "--early", "step32", "--late", "step64",
            "--param", "length=8", "--param", "repeat=4", "--n-prompts", "32", "--top-k", "3", "--max-heads", "2",
            "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "top heads patched together" in out and "greedy set" in out
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "patch_table.parquet")
    assert table.num_rows == 8 and set(table.column_names) >= {"layer", "head", "prob_gain"}
    joint = pq.read_table(tmp_path / "patch_joint.parquet").to_pylist()
    assert [r["k"] for r in joint] == [1, 2, 3]
    assert np.isfinite([r["prob"] for r in joint]).all()


def test_missing_extra_is_an_install_hint(monkeypatch, capsys):
    import importlib.util

    from emergelab.lm import require_transformers

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'emergelab\[lm\]'"):
        require_transformers()
    assert main(["lm", "scan", "--pythia", "14m", "--out", "unused"]) == 2
    assert "emergelab[lm]" in capsys.readouterr().err


def test_importing_lm_does_not_import_transformers():
    code = "import sys, emergelab.lm; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"})
    assert out.stdout.strip() == "False", out.stderr
