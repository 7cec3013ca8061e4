"""Question formation (McCoy et al. 2020 design) against a slow reference: a plain-Python enumeration of
the grammar's derivations (every sentence shape with its noun numbers, where its main and first auxiliary
sit), the question rules written word by word, and the rule evaluation (RuleEval) on hand-written models
that follow one rule each."""

from __future__ import annotations

import itertools

import pytest
import torch

from emergelab.config import ConfigError
from emergelab.tasks import (TASKS, QuestionFormationConfig, generalization_tokens, make_generator, seed_streams,
                             supports_lengths, supports_rules)
from emergelab.tasks.question_formation import CATEGORIES, WORDS
from emergelab.train import ExperimentConfig, RuleEval, SeedGroup
from emergelab.train.measure import probe

W = 17
NUMBERS = ("sg", "pl")

# ----------------------------------------------------------------------------------------------------
# The reference: derivations enumerated by hand
# ----------------------------------------------------------------------------------------------------


def N(num: str) -> str:
    return f"N.{num}"


def A(num: str, role: str) -> tuple[str, str]:
    return (f"A.{num}", role)


def ref_subjects():
    """(tags, has a relative clause) for every subject; the head noun's number first. An auxiliary is a
    (tag, role) pair, role "rc" inside a relative clause."""
    for head, other in itertools.product(NUMBERS, NUMBERS):
        yield head, ["D", N(head)], False
        yield head, ["D", N(head), "P", "D", N(other)], False
        yield head, ["D", N(head), "R", A(head, "rc"), "VI"], True
        yield head, ["D", N(head), "R", A(head, "rc"), "VT", "D", N(other)], True
        yield head, ["D", N(head), "R", "D", N(other), A(other, "rc"), "VT"], True


def ref_vps():
    for obj, other in itertools.product(NUMBERS, NUMBERS):
        yield ["VI"]
        yield ["VI", "P", "D", N(obj)]
        yield ["VT", "D", N(obj)]
        yield ["VT", "D", N(obj), "P", "D", N(other)]
        yield ["VT", "D", N(obj), "R", A(obj, "rc"), "VI"]
        yield ["VT", "D", N(obj), "R", "D", N(other), A(other, "rc"), "VT"]


def ref_sentences() -> dict[tuple[str, ...], tuple[int, int, bool]]:
    """Every sentence shape (a tuple of tags) -> (main auxiliary index, first auxiliary index, whether the
    subject has a relative clause). A shape reached by two derivations must agree on all three."""
    out: dict[tuple[str, ...], tuple[int, int, bool]] = {}
    for head, subject, rc in ref_subjects():
        for vp in ref_vps():
            items = subject + [A(head, "main")] + vp + ["."]
            tags = tuple(t[0] if isinstance(t, tuple) else t for t in items)
            main = next(i for i, t in enumerate(items) if isinstance(t, tuple) and t[1] == "main")
            first = next(i for i, t in enumerate(items) if isinstance(t, tuple))
            assert out.setdefault(tags, (main, first, rc)) == (main, first, rc)
    return out


REFERENCE = ref_sentences()
TAG_OF = {w: tag for tag, cats in (("D", ["D"]), ("N.sg", ["N_sg"]), ("N.pl", ["N_pl"]), ("A.sg", ["A_sg"]),
                                   ("A.pl", ["A_pl"]), ("VI", ["VI"]), ("VT", ["VT"]), ("P", ["P"]), ("R", ["R"]))
          for c in cats for w in CATEGORIES[c]}
TAG_OF["."] = "."


def ref_question(words: list[str], moved: int) -> list[str]:
    return [words[moved]] + words[:moved] + words[moved + 1:-1] + ["?"]


def split(seq: list[int]) -> tuple[list[str], str, list[str]]:
    """A sequence as (sentence words, marker, output words), checking the padding by hand."""
    assert len(seq) == 2 * W + 1
    text = [WORDS[t] for t in seq]
    n = text.index(".") + 1
    assert all(w == "<pad>" for w in text[n:W]) and "<pad>" not in text[:n]
    out = text[W + 1:]
    m = len([w for w in out if w != "<pad>"])
    assert all(w == "<pad>" for w in out[m:]) and "<pad>" not in out[:m]
    return text[:n], text[W], out[:m]


def shape(words: list[str]) -> tuple[str, ...]:
    return tuple(TAG_OF[w] for w in words)


