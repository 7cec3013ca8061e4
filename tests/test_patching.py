"""Known-answer tests for attention-head patching and ablation (emergelab.interventions.patching)."""

import copy
import math

import pytest
import torch

from emergelab.interventions import (
    PatchTarget,
    ablate_heads,
    ablation_table,
    cache_attention,
    count_heads,
    greedy_heads,
    hook_name,
    patch_heads,
    patching_table,
    run_with_head_edits,
    target_metrics,
)
from emergelab.config import ConfigError
from emergelab.models import Transformer, TransformerConfig, model_class
from emergelab.tasks import LinearMapConfig, make_generator

torch.set_num_threads(1)

S = 8  # linear-map state size: L = 16 tokens, 15 prediction positions
CFG = TransformerConfig(layers=2, heads=3, head_dim=4, vocab_size=2, context_length=15)
ATTN_ONLY = TransformerConfig(layers=1, heads=3, head_dim=4, mlp_ratio=0, vocab_size=2, context_length=15)


def random_tokens(n=32, seed=0):
    return torch.randint(0, 2, (n, 2 * S), generator=torch.Generator().manual_seed(seed))


def observer(what="pattern"):
    """A hook that records each layer's ``hook_{what}`` as the model sees it (after any edit)."""
    seen = {}

    def save(tensor, hook):
        seen[hook.name] = tensor.detach().clone()

    return seen, [(lambda name: name.endswith(hook_name(0, what).split(".")[-1]), save)]


def all_heads(cfg):
    return [(layer, head) for layer in range(cfg.layers) for head in range(cfg.heads)]


def causal_uniform(T):
    tril = torch.ones(T, T).tril()
    return tril / tril.sum(dim=-1, keepdim=True)


# ------------------------------------------------------------------------------------------ patching

@pytest.mark.parametrize("what", ["pattern", "scores"])
def test_patching_every_head_reproduces_late_patterns(what):
    early, late = Transformer(CFG, seeds=[0]), Transformer(CFG, seeds=[1])
    tokens = random_tokens()
    source = cache_attention(late, tokens, what)
    late_patterns = cache_attention(late, tokens, "pattern")
    seen, watch = observer("pattern")
    patch_heads(early, tokens, source, all_heads(CFG), what, fwd_hooks=watch)
    assert sorted(seen) == sorted(late_patterns)
    early_patterns = cache_attention(early, tokens, "pattern")
    for name, pattern in late_patterns.items():
        assert torch.equal(seen[name], pattern), name
        assert not torch.equal(early_patterns[name], pattern)  # the patch did something


def test_patching_qk_only_difference_gives_late_logits_exactly():
    """1-layer attention-only models differing only in W_QKV's query/key columns: late patterns in early
    reproduce the late model's logits bit for bit."""
    early = Transformer(ATTN_ONLY, seeds=[0])
    late = Transformer(ATTN_ONLY, seeds=[0])
    other = Transformer(ATTN_ONLY, seeds=[7])
    qk = 2 * ATTN_ONLY.heads * ATTN_ONLY.head_dim
    with torch.no_grad():
        late.blocks[0].attn.W_QKV[..., :qk] = other.blocks[0].attn.W_QKV[..., :qk]
    tokens = random_tokens()
    late_logits = run_with_head_edits(late, tokens)
    patched = patch_heads(early, tokens, cache_attention(late, tokens), all_heads(ATTN_ONLY))
    assert not torch.equal(run_with_head_edits(early, tokens), late_logits)
    assert torch.equal(patched, late_logits)


def test_patching_a_model_into_itself_changes_nothing():
    model = Transformer(CFG, seeds=[3])
    tokens = random_tokens()
    clean, _ = model.run_with_cache(tokens[:, :-1], names_filter=lambda n: n.endswith("hook_pattern"))
    for what in ("pattern", "scores"):
        source = cache_attention(model, tokens, what)
        for heads in ([(1, 2)], all_heads(CFG)):
            assert torch.equal(patch_heads(model, tokens, source, heads, what), clean)
    # and the model is left without hooks
    assert not any(hp.has_hooks() for hp in model.hook_dict.values())


