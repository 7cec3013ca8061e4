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
from emergelab.interventions import (ablation_table, cache_attention, greedy_heads, patch_heads, patching_table,  # noqa: E402
                                    run_with_head_edits, target_metrics)
from emergelab.interventions.patching import PatchTarget  # noqa: E402
from emergelab.lm import (LocalSource, ScanConfig, build_prompts, coarse_revisions, load_neox,  # noqa: E402
                          pythia_repo, pythia_revisions, scan, score_prompts)
from emergelab.lm.capabilities import wilson  # noqa: E402
from emergelab.config import ConfigError  # noqa: E402
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


def test_prompts_of_words_the_tokenizer_does_not_know_are_refused(tmp_path):
    """A word-level tokenizer writes [UNK] for a word it lacks: IOI prompts of [UNK]s (scored, reported
    "not emerged") and repetition over [UNK] were built in silence; now one ConfigError names the words."""
    from tokenizers import Tokenizer

    from emergelab.config import ConfigError
    from emergelab.lm.capabilities import unknown_token

    save_tokenizer(tmp_path, [str(d) for d in range(10)] + ["Mary", "John", "store", "drink"])
    small = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert unknown_token(small) == ("[UNK]", 0)
    with pytest.raises(ConfigError, match="ioi: template=0's words 'When', 'and', .* are unknown to this "
                                          "tokenizer \\(it writes '\\[UNK\\]'\\)"):
        build_prompts("ioi", small, n=4)
    with pytest.raises(ConfigError, match="'cat' is unknown to this tokenizer"):
        build_prompts("repetition", small, n=4, words=["1", "cat"])


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


@pytest.mark.parametrize("size, seed, variant, repo", [
    ("410m", 9, "seed", "EleutherAI/pythia-410m-seed9"),
    ("1b", 0, "seed", "EleutherAI/pythia-1b"),
    ("70m", 0, "deduped", "EleutherAI/pythia-70m-deduped"),
    ("160m", 2, "data-seed", "EleutherAI/pythia-160m-data-seed2"),
    ("160m", 3, "weight-seed", "EleutherAI/pythia-160m-weight-seed3"),
])
def test_pythia_repo_names_the_runs_the_hub_holds(size, seed, variant, repo):
    assert pythia_repo(size, seed, variant) == repo