def unnumbered(tags: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(t.split(".")[0] if t != "." else t for t in tags)


# ----------------------------------------------------------------------------------------------------
# The generator
# ----------------------------------------------------------------------------------------------------


def test_training_sequences_follow_the_grammar_and_never_tell_the_rules_apart():
    task = QuestionFormationConfig().build(make_generator(0))
    assert (task.vocab_size, task.seq_len, task.n_outputs) == (len(WORDS), 2 * W + 1, W)
    tokens = task.sample(4000, make_generator(1)).tokens
    seen = {"<quest>": set(), "<decl>": set()}
    for seq in tokens.tolist():
        words, marker, out = split(seq)
        tags = shape(words)
        assert tags in REFERENCE, words
        main, first, rc = REFERENCE[tags]
        if marker == "<decl>":
            assert out == words
        else:
            assert marker == "<quest>" and not rc
            assert first == main  # the linear and the hierarchical rule give the same question
            assert out == ref_question(words, main) == ref_question(words, first)
        seen[marker].add(unnumbered(tags))
    # every sentence kind the split allows appears: all 30 as declaratives, the 12 without a subject
    # relative clause as questions
    assert seen["<decl>"] == {unnumbered(t) for t in REFERENCE}
    assert seen["<quest>"] == {unnumbered(t) for t, (_, _, rc) in REFERENCE.items() if not rc}
    assert len(seen["<decl>"]) == 30 and len(seen["<quest>"]) == 12
    quest = (tokens[:, W] == WORDS.index("<quest>")).float().mean().item()
    assert quest == pytest.approx(0.5, abs=0.03)


def test_the_generalization_set_always_tells_the_rules_apart():
    task = QuestionFormationConfig().build(make_generator(0))
    tokens = task.sample_generalization(3000, make_generator(2)).tokens
    linear = task.apply_rule(tokens, "linear")
    assert torch.equal(task.apply_rule(tokens, "hierarchical"), tokens)  # the target is the correct question
    kinds = set()
    for seq, lin in zip(tokens.tolist(), linear.tolist()):
        words, marker, out = split(seq)
        tags = shape(words)
        main, first, rc = REFERENCE[tags]
        assert marker == "<quest>" and rc and first < main
        assert words[first] != words[main]  # so the first output word tells which rule was applied
        assert out == ref_question(words, main)
        assert split(lin) == (words, "<quest>", ref_question(words, first))
        kinds.add(unnumbered(tags))
    assert kinds == {unnumbered(t) for t, (_, _, rc) in REFERENCE.items() if rc} and len(kinds) == 18


def test_auxiliary_positions_match_the_derivations():
    task = QuestionFormationConfig().build(make_generator(0))
    tokens = torch.cat([task.sample(500, make_generator(3)).tokens,
                        task.sample_generalization(500, make_generator(4)).tokens])
    first, main = task.auxiliary_positions(tokens)
    for seq, f, m in zip(tokens.tolist(), first.tolist(), main.tolist()):
        assert REFERENCE[shape(split(seq)[0])][:2] == (m, f)


def test_config_registration_and_protocols():
    assert TASKS["question-formation"] is QuestionFormationConfig
    with pytest.raises(ConfigError, match="task.quest_fraction"):
        QuestionFormationConfig(quest_fraction=1.5)
    only_decl = QuestionFormationConfig(quest_fraction=0.0).build(make_generator(0))
    assert (only_decl.sample(200, make_generator(0)).tokens[:, W] == WORDS.index("<decl>")).all()
    task = QuestionFormationConfig().build(make_generator(0))
    assert supports_rules(task) and not supports_lengths(task)
    assert not supports_rules(TASKS["count"]().build(make_generator(0)))
    assert task.loss_mask.nonzero().flatten().tolist() == list(range(W, 2 * W))
    assert task.output_index[W].item() == 0 and task.output_index[W - 1].item() == -1
    assert task.optimal_loss() == 0.0 and not task.attention_mask.any()
    with pytest.raises(ValueError, match="allowed rules"):
        task.apply_rule(task.sample(2, make_generator(0)).tokens, "random")


def test_generalization_tokens_derive_from_the_eval_stream_alone():
    task = QuestionFormationConfig().build(make_generator(0))
    a = generalization_tokens(task, 5, 3, 32)
    assert torch.equal(a, generalization_tokens(task, 5, 3, 32))
    assert not torch.equal(a, generalization_tokens(task, 5, 4, 32))
    assert torch.equal(generalization_tokens(task, 5, 3, 64)[:32], a)
    assert seed_streams(5, 3)["eval"]


# ----------------------------------------------------------------------------------------------------
# The rule evaluation on hand-written models
# ----------------------------------------------------------------------------------------------------


class RuleFollower(torch.nn.Module):
    """Reads each sentence and answers by hand: ``rule`` "hierarchical" or "linear" fronts the main or the
    first auxiliary (found from the reference derivations), "copy" repeats the declarative; after the
    ``<decl>`` marker every one of them copies. Logits put
    all mass on the next token of that answer, whatever the prefix."""

    def __init__(self, rule: str):
        super().__init__()
        self.rule = rule

    def forward(self, x: torch.Tensor, **inputs) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        nxt = torch.zeros_like(flat)
        for row, seq in enumerate(flat.tolist()):
            words = [WORDS[t] for t in seq[:W] if WORDS[t] != "<pad>"]
            main, first, _ = REFERENCE[shape(words)]
            out = {"hierarchical": lambda: ref_question(words, main), "linear": lambda: ref_question(words, first),
                   "copy": lambda: words}[self.rule if WORDS[seq[W]] == "<quest>" else "copy"]()
            full = [WORDS.index(w) for w in words] + [0] * (W - len(words)) + [seq[W]]
            full += [WORDS.index(w) for w in out] + [0] * (W - len(out))
            nxt[row] = torch.tensor(full[1:])
        return torch.nn.functional.one_hot(nxt.view_as(x), len(WORDS)).float() * 50.0


def _probe(model, seeds=(0, 1), n=40):
    task = QuestionFormationConfig().build(make_generator(0))
    measure = RuleEval.for_seeds([task] * len(seeds), 0, list(seeds), n)
    eval_tokens = torch.stack([task.sample(n, make_generator(100 + i)).tokens for i in seeds])
    gt = torch.stack([task.attention_mask] * len(seeds))
    metrics, _ = probe(model, [measure], eval_tokens, task.loss_mask, task.output_index, gt, task.n_outputs)
    return {(m.name, label): m.values[:, k] for m in metrics for k, label in enumerate(m.labels)}


@pytest.mark.parametrize("rule,other", [("hierarchical", "linear"), ("linear", "hierarchical")])
def test_a_model_following_one_rule_scores_one_on_it_and_zero_on_the_other(rule, other):
    scores = _probe(RuleFollower(rule))
    assert set(scores) == {(m, r) for m in ("gen_first_word", "gen_accuracy", "gen_loss") for r in
                           ("hierarchical", "linear")} | {("id_accuracy", "")}
    for metric in ("gen_first_word", "gen_accuracy"):
        assert scores[metric, rule] == pytest.approx(1.0) and scores[metric, other] == pytest.approx(0.0)
    assert scores["gen_loss", rule] == pytest.approx(0.0, abs=1e-6) and (scores["gen_loss", other] > 1).all()
    # on the training distribution both rules are right
    assert scores["id_accuracy", ""] == pytest.approx(1.0)


def test_a_model_fronting_neither_auxiliary_scores_zero_on_both():
    scores = _probe(RuleFollower("copy"))
    for rule in ("hierarchical", "linear"):
        assert scores["gen_first_word", rule] == pytest.approx(0.0)
        assert scores["gen_accuracy", rule] == pytest.approx(0.0)


def test_seed_groups_record_rule_metrics_from_the_eval_stream():
    config = ExperimentConfig.from_dict({
        "task": {"name": "question-formation"}, "model": {"layers": 1, "heads": 1, "head_dim": 4},
        "train": {"steps": 2, "seeds": 2, "batch_size": 4, "eval_batch_size": 8}}).resolved()
    group = SeedGroup(config, [1, 0])
    (measure,) = [m for m in group.measurements if isinstance(m, RuleEval)]
    for e, seed in enumerate([1, 0]):
        expected = generalization_tokens(group.tasks[e], config.train.seed, seed, 8)
        assert torch.equal(measure.tokens[e, :8], expected)
    group.train()
    rows = {(r["metric"], r["index"]) for r in group.metrics.table().to_pylist() if r["step"] == 2}
    assert {("gen_first_word", "hierarchical"), ("gen_first_word", "linear"), ("gen_accuracy", "linear"),
            ("id_accuracy", "")} <= rows


def test_no_mass_and_an_honest_entropy_without_ground_truth_keys():
    """Question formation has no ground-truth attention: attn_entropy / attn_gt_mass averaged over no
    query once came out 0.0 (a perfectly sharp head, drawn and ranked in the figures). Now no mass is
    recorded, and the entropy is averaged over the output's own queries: a fresh model's near-uniform
    attention has an entropy well above 0 (the exact values: tests/test_measure.py)."""
    import pyarrow.compute as pc

    from emergelab.train import ExperimentConfig, SeedGroup

    config = ExperimentConfig.from_dict({"task": {"name": "question-formation"},
                                         "model": {"layers": 1, "heads": 2, "head_dim": 4, "mlp_ratio": 0},
                                         "train": {"steps": 2, "eval_every": 2, "eval_batch_size": 8,
                                                   "attention_snapshots": 0}}).resolved()
    group = SeedGroup(config, [0])
    group.train()
    table = group.metrics.table()
    metrics = set(table["metric"].to_pylist())
    assert "loss" in metrics and {m for m in metrics if m.startswith("attn_")} == {"attn_entropy",
                                                                                    "attn_entropy_pos"}, metrics
    entropy = table.filter(pc.equal(table["metric"], "attn_entropy"))["value"].to_numpy()
    assert entropy.size == 2 * 2 and (entropy > 0.5).all()  # 2 probes x 2 heads, near uniform over >= 2 keys


def test_output_words_count_only_in_the_sequences_that_have_them():
    """Output i (word i, predicted at position W+i) counts where the query holds the marker or a word,
    i.e. i <= the output's word count n (output n is the stop); past it the query holds PAD."""
    task = QuestionFormationConfig().build(make_generator(0))
    tokens = task.sample(400, make_generator(3)).tokens
    W = task.width
    index = task.sample_output_index(tokens)
    for row, seq in zip(index.tolist(), tokens.tolist()):
        n = sum(t != 0 for t in seq[W + 1:])  # the output's words, '?' or '.' included
        assert row == [p - W if W <= p <= W + n else -1 for p in range(2 * W)]
    assert not task.sample_attention_mask(tokens).any()  # still no ground-truth keys
    assert {len([x for x in row if x >= 0]) for row in index.tolist()} != {W}  # short sentences occur