def test_patch_target_names_and_validation():
    assert PatchTarget(1, 2).name == "blocks.1.attn.hook_pattern"
    assert PatchTarget(0, 0, "scores").name == "blocks.0.attn.hook_attn_scores"
    with pytest.raises(ValueError):
        PatchTarget(0, 0, "values")
    model = Transformer(CFG, seeds=[0])
    with pytest.raises(ValueError, match=r"head \(5, 0\): the model has layers 0\.\.1"):  # was a KeyError
        ablate_heads(model, random_tokens(4), [(5, 0)])
    with pytest.raises(ValueError, match=r"^head \(1, 3\): the model has heads 0\.\.2$"):
        ablate_heads(model, random_tokens(4), [(1, 3)])
    heads = count_heads(model, random_tokens(4))
    assert heads == CFG.layers * CFG.heads and count_heads(mixer("mamba", 0), random_tokens(4), "mixer") == 2 * 32


# ------------------------------------------------------------------------------------------ ablation

def test_ablations_write_the_intended_pattern():
    model = Transformer(CFG, seeds=[2])
    tokens = random_tokens()
    T = tokens.shape[1] - 1
    clean = cache_attention(model, tokens)["blocks.0.attn.hook_pattern"]
    name = "blocks.0.attn.hook_pattern"

    def ablated(kind, what="pattern", mean_cache=None):
        seen, watch = observer("pattern")
        ablate_heads(model, tokens, [(0, 1)], kind, what, mean_cache, fwd_hooks=watch)
        assert torch.equal(seen[name][:, [0, 2]], clean[:, [0, 2]])  # other heads untouched
        return seen[name][:, 1]

    assert torch.equal(ablated("zero"), torch.zeros(len(tokens), T, T))
    torch.testing.assert_close(ablated("mean"), clean[:, 1].mean(dim=0).expand(len(tokens), T, T))
    other = random_tokens(8, seed=5)
    other_cache = cache_attention(model, other)
    torch.testing.assert_close(ablated("mean", mean_cache=other_cache),
                               other_cache[name][:, 1].mean(dim=0).expand(len(tokens), T, T))
    torch.testing.assert_close(ablated("uniform"), causal_uniform(T).expand(len(tokens), T, T))
    for kind in ("zero", "uniform"):  # zero scores keep -inf above the diagonal: uniform attention
        torch.testing.assert_close(ablated(kind, "scores"), causal_uniform(T).expand(len(tokens), T, T))
    with pytest.raises(ValueError):
        ablate_heads(model, tokens, [(0, 1)], "random")