@pytest.mark.parametrize("size, seed, variant, words", [
    ("1b", 3, "seed", "pythia-1b has seed 0 only (seeds 1..9 exist for 14m, 31m, 70m, 160m, 410m"),
    ("14m", 10, "seed", "must be 0..9"),
    ("70m", 1, "deduped", "the deduped variant has seed 0 only"),
    ("70m", 1, "data-seed", "exists for size 160m only"),
    ("160m", 0, "weight-seed", "the weight-seed variant has seeds 1..3"),
    ("160m", 4, "data-seed", "has seeds 1..3"),
    ("160m", 1, "dedup", "allowed variants are seed, deduped, data-seed, weight-seed"),
    ("100m", 0, "seed", "allowed sizes are 14m"),
])
def test_pythia_repo_refuses_runs_that_do_not_exist(size, seed, variant, words):
    with pytest.raises(ConfigError) as info:
        pythia_repo(size, seed, variant)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_pythia_variants_as_sources():
    from emergelab.lm.sources import make_sources, pythia_seeds

    assert pythia_seeds("160m") == list(range(10)) and pythia_seeds("1b") == [0]
    assert pythia_seeds("160m", "data-seed") == [1, 2, 3] and pythia_seeds("12b", "deduped") == [0]
    with pytest.raises(ConfigError, match="exists for size 160m only"):
        pythia_seeds("70m", "weight-seed")
    # the default seed is the variant's first; every name is the hub repo, nothing is requested here
    assert {s: src.name for s, src in make_sources(pythia="160m", variant="data-seed").items()} == \
        {1: "EleutherAI/pythia-160m-data-seed1"}
    assert [src.name for src in make_sources(pythia="160m", variant="weight-seed", seeds=[1, 3]).values()] == \
        ["EleutherAI/pythia-160m-weight-seed1", "EleutherAI/pythia-160m-weight-seed3"]
    with pytest.raises(ConfigError, match="give it with --pythia SIZE"):
        make_sources(repo="EleutherAI/pythia-14m", variant="deduped")


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
    capsys.readouterr()  # and analyze / query take it (its config is not a training config: not refused)
    assert main(["query", str(tmp_path), 'SELECT "task.name" FROM runs']) == 0
    assert "lm-repetition" in capsys.readouterr().out
    assert main(["analyze", str(tmp_path), "--out", str(tmp_path / "analysis")]) == 0
    capsys.readouterr()
    for html in ([], ["--html"]):  # report draws training runs: it names analyze (it blamed the scan's config)
        assert main(["report", str(tmp_path), *html]) == 2
        assert "an LM checkpoint scan (`emergelab lm scan`)" in capsys.readouterr().err
    # without --seeds: every seed<k> folder of the suite (0 and 1)
    assert main(["lm", "scan", "--local", str(suite), *args[6:-2], "--out", str(tmp_path / "all")]) == 0
    assert sorted(json.loads((tmp_path / "all" / "summary.json").read_text())["seeds"]) == ["0", "1"]
    for argv, words in ((["--threshold", "2"], "--threshold=2.0: metric solved_fraction lies in [0, 1]"),
                        (["--seeds", "x"], "--seeds 'x': expected a list")):
        assert main(["lm", "scan", "--local", str(suite), *argv, "--out", str(tmp_path / "t")]) == 2
        assert words in capsys.readouterr().err
        assert not (tmp_path / "t").exists()
    assert main(["lm", "scan", "--local", str(suite), "--seeds", "0,7", "--out", str(tmp_path / "b")]) == 2
    assert "seed7" in capsys.readouterr().err
    assert main(["lm", "scan", "--local", str(suite), "--param", "lenght=8", "--out", str(tmp_path / "c")]) == 2
    assert "unknown knob 'lenght'" in capsys.readouterr().err and not (tmp_path / "c").exists()
    # a Pythia run the hub does not hold: one line, before any request or write
    for argv, words in ((["--pythia", "1b", "--seeds", "0-2"], "pythia-1b has seed 0 only"),
                        (["--pythia", "160m", "--variant", "data-seed", "--seeds", "0-3"], "has seeds 1..3"),
                        (["--local", str(suite), "--variant", "deduped"], "give it with --pythia SIZE")):
        assert main(["lm", "scan", *argv, "--out", str(tmp_path / "d")]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "d").exists()


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


def test_cli_patch_early_to_late_reverts_heads_of_the_late_revision(suite, tmp_path, capsys, tokenizer):
    """--direction early-to-late: the early revision's heads written into the late one; the per-head table and
    the top-k joint fractions are of late - early removed, checked against patch_heads on the late model."""
    args = ["lm", "patch", "--local", str(suite), "--seed", "1", "--early", "step32", "--late", "step64",
            "--param", "length=8", "--param", "repeat=4", "--n-prompts", "32", "--top-k", "2", "--max-heads", "1",
            "--direction", "early-to-late", "--quiet", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "of step32 patched into step64" in out and "loss of step64's answer probability per head" in out
    assert "removed fraction" in out
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "patch_table.parquet").to_pylist()
    joint = pq.read_table(tmp_path / "patch_joint.parquet").to_pylist()
    assert {r["direction"] for r in table + joint} == {"early-to-late"}
    early, late = load_neox(suite / "seed1" / "step32"), load_neox(suite / "seed1" / "step64")
    prompts = build_prompts("repetition", tokenizer, n=32, seed=0, **REP)
    with torch.no_grad():
        mask = prompts.loss_mask
        e, l = (float(target_metrics(m(prompts.tokens[:, :-1]), prompts.tokens, loss_mask=mask)["mean_prob"])
                for m in (early, late))
        donor = cache_attention(early, prompts.tokens)
        for row in (r for r in table if r["output"] == -1):
            patched = patch_heads(late, prompts.tokens, donor, [(row["layer"], row["head"])])
            p = float(target_metrics(patched, prompts.tokens, loss_mask=prompts.loss_mask)["mean_prob"])
            assert row["prob_gain"] == pytest.approx(l - p, abs=1e-5)
        top = [(r["layer"], r["head"]) for r in joint]
        p = float(target_metrics(patch_heads(late, prompts.tokens, donor, top), prompts.tokens,
                                 loss_mask=prompts.loss_mask)["mean_prob"])
    assert joint[-1]["prob"] == pytest.approx(p, abs=1e-5)
    assert joint[-1]["recovered"] == pytest.approx((l - p) / (l - e), abs=1e-4)