def test_uniform_ablation_of_uniform_heads_changes_nothing():
    model = Transformer(CFG, seeds=[4])
    qk = CFG.heads * CFG.head_dim
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_QKV[..., :qk] = 0  # queries 0: every score 0, every pattern uniform
    tokens = random_tokens()
    clean = run_with_head_edits(model, tokens)
    for what in ("pattern", "scores"):
        torch.testing.assert_close(ablate_heads(model, tokens, all_heads(CFG), "uniform", what), clean,
                                   rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------ hand-built circuit

def copy_circuit(task, carrier_on: bool, seed: int = 0) -> Transformer:
    """A 1-layer attention-only transformer that solves the linear map with sparsity 1 (``x1[i] = x0[j(i)]``)
    through head 0 alone, when ``carrier_on``.

    Residual stream (d = 3 heads * 16 = 48), every vector zero-mean so ``ln1`` only rescales by
    ``1/sigma``: position t -> ``e_{2t} - e_{2t+1}`` (dims 0..29); token v -> ``(2v-1)(e_30 - e_31)``.
    Head 0 (the carrier): query at position ``p = S-1+i`` -> ``beta * u_{j(i)}``, key at ``j < S`` -> ``u_j``
    (score ``3 beta = 15`` on the right key, 0 elsewhere); value = the token sign; output writes it to
    ``e_32 - e_33``, which the unembedding reads as the logit of token 1 minus token 0. With
    ``carrier_on=False`` the carrier's query weights are 0 (uniform attention, a blurred copy) and
    everything else is identical. Head 1 (distractor): random Q/K drawn from ``seed`` (so it differs
    between early and late) and a small random V/O. Head 2: random Q/K/V/O, the same in both models.
    """
    cfg = TransformerConfig(layers=1, heads=3, head_dim=16, mlp_ratio=0, vocab_size=2, context_length=2 * S - 1)
    model = Transformer(cfg, seeds=[0])
    H, D, d = 3, 16, 48
    beta, gamma = 5.0, 3.0
    fixed = torch.Generator().manual_seed(123)
    varying = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.blocks[0].ln1.w.fill_(1.0)
        model.ln_final.w.fill_(1.0)
        for t in range(cfg.context_length):
            model.W_pos[0, t, 2 * t], model.W_pos[0, t, 2 * t + 1] = 1.0, -1.0
        model.W_E[0, 1, 30], model.W_E[0, 1, 31] = 1.0, -1.0
        model.W_E[0, 0, 30], model.W_E[0, 0, 31] = -1.0, 1.0
        W, W_O = model.blocks[0].attn.W_QKV[0], model.blocks[0].attn.W_O[0]  # [d, (3, H, D)], [(H, D), d]

        def col(which, head, dim=0):
            return which * H * D + head * D + dim

        columns = task.matrix.argmax(dim=1)  # j(i)
        for i in range(S):
            if carrier_on:
                W[2 * (S - 1 + i), col(0, 0, int(columns[i]))] = beta
            W[2 * i, col(1, 0, i)] = 1.0
        W[30, col(2, 0)] = 1.0
        W_O[0, 32], W_O[0, 33] = gamma, -gamma
        model.W_U[0, 32, 1], model.W_U[0, 32, 0] = 1.0, -1.0
        for which in (0, 1):  # distractor Q/K vary, head 2's are fixed
            W[:, col(which, 1):col(which, 1) + D] = torch.randn(d, D, generator=varying) * 0.5
            W[:, col(which, 2):col(which, 2) + D] = torch.randn(d, D, generator=fixed) * 0.5
        for head in (1, 2):
            W[:, col(2, head):col(2, head) + D] = torch.randn(d, D, generator=fixed) * 0.5
            W_O[head * D:(head + 1) * D] = torch.randn(D, d, generator=fixed) * 0.1
    return model


@pytest.fixture(scope="module")
def circuit():
    task = LinearMapConfig(state_size=S, sparsity=1).build(make_generator(0))
    tokens = task.sample(256, make_generator(1)).tokens
    early, late = copy_circuit(task, carrier_on=False, seed=1), copy_circuit(task, carrier_on=True, seed=2)
    return task, tokens, early, late


def test_hand_built_circuit_is_as_designed(circuit):
    task, tokens, early, late = circuit
    late_m = target_metrics(run_with_head_edits(late, tokens), tokens, task.output_index)
    early_m = target_metrics(run_with_head_edits(early, tokens), tokens, task.output_index)
    assert late_m["prob_per_output"].min() > 0.99  # the carrier copies every output bit
    assert early_m["prob_per_output"].max() < 0.8


def test_carrier_ranks_first_in_patching_table_and_greedy(circuit):
    task, tokens, early, late = circuit
    table = patching_table(early, late, tokens, output_index=task.output_index, loss_mask=task.loss_mask)
    assert table.prob_gain.shape == table.loss_drop.shape == (1, 3)
    assert table.prob_gain_per_output.shape == table.loss_drop_per_output.shape == (1, 3, S)
    assert table.ranking()[0] == (0, 0)
    assert table.prob_gain[0, 0] > 0.1 and table.loss_drop[0, 0] > 0.1  # 8 of the 15 positions gain
    assert (table.prob_gain_per_output[0, 0] > 0).all()
    assert table.prob_gain[0, 2] == 0 and table.loss_drop[0, 2] == 0  # identical patterns: exactly 0
    assert abs(float(table.prob_gain[0, 1])) < 0.05  # the distractor's pattern differs but barely matters
    rows = table.to_rows()
    assert len(rows) == 3 * (1 + S) and {"layer", "head", "output", "prob_gain", "loss_drop"} <= set(rows[0])

    greedy = greedy_heads(early, late, tokens, fraction=0.9, loss_mask=task.loss_mask)
    assert greedy.heads[0] == (0, 0) and greedy.reached
    assert greedy.recovered[0] >= 0.9 and len(greedy.heads) == 1

    ablation = ablation_table(late, tokens, kind="zero", output_index=task.output_index)
    assert ablation.prob_drop.argmax() == 0 and ablation.prob_drop[0, 0] > 0.1
    assert ablation.loss_increase_per_output.shape == (1, 3, S)
    # the carrier's late pattern depends on positions only, so its batch mean is itself: no damage
    mean = ablation_table(late, tokens, kind="mean")
    assert abs(float(mean.prob_drop[0, 0])) < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_patching_on_cuda_matches_cpu(circuit):
    task, tokens, early, late = circuit
    cpu = patching_table(early, late, tokens, output_index=task.output_index)
    early, late = copy.deepcopy(early).cuda(), copy.deepcopy(late).cuda()
    gpu = patching_table(early, late, tokens, output_index=task.output_index)  # CPU tokens: moved inside
    torch.testing.assert_close(gpu.prob_gain, cpu.prob_gain, rtol=0, atol=1e-4)
    assert greedy_heads(early, late, tokens.cuda()).heads[0] == (0, 0)
    assert ablation_table(late, tokens.cuda(), kind="mean").prob_drop.device.type == "cpu"


def test_patching_table_batched_equals_unbatched_and_shapes():
    early, late = Transformer(CFG, seeds=[0]), Transformer(CFG, seeds=[1])
    tokens = random_tokens(24)
    whole = patching_table(early, late, tokens, what="scores")
    chunked = patching_table(early, late, tokens, what="scores", batch_size=7)
    assert whole.prob_gain.shape == (CFG.layers, CFG.heads) and whole.prob_gain_per_output is None
    torch.testing.assert_close(whole.prob_gain, chunked.prob_gain, rtol=0, atol=1e-6)
    torch.testing.assert_close(whole.loss_drop, chunked.loss_drop, rtol=0, atol=1e-6)
    assert len(whole.to_rows()) == CFG.layers * CFG.heads


# ------------------------------------------------------------------------------------------- metrics

def test_target_metrics_known_answer():
    tokens = torch.tensor([[0, 1, 0, 1], [1, 1, 0, 0]])
    logits = torch.zeros(2, 3, 2)
    logits[0, 0, 1] = math.log(3.0)  # p(correct = 1) = 3/4 at row 0, position 0
    output_index = torch.tensor([-1, 0, 0])
    m = target_metrics(logits, tokens, output_index, loss_mask=torch.tensor([False, True, True]))
    torch.testing.assert_close(m["prob"], torch.tensor([(0.75 + 0.5) / 2, 0.5, 0.5]))
    torch.testing.assert_close(m["mean_prob"], torch.tensor(0.5))
    torch.testing.assert_close(m["mean_loss"], torch.tensor(math.log(2)))
    torch.testing.assert_close(m["prob_per_output"], torch.tensor([0.5]))


def test_greedy_best_heads_is_the_prefix_that_recovered_the_most():
    from emergelab.interventions import GreedyResult

    g = GreedyResult("pattern", 0.9, 0.1, 0.5, heads=[(0, 1), (0, 0), (0, 2)], prob=[0.3, 0.4, 0.38],
                     recovered=[0.5, 0.75, 0.7])
    assert g.best_heads == [(0, 1), (0, 0)]
    g.recovered = [0.5, 0.75, 0.75]  # a tie: the shorter prefix
    assert g.best_heads == [(0, 1), (0, 0)]
    assert GreedyResult("pattern", 0.9, 0.5, 0.1).best_heads == []


def test_target_metrics_per_sequence_outputs_known_answer():
    """A per-sequence output index [n, P]: an output's means are over the (sequence, position) pairs that
    have it; an output no scored pair has is NaN."""
    tokens = torch.tensor([[0, 1, 0, 1], [1, 1, 0, 0]])
    logits = torch.zeros(2, 3, 2)
    logits[0, 2, 1] = math.log(3.0)  # p(correct = 1) = 3/4 at row 0, position 2
    index = torch.tensor([[-1, 0, 1], [-1, 0, -1]])  # row 1 has no output 1
    m = target_metrics(logits, tokens, index, loss_mask=torch.tensor([False, True, True]))
    torch.testing.assert_close(m["prob_per_output"], torch.tensor([0.5, 0.75]))
    torch.testing.assert_close(m["loss_per_output"], torch.tensor([math.log(2), -math.log(0.75)]))
    m = target_metrics(logits, tokens, torch.tensor([[-1, 0, 1], [-1, 0, 2]]), loss_mask=torch.tensor([False, True, False]))
    assert m["prob_per_output"][0] == 0.5 and m["prob_per_output"][1:].isnan().all()
    with pytest.raises(ValueError, match="output_index"):
        target_metrics(logits, tokens, index[:1])


def test_bad_arguments_are_named_before_any_forward_pass():
    """What an API fuzzing found (2026-11-28): models of other shapes gave a table of the late model's shape
    in silence, greedy_heads took any fraction, cache_attention returned {} for a layer not there, and heads,
    tokens and batch sizes out of range ended in IndexError / KeyError / torch errors deep inside."""
    from emergelab.interventions import ablation_table, cache_attention, greedy_heads, patch_heads

    early, late = Transformer(CFG, seeds=[0]), Transformer(CFG, seeds=[1])
    other = Transformer(ATTN_ONLY, seeds=[2])
    tokens = random_tokens(8)
    cases = [
        (lambda: patching_table(other, late, tokens), "differ in layers (1 vs 2)"),
        (lambda: greedy_heads(early, late, tokens, fraction=5), "fraction=5"),
        (lambda: greedy_heads(early, late, tokens, fraction=float("nan")), "fraction=nan"),
        (lambda: greedy_heads(early, late, tokens, max_heads=-1), "max_heads=-1"),
        (lambda: cache_attention(late, tokens, layers=[3]), "layers=[3]: the model has layers 0..1"),
        (lambda: patch_heads(early, tokens, cache_attention(late, tokens), [(0, 5)]), "head (0, 5)"),
        (lambda: patch_heads(early, tokens, {}, [(0, 1)]), "source_cache has no blocks.0.attn.hook_pattern"),
        (lambda: ablation_table(late, tokens, kind="mean", mean_cache={}), "mean_cache has no"),
        (lambda: ablation_table(late, tokens, kind="median"), "kind='median'"),
        (lambda: patching_table(early, late, tokens + 5), "ids must be in 0..1"),
        (lambda: patching_table(early, late, tokens.float()), "must be integer token ids"),
        (lambda: patching_table(early, late, tokens[:0]), "at least one sequence"),
        (lambda: patching_table(early, late, tokens, batch_size=0), "batch_size=0"),
        (lambda: cache_attention(late, [[0, 1, 0]]), "a torch tensor"),
    ]
    for call, words in cases:
        with pytest.raises(ValueError) as caught:
            call()
        assert words in str(caught.value), (words, str(caught.value))


def test_model_bias_and_analysis_arguments_are_named(tmp_path):
    """More of the API fuzzing's findings: token ids outside the vocabulary (an IndexError from the
    embedding), float tokens, a member index past the ensemble (IndexError deep inside; -1 took the last),
    ground_truth_bias of a NaN beta or a 1-D mask, train() of a dict or into a file (NotADirectoryError),
    analyze_runs of a path or by='...', an attn_bias of the wrong shape (torch's expand error)."""
    from emergelab.analysis import analyze_runs
    from emergelab.interventions import ground_truth_bias
    from emergelab.train import ExperimentConfig, train

    model = CFG.build(n_models=2, seeds=[0, 1])
    single = model.member(0)
    tokens = torch.zeros(2, 3, 5, dtype=torch.long)
    bias = torch.zeros(CFG.layers, CFG.heads, 5, 5)
    assert model(tokens, attn_bias=bias).shape == model(tokens, attn_bias=bias[None].expand(2, -1, -1, -1, -1)).shape
    (tmp_path / "file").write_text("x")
    config = ExperimentConfig.from_dict({"task": {"name": "linear-map", "state_size": 4, "sparsity": 1},
                                         "train": {"steps": 2, "seeds": 1}})
    for call, error, words in (
            (lambda: model(tokens, attn_bias=bias[0]), ValueError, "attn_bias of shape"),
            (lambda: model(tokens, attn_bias=bias[..., :4, :4]), ValueError, "query>=5"),
            (lambda: model(tokens, attn_bias=torch.zeros(3, *bias.shape)), ValueError, "[E=2, layers"),
            (lambda: model(tokens, attn_bias=bias.long()), TypeError, "a float tensor"),
            (lambda: train(config, tmp_path / "file"), ConfigError, "exists and is not a directory"),
            (lambda: train(config, tmp_path / "file" / "run"), ConfigError, "lies under"),
            (lambda: single(torch.full((2, 5), 7)), ValueError, "token ids must be in 0..1"),
            (lambda: single(torch.full((2, 5), -1)), ValueError, "found -1..-1"),
            (lambda: single(torch.zeros(2, 5)), TypeError, "integer token ids"),
            (lambda: model.member(5), IndexError, "members 0..1"),
            (lambda: model.member(-1), IndexError, "members 0..1"),
            (lambda: ground_truth_bias(torch.ones(4, 4, dtype=torch.bool), 1, 2, float("nan")), ValueError, "beta=nan"),
            (lambda: ground_truth_bias(torch.ones(4, dtype=torch.bool), 1, 2, 1.0), ValueError, "masks: [E, P, P]"),
            (lambda: ground_truth_bias(torch.ones(4, 4, dtype=torch.bool), -1, 2, 1.0), ValueError, "layers=-1"),
            (lambda: train({"task": {"name": "linear-map"}}, "/nonexistent/x"), TypeError, "an ExperimentConfig"),
            (lambda: analyze_runs("/some/path"), TypeError, "a connection from emergelab.store.connect"),
    ):
        with pytest.raises(error) as caught:
            call()
        assert words in str(caught.value), (words, str(caught.value))


def test_output_ids_and_caches_that_do_not_fit_are_named():
    """``n_outputs`` below the ids in ``output_index`` (or 0), float ids, and a source cache of other tokens
    ended in torch's one_hot / expand errors; now one ValueError each."""
    from emergelab.interventions import cache_attention, patch_heads

    early, late = Transformer(CFG, seeds=[0]), Transformer(CFG, seeds=[1])
    tokens = random_tokens(8)
    index = torch.arange(tokens.shape[1] - 1) % 3  # outputs 0..2
    assert patching_table(early, late, tokens, output_index=index).prob_gain_per_output.shape == (2, 3, 3)
    for call, words in ((lambda: patching_table(early, late, tokens, output_index=index, n_outputs=2), "n_outputs=2"),
                        (lambda: patching_table(early, late, tokens, output_index=index, n_outputs=0), "n_outputs=0"),
                        (lambda: patching_table(early, late, tokens, output_index=index.float()), "integer output ids"),
                        (lambda: patch_heads(early, tokens[:4], cache_attention(late, tokens), [(0, 1)]), "does not fit"),
                        (lambda: patch_heads(early, tokens, cache_attention(late, tokens[:, :8]), [(0, 1)]),
                         "does not fit")):
        with pytest.raises(ValueError) as caught:
            call()
        assert words in str(caught.value), (words, str(caught.value))


def test_the_greedy_note_says_when_the_whole_set_is_not_the_best():
    """What `patch` and `lm patch` print under the greedy set: nothing when every head added helps, the best
    prefix when later heads lower it, and that no set helps when every fraction is <= 0 (it read "the first
    1 head(s) recover the most (-0%)")."""
    from emergelab.interventions import GreedyResult

    def result(recovered):
        return GreedyResult("pattern", 0.9, 0.5, 0.9, heads=[(0, h) for h in range(len(recovered))],
                            prob=[0.5] * len(recovered), recovered=recovered)

    assert result([0.3, 0.6]).best_note() is None and result([]).best_note() is None
    assert result([0.3, 0.6, 0.4]).best_note() == ("greedy: the first 2 head(s) recover the most (60%); "
                                                   "the heads after them lower it")
    assert result([-0.01, -0.2]).best_note() == "greedy: no head set recovers any of the gain (every fraction <= 0)"


# ------------------------------------------------------------------------------ non-attention mixers

def mixer(name, seed, layers=2):
    extra = {} if name in ("mamba", "lru") else {"heads": 2}
    return model_class(name)(layers=layers, d_model=16, **extra).resolved(2, 15).build(1, seeds=[seed])


def test_patching_an_mlp_mixers_matrix_is_swapping_its_token_mixing_weights():
    """An MLP-Mixer's matrix is ``tril(W_tok)`` whatever the input: patching every head of every layer from
    the late model gives, bit for bit, the early model with the late ``W_tok`` (its ``b_tok`` and the rest
    its own)."""
    early, late = mixer("mlp_mixer", 0), mixer("mlp_mixer", 1)
    swapped = copy.deepcopy(early)
    with torch.no_grad():
        for block, source in zip(swapped.blocks, late.blocks):
            block.mixer.W_tok.copy_(source.mixer.W_tok)
    tokens = random_tokens()
    heads = [(layer, head) for layer in range(2) for head in range(2)]
    patched = patch_heads(early, tokens, cache_attention(late, tokens, "mixer"), heads, "mixer")
    assert torch.equal(patched, run_with_head_edits(swapped, tokens, what="mixer"))
    assert not torch.equal(patched, run_with_head_edits(early, tokens, what="mixer"))
    table = patching_table(early, late, tokens, what="mixer")
    assert table.prob_gain.shape == (2, 2) and table.what == "mixer"


@pytest.mark.parametrize("name", ["mlp_mixer", "gated_deltanet", "mlstm", "rwkv7", "mamba"])
def test_patching_a_mixer_into_itself_changes_nothing_and_heads_are_its_matrix_axis(name):
    model = mixer(name, 3)
    tokens = random_tokens(8)
    source = cache_attention(model, tokens, "mixer")
    n_heads = source[hook_name(0, "mixer")].shape[1]  # Mamba: its channels
    clean = run_with_head_edits(model, tokens, what="mixer")
    assert torch.equal(patch_heads(model, tokens, source, [(0, 0), (1, n_heads - 1)], "mixer"), clean)
    zeroed = ablate_heads(model, tokens, [(0, 0)], "zero", "mixer")
    assert not torch.equal(zeroed, clean)
    with pytest.raises(ValueError, match=rf"head {n_heads} of blocks\.0\.mixer\.hook_pattern: it has {n_heads}"):
        patch_heads(model, tokens, source, [(0, n_heads)], "mixer")
    with pytest.raises(ValueError, match=r"head \(2, 0\): the model has layers 0\.\.1"):
        patch_heads(model, tokens, source, [(2, 0)], "mixer")


def test_each_model_kind_is_told_which_what_it_has():
    tokens = random_tokens(4)
    with pytest.raises(ValueError, match=r"MLPMixer has no hook point blocks\.0\.attn\.hook_pattern to patch or "
                                         r"ablate; its mixer's mixing matrix is blocks\.\{l\}\.mixer\.hook_pattern: "
                                         r'patch it with what="mixer"'):
        cache_attention(mixer("mlp_mixer", 0), tokens)
    with pytest.raises(ValueError, match=r'no hook point blocks\.0\.mixer\.hook_pattern .*it has attention heads: '
                                         r'patch them with what="pattern"'):
        cache_attention(Transformer(CFG, seeds=[0]), tokens, "mixer")
    with pytest.raises(ValueError, match=r"LRU\w* has no hook point blocks\.0\.mixer\.hook_pattern .*hook_state_re"):
        cache_attention(mixer("lru", 0), tokens, "mixer")
    with pytest.raises(ValueError, match="what='heads': must be one of pattern, scores, mixer"):
        hook_name(0, "heads")


def test_progress_counts_every_evaluation_and_greedy_passes_bounds_them():
    from emergelab.interventions.patching import greedy_passes

    early, late = Transformer(CFG, seeds=[0]), Transformer(CFG, seeds=[1])
    tokens = random_tokens(16)
    calls = []
    patching_table(early, late, tokens, progress=lambda: calls.append(1))
    assert len(calls) == CFG.layers * CFG.heads + 2
    calls.clear()
    greedy_heads(late, early, tokens, progress=lambda: calls.append(1))
    assert len(calls) == 2  # early no worse than late the other way round: the two baselines only
    n = CFG.layers * CFG.heads
    assert greedy_passes(n) == 2 + n * (n + 1) // 2 and greedy_passes(n, 2) == 2 + n + (n - 1)
    for limit in (1, 2, None):
        calls.clear()
        result = greedy_heads(early, late, tokens, fraction=1.0, max_heads=limit, progress=lambda: calls.append(1))
        assert result.heads  # late is (slightly) better here, so the search runs
        assert len(calls) <= greedy_passes(n, limit)
        assert len(calls) == greedy_passes(n, limit) or result.reached
        assert len(result.heads) <= (limit or n)