def test_cli_patch_counts_its_evaluations_on_a_progress_bar(suite, tmp_path, capsys, monkeypatch):
    """One update per evaluation: 8 heads and the 2 baselines, the 3 top-k sets, then the greedy search's
    (at most greedy_passes(8, 2) = 17 with --max-heads 2); the bar's total, that bound, shrinks to the count."""
    import pyarrow.parquet as pq

    from emergelab.interventions import greedy_passes, progress_bar
    from emergelab.lm import patch as lm_patch

    bars = []

    def recording(total, show):
        bars.append(progress_bar(total, False))
        bars[-1].total, bars[-1].shown = total, show
        return bars[-1]

    monkeypatch.setattr(lm_patch, "progress_bar", recording)
    args = ["lm", "patch", "--local", str(suite), "--seed", "1", "--early", "step32", "--late", "step64",
            "--param", "length=8", "--param", "repeat=4", "--n-prompts", "32", "--top-k", "3", "--max-heads", "2",
            "--out", str(tmp_path)]
    assert main(args) == 0
    (bar,) = bars
    chosen = pq.read_table(tmp_path / "patch_greedy.parquet").num_rows
    assert bar.shown and bar.n == bar.total and 1 <= chosen <= 2
    # the greedy search: its 2 baselines, 8 candidates for the first head, 7 for the second if it went on
    assert bar.n == 8 + 2 + 3 + 2 + 8 + (7 if chosen == 2 else 0) <= 8 + 2 + 3 + greedy_passes(8, 2)
    assert main([*args[:-2], "--quiet", "--out", str(tmp_path / "quiet")]) == 0 and not bars[-1].shown


def test_the_package_exports_what_its_readme_names():
    import emergelab.lm as lm
    from emergelab.lm import patch

    assert lm.patch_revisions is patch.patch_revisions and lm.write_patch is patch.write_patch
    assert {"patch_revisions", "RevisionPatching", "write_patch", "scan", "load_lm"} <= set(lm.__all__)


def test_missing_extra_is_an_install_hint(monkeypatch, capsys):
    import importlib.util

    from emergelab.lm import require_transformers

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'transformers>=4.57' .* \(or pip install -e '.\[lm\]' in "):
        require_transformers()
    assert main(["lm", "scan", "--pythia", "14m", "--out", "unused"]) == 2
    assert "pip install -e '.[lm]' in emergelab's checkout" in capsys.readouterr().err


def test_importing_lm_does_not_import_transformers():
    code = "import sys, emergelab.lm; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"})
    assert out.stdout.strip() == "False", out.stderr


# ---------------------------------------------------------------------------------------- bad input
# The project rule: a bad input is one line naming the flag and what it allows, exit 2, before any work
# (nothing written, no checkpoint fetched or loaded).

def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def no_fetch(monkeypatch):
    """Any checkpoint fetched (copied for loading) fails the test: the input should have been refused first."""
    def fetch(self, revision, into):
        raise AssertionError(f"fetched {revision}: a bad input was not refused first")

    monkeypatch.setattr(LocalSource, "fetch", fetch)


SCAN_KNOBS = ["--param", "length=8", "--param", "repeat=4", "--n-prompts", "16"]
BAD_SCAN = [  # (flags, what the one line must say)
    (["--device", "tpu"], "--device='tpu': must be cpu, cuda, cuda:N or mps"),
    (["--device", "cuda:99"], "--device='cuda:99'"),
    (["--retries", "-1"], "--retries=-1: must be an integer in [1, 1000]"),
    (["--retries", "0"], "--retries=0"),
    (["--backoff", "nan"], "--backoff=nan: must be a number in [0.0, 3600.0]"),
    (["--backoff", "-1"], "--backoff=-1.0"),
    (["--prompt-seed", "-1"], "--prompt-seed=-1: must be an integer in [0, "),
    (["--param", "length=abc"], "--param length='abc': repetition's length must be an integer in [2, 2048]"),
    (["--param", "length=100000"], "--param length=100000: repetition's length must be an integer"),
    (["--param", "length=100"], "longer than its context of 64 positions"),  # the local config.json's context
    (["--param", "length=-5"], "--param length=-5"),
    (["--param", "repeat=12"], "--param repeat=12: repetition's repeat must be an integer in [1, 11]"),
    (["--capability", "induction", "--param", "token_range=[5, 2]"], "--param token_range=[5, 2]"),
    (["--capability", "ioi", "--param", "template=7"], "--param template=7: ioi's template must be an integer in [0, 2]"),
    (["--param", "length=["], "--param 'length=[': the value is not valid YAML"),
    (["--batch-size", "0"], "--batch-size=0: must be an integer"),
    (["--coarse", "0"], "--coarse=0: must be an integer in [2, 10000]"),
    (["--disk-budget-gb", "-1"], "--disk-budget-gb=-1.0: must be a number in (0.0, "),
    (["--threshold", "inf"], "--threshold=inf: must be a finite number"),
    (["--dtype", "int8"], "--dtype 'int8': allowed are float32, bfloat16, float16"),
    (["--capability", "copy"], "--capability 'copy': allowed are repetition, induction, ioi"),
    (["--revisions", "step0,step3"], "no revision 'step3'"),
    (["--revisions", "step2000,step0"], "revisions must be in training order, each once; step0 comes after step2000"),
    (["--revisions", "step0,last"], "revision 'last': expected stepN"),
    (["--disk-budget-gb", "1e-6"], "over the disk budget of 1e-06 GB; raise --disk-budget-gb"),
]


@pytest.mark.parametrize("flags, message", BAD_SCAN, ids=[" ".join(f) for f, _ in BAD_SCAN])
def test_cli_scan_refuses_bad_flags_before_any_work(suite, tmp_path, capsys, no_fetch, flags, message):
    out = tmp_path / "scan"
    args = ["lm", "scan", "--local", str(suite / "seed0"), *SCAN_KNOBS, *flags, "--out", str(out)]
    if "--param" in flags and "length=8" not in flags:  # the knob under test replaces the fixture's
        args = ["lm", "scan", "--local", str(suite / "seed0"), "--n-prompts", "16", *flags, "--out", str(out)]
    assert main(args) == 2
    assert message in _one_line(capsys)
    assert not out.exists()  # nothing written


PATCH = ["--seed", "1", "--param", "length=8", "--param", "repeat=4", "--n-prompts", "16"]
BAD_PATCH = [
    (["--early", "step32", "--late", "step64", "--device", "tpu"], "--device='tpu'"),
    (["--early", "step32", "--late", "step64", "--device", "cuda:99"], "--device='cuda:99'"),
    (["--early", "step32", "--late", "step64", "--top-k", "0"], "--top-k=0: must be an integer in [1, "),
    (["--early", "step32", "--late", "step64", "--fraction", "5"], "--fraction=5.0: must be a number in (0.0, 1.0]"),
    (["--early", "step32", "--late", "step64", "--fraction", "nan"], "--fraction=nan"),
    (["--early", "step32", "--late", "step64", "--max-heads", "-1"], "--max-heads=-1: must be an integer in [0, "),
    (["--early", "step32", "--late", "step64", "--prompt-seed", "-1"], "--prompt-seed=-1"),
    (["--early", "step32", "--late", "step64", "--dtype", "int8"], "--dtype='int8'"),
    (["--early", "step32", "--late", "step64", "--direction", "up"], "argument --direction: invalid choice: 'up'"),
    (["--early", "step32", "--late", "step64", "--retries", "-1"], "--retries=-1"),
    (["--early", "step32", "--late", "step64", "--seed", "-1"], "--seed=-1: must be an integer in [0, "),  # was "no folder seed-1"
    (["--early", "step64", "--late", "step64"], "--early step64 / --late step64: the same revision"),
    (["--early", "step64", "--late", "step32"], "--early step64 / --late step32: early must come before late"),
    (["--early", "step32", "--late", "step33"], "no revision 'step33'"),
    (["--early", "step32", "--late", "step64", "--param", "length=100"], "longer than its context of 64"),
]


@pytest.mark.parametrize("flags, message", BAD_PATCH, ids=[" ".join(f) for f, _ in BAD_PATCH])
def test_cli_patch_refuses_bad_flags_before_loading(suite, tmp_path, capsys, no_fetch, flags, message):
    out = tmp_path / "patch"
    assert main(["lm", "patch", "--local", str(suite), *PATCH, *flags, "--out", str(out)]) == 2
    assert message in _one_line(capsys)
    assert not out.exists()


def test_cli_tokenizer_and_out_that_cannot_be_used(suite, tmp_path, capsys, no_fetch):
    bad = tmp_path / "vocab.txt"
    bad.write_text("not json\n")
    file = tmp_path / "file"
    file.write_text("x")
    for command in (["scan"], ["patch", "--early", "step0", "--late", "step64"]):
        base = ["lm", *command, "--local", str(suite / "seed0"), *SCAN_KNOBS]
        assert main([*base, "--tokenizer", str(bad), "--out", str(tmp_path / "a")]) == 2
        line = _one_line(capsys)
        assert f"--tokenizer {bad}: not a tokenizer.json" in line
        assert main([*base, "--tokenizer", str(tmp_path / "missing.json"), "--out", str(tmp_path / "a")]) == 2
        assert "--tokenizer" in _one_line(capsys)
        assert main([*base, "--out", str(file)]) == 2
        assert f"--out {file}: exists and is not a directory" in _one_line(capsys)
        assert not (tmp_path / "a").exists() and file.read_text() == "x"


def _copy_revisions(suite: Path, root: Path, steps: list[int], seed: int = 0) -> Path:
    import shutil

    for step in steps:
        shutil.copytree(suite / f"seed{seed}" / f"step{step}", root / f"step{step}")
    return root


def test_a_refused_scan_leaves_no_out_and_the_corrected_command_runs(suite, tmp_path, capsys):
    revs = _copy_revisions(suite, tmp_path / "revs", [0, 2000])
    (tmp_path / "empty").mkdir()
    out = tmp_path / "scan"
    good = ["lm", "scan", "--local", str(revs), *SCAN_KNOBS, "--out", str(out)]
    refused = [
        (["lm", "scan", "--local", str(revs), "--param", "length=-5", "--out", str(out)], "--param length=-5"),
        (["lm", "scan", "--local", str(tmp_path / "nowhere"), *SCAN_KNOBS, "--out", str(out)], "no such folder"),
        (["lm", "scan", "--local", str(tmp_path / "empty"), *SCAN_KNOBS, "--out", str(out)], "no revisions to scan"),
        ([*good[:-2], "--revisions", "step0,step7", "--out", str(out)], "no revision 'step7'"),
        ([*good[:-2], "--disk-budget-gb", "1e-9", "--out", str(out)], "over the disk budget"),
    ]
    for args, message in refused:
        assert main(args) == 2
        assert message in _one_line(capsys)
        assert not out.exists(), args
    (revs / "step0" / "tokenizer.json").rename(tmp_path / "tokenizer.json")
    assert main(good) == 2
    assert f"{revs / 'step0' / 'tokenizer.json'}: no tokenizer.json" in _one_line(capsys)
    assert not out.exists()
    (tmp_path / "tokenizer.json").rename(revs / "step0" / "tokenizer.json")

    # a failure at the first evaluation (here a damaged checkpoint) leaves no half-created OUT either,
    # nor in an empty folder that was there before
    weights = revs / "step0" / "model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[:100])
    out.mkdir()
    assert main(good) == 2
    assert f"{weights}: damaged safetensors file" in _one_line(capsys)
    assert out.is_dir() and not any(out.iterdir())
    weights.write_bytes(intact)

    assert main(good) == 0  # the corrected command is not refused by a leftover
    assert "step2000" in capsys.readouterr().out
    assert main(["check", str(out)]) == 0


def test_a_scan_left_half_created_by_an_older_version_is_replaced(suite, tmp_path, capsys):
    from emergelab.store import RunDir

    revs = _copy_revisions(suite, tmp_path / "revs", [0, 2000])
    out = tmp_path / "scan"
    RunDir(out).path.mkdir()
    RunDir(out).write_config({"task": {"name": "lm-repetition", "capability": "repetition",
                                       "params": {"length": -5}}, "model": {"sources": {}}})
    (out / "cache").mkdir()
    assert main(["lm", "scan", "--local", str(revs), *SCAN_KNOBS, "--out", str(out)]) == 0  # no metrics: replaced
    capsys.readouterr()
    # a scan that stored evaluations is never replaced
    assert main(["lm", "scan", "--local", str(revs), "--param", "length=9", "--param", "repeat=4",
                 "--out", str(out)]) == 2
    assert "holds a scan of" in _one_line(capsys)


def test_damaged_checkpoints_are_named_in_the_users_folder(suite, tmp_path, capsys):
    revs = _copy_revisions(suite, tmp_path / "revs", [0, 1000, 2000])
    patch = ["lm", "patch", "--local", str(revs), *SCAN_KNOBS, "--early", "step0", "--late", "step2000",
             "--out", str(tmp_path / "patch")]
    config = revs / "step2000" / "config.json"
    text = config.read_text()
    config.write_text("{'model_type': 'gpt_neox'}")
    assert main(patch) == 2
    assert f"{config}: not valid JSON" in _one_line(capsys)
    config.write_text(text)

    weights = revs / "step2000" / "model.safetensors"
    intact = weights.read_bytes()
    weights.rename(revs / "step2000" / "model.bin")
    assert main(patch) == 2
    line = _one_line(capsys)
    assert f"{revs / 'step2000'}: no *.safetensors weights (it has model.bin)" in line and "emergelab-patch" not in line
    (revs / "step2000" / "model.bin").unlink()

    weights.write_bytes(intact[:len(intact) // 2])  # truncated
    assert main(patch) == 2
    assert f"{weights}: damaged safetensors file (truncated" in _one_line(capsys)
    assert not (tmp_path / "patch").exists()
    # a scan stops at the damaged revision with one line; the revisions scored before it stay, so it resumes
    out = tmp_path / "scan"
    assert main(["lm", "scan", "--local", str(revs), *SCAN_KNOBS, "--exhaustive", "--out", str(out)]) == 2
    assert f"{weights}: damaged safetensors file" in _one_line(capsys)
    import pyarrow.parquet as pq

    assert sorted(set(pq.read_table(out / "metrics.parquet").column("step").to_pylist())) == [0, 1000]
    weights.write_bytes(intact)
    assert main(["lm", "scan", "--local", str(revs), *SCAN_KNOBS, "--exhaustive", "--out", str(out)]) == 0


def test_library_checks_name_the_field_and_the_cli_names_the_flag(suite):
    from emergelab.config import ConfigError
    from emergelab.lm.capabilities import check_params, memory_errors
    from emergelab.lm.patch import check_patch
    from emergelab.lm.scan import SCAN_FLAGS, with_flags

    with pytest.raises(ConfigError, match=r"^batch_size=0: must be an integer"):
        _config(batch_size=0)
    with pytest.raises(ConfigError, match=r"^prompt_seed=-1"):
        _config(prompt_seed=-1)
    assert str(with_flags(ConfigError("batch_size=0: must be"), SCAN_FLAGS)) == "--batch-size=0: must be"
    assert str(with_flags(ConfigError("dtype 'x': allowed"), SCAN_FLAGS)) == "--dtype 'x': allowed"
    assert str(with_flags(ConfigError("something_else=1: no"), SCAN_FLAGS)) == "something_else=1: no"
    with pytest.raises(ConfigError, match="must be an integer"):
        check_params("repetition", {"length": 8.5})
    with pytest.raises(ConfigError, match="context of 16 positions"):
        check_params("induction", {"length": 30}, context=16)
    check_params("induction", {"length": 17}, context=16)  # the answer is not read by the model
    with pytest.raises(ConfigError, match="top_k=0"):
        check_patch("step1", "step2", top_k=0)
    with pytest.raises(ConfigError, match="early must come before late"):
        check_patch("step1000", "step2")
    check_patch("main", "other")  # not stepN: only that they differ

    prompts = build_prompts("repetition", _tokenizer(suite), n=4, **REP)
    with pytest.raises(ConfigError, match=r"out of memory on cpu running 4 prompts .* lower --batch-size"):
        with memory_errors(prompts, 64, "cpu"):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    with pytest.raises(RuntimeError, match="other"):
        with memory_errors(prompts, 64, "cpu"):
            raise RuntimeError("other")


def _tokenizer(suite: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(suite / "seed0" / "step0" / "tokenizer.json"))


def test_pythia_revisions_and_context_are_checked_without_the_network(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    out = tmp_path / "scan"
    assert main(["lm", "scan", "--pythia", "14m", "--revisions", "step0,step3", "--out", str(out)]) == 2
    assert "EleutherAI/pythia-14m: no revision 'step3'" in _one_line(capsys)
    assert main(["lm", "scan", "--pythia", "14m", "--capability", "induction", "--param", "length=3000",
                 "--out", str(out)]) == 2
    assert "longer than its context of 2048 positions" in _one_line(capsys)
    assert main(["lm", "patch", "--pythia", "14m", "--early", "step1000", "--late", "step100", "--out", str(out)]) == 2
    assert "early must come before late" in _one_line(capsys)
    assert not out.exists()
