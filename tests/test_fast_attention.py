"""The training step's attention (``models/fast_attention.py``) against the reference path
(``Attention._attend_observed`` under autograd), and the per-row invariances its bit-identity rests on."""

from __future__ import annotations

import pytest
import torch

from emergelab.models import TransformerConfig
from emergelab.models.fast_attention import causal_attention, padded_length


def _forward_backward(model, tokens, fast: bool, bias=None):
    for block in model.blocks:
        block.attn.blocked = fast
    model.zero_grad(set_to_none=True)
    out = model(tokens, attn_bias=bias)
    weights = torch.linspace(-1, 1, out.numel()).view(out.shape)
    (out * weights).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    scale = a.abs().max().item()
    err = (a - b).abs().max().item()
    assert err <= 2e-5 * scale + 1e-7, f"{what}: max error {err:.2e} at scale {scale:.2e}"


@pytest.mark.parametrize("layers,heads,head_dim,T,V,E,B,bias", [
    (2, 3, 4, 9, 3, 2, 5, None),
    (1, 8, 8, 31, 2, 2, 7, None),
    (1, 8, 8, 15, 2, 3, 4, "per-member"),
    (2, 5, 3, 7, 4, 1, 3, "shared"),
    (1, 2, 5, 16, 3, 2, 3, None),
    (1, 1, 1, 1, 2, 1, 2, None),
    (1, 2, 4, 33, 2, 1, 2, "shared"),
])
def test_fast_attention_matches_the_reference_outputs_and_gradients(layers, heads, head_dim, T, V, E, B, bias):
    cfg = TransformerConfig(layers=layers, heads=heads, head_dim=head_dim, vocab_size=V,
                            context_length=T).resolved(V, T)
    model = cfg.build(E, seeds=list(range(E)))
    with torch.no_grad():  # non-trivial norms and biases, so every gradient path carries signal
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    tokens = torch.randint(0, V, (E, B, T), generator=torch.Generator().manual_seed(1))
    attn_bias = None
    if bias == "per-member":
        attn_bias = torch.randn(E, layers, heads, T, T)
    elif bias == "shared":
        attn_bias = torch.randn(layers, heads, T, T)
    ref_out, ref_grads = _forward_backward(model, tokens, False, attn_bias)
    out, grads = _forward_backward(model, tokens, True, attn_bias)
    _assert_close(ref_out, out, "logits")
    for name in ref_grads:
        _assert_close(ref_grads[name], grads[name], name)


def test_the_implementation_is_chosen_explicitly_never_by_hooks():
    cfg = TransformerConfig(layers=1, heads=2, head_dim=4, vocab_size=2, context_length=7).resolved(2, 7)
    model = cfg.build(1)
    tokens = torch.randint(0, 2, (3, 7))
    attn = model.blocks[0].attn
    x = torch.zeros(1, 3, 7, 8)
    assert attn.implementation(x, None) == "blocked"  # the CPU training default
    with model.observing():
        assert attn.implementation(x, None) == "materialised"
    assert attn.implementation(x, torch.zeros(2, 7, 7, requires_grad=True)) == "materialised"
    _, cache = model.run_with_cache(tokens)  # the reference path, pattern cached
    assert "blocks.0.attn.hook_pattern" in cache
    with model.hooks([("blocks.0.attn.hook_z", lambda t, h: None)]):
        assert attn.implementation(x, None) == "blocked"  # a hook does not switch the path ...
        with pytest.raises(RuntimeError, match="hook_z is not formed by blocked attention"):
            model(tokens)  # ... it is refused, naming the fix
    attn.blocked = False
    assert attn.implementation(x, None) == "materialised"
    model.use_fused_attention(True)
    assert attn.implementation(x, None) == "fused"


def test_a_row_does_not_depend_on_the_batch_the_threads_or_its_neighbours():
    """What the fast path's bit-identity rests on: torch.softmax forward (any threads) and its native
    backward (one thread), and bmm, give a row / matrix the same bits in any batch."""
    before = torch.get_num_threads()
    try:
        for T in (7, 15, 31):
            Tp = padded_length(T)
            gen = torch.Generator().manual_seed(T)
            s = torch.randn(600, T, Tp, generator=gen) * 3
            s.masked_fill_(~torch.ones(T, Tp, dtype=torch.bool).tril(), float("-inf"))
            g = torch.randn(600, T, Tp, generator=gen)
            q, k = torch.randn(2, 600, T, 8, generator=gen)
            results = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                p = torch.softmax(s, -1)
                torch.set_num_threads(1)
                d = torch._softmax_backward_data(g, p, -1, torch.float32)
                torch.set_num_threads(threads)
                m = torch.bmm(q, k.transpose(1, 2))
                results.append((p, d, m))
                for a, b in ((0, 1), (3, 130), (101, 600), (7, 8)):
                    assert torch.equal(torch.softmax(s[a:b], -1), p[a:b])
                    torch.set_num_threads(1)
                    assert torch.equal(torch._softmax_backward_data(g[a:b], p[a:b], -1, torch.float32), d[a:b])
                    torch.set_num_threads(threads)
                    assert torch.equal(torch.bmm(q[a:b], k[a:b].transpose(1, 2)), m[a:b])
            for x, y in zip(*results):
                assert torch.equal(x, y)
    finally:
        torch.set_num_threads(before)


def test_causal_attention_refuses_a_bias_that_needs_a_gradient():
    qkv = torch.zeros(1, 2, 3, 3, 1, 2)
    with pytest.raises(ValueError):
        causal_attention(qkv, torch.zeros(1, 3, 3, requires_grad=True))


HOOKS = ("q", "k", "v", "attn_scores", "pattern", "z")


@pytest.mark.parametrize("T,E,bias", [(7, 1, False), (15, 3, True), (31, 2, False)])
def test_observed_attention_without_gradients_matches_the_reference_hooks(T, E, bias):
    """With gradients off, ``run_with_cache`` / ``run_with_hooks`` take ``observed_attention``: every hook
    point fires with the reference's shape, values agree to float rounding, and a patching hook changes
    the output the same way on both paths."""
    cfg = TransformerConfig(layers=2, heads=3, head_dim=4, vocab_size=5, context_length=T)
    model = cfg.build(n_models=E, seeds=list(range(E)))
    tokens = torch.randint(0, 5, (E, 6, T), generator=torch.Generator().manual_seed(T))
    inputs = {"attn_bias": torch.randn(E, 2, 3, T, T)} if bias else {}
    names = [f"blocks.{l}.attn.hook_{h}" for l in range(2) for h in HOOKS]
    reference = model.run_with_cache(tokens, names_filter=names, member_dim=True, **inputs)  # grad on
    with torch.no_grad():
        fast = model.run_with_cache(tokens, names_filter=names, member_dim=True, **inputs)
    _assert_close(reference[0].detach(), fast[0], "logits")
    for name in names:
        a, b = reference[1][name], fast[1][name]
        assert a.shape == b.shape, name
        assert b.is_contiguous() or name[-2:] in ("_q", "_k", "_v"), name  # q, k, v: views of qkv, as in the reference
        finite = torch.isfinite(a)
        assert torch.equal(finite, torch.isfinite(b)), name  # -inf above the diagonal in both
        _assert_close(a[finite], b[finite], name)

    def patch(pattern, hook):  # every head attends to the first token
        out = torch.zeros_like(pattern)
        out[..., 0] = 1
        return out

    def scale_v(v, hook):
        return v * 2

    hooks = [("blocks.0.attn.hook_pattern", patch), ("blocks.1.attn.hook_v", scale_v)]
    patched_ref = model.run_with_hooks(tokens, fwd_hooks=hooks, member_dim=True, **inputs).detach()
    with torch.no_grad():
        patched = model.run_with_hooks(tokens, fwd_hooks=hooks, member_dim=True, **inputs)
        plain = model(tokens, **inputs)
    _assert_close(patched_ref, patched, "patched logits")
    assert (patched - plain).abs().max() > 1e-3  # the patch did something


@pytest.mark.parametrize("head_dim,T,E", [(8, 15, 2), (16, 31, 1), (8, 9, 3)])
def test_observed_attention_through_the_kernel_matches_the_reference(head_dim, T, E):
    """Hooks on the pattern and z only (what the training probes read): with gradients off the C kernel forms
    them (``_observed_native``); values agree with the reference path to float rounding."""
    cfg = TransformerConfig(layers=2, heads=2, head_dim=head_dim, vocab_size=5, context_length=T)
    model = cfg.build(n_models=E, seeds=list(range(E)))
    tokens = torch.randint(0, 5, (E, 6, T), generator=torch.Generator().manual_seed(T))
    names = [f"blocks.{l}.attn.hook_{h}" for l in range(2) for h in ("pattern", "z")]
    reference = model.run_with_cache(tokens, names_filter=names, member_dim=True)  # grad on: the reference
    with torch.no_grad():
        fast = model.run_with_cache(tokens, names_filter=names, member_dim=True)
    _assert_close(reference[0].detach(), fast[0], "logits")
    for name in names:
        assert reference[1][name].shape == fast[1][name].shape and fast[1][name].is_contiguous(), name
        _assert_close(reference[1][name], fast[1][name], name)

    def patch(pattern, hook):  # every head attends to the first token
        out = torch.zeros_like(pattern)
        out[..., 0] = 1
        return out

    hooks = [("blocks.0.attn.hook_pattern", patch)]
    patched_ref = model.run_with_hooks(tokens, fwd_hooks=hooks, member_dim=True).detach()
    with torch.no_grad():
        patched = model.run_with_hooks(tokens, fwd_hooks=hooks, member_dim=True)
    _assert_close(patched_ref, patched, "patched logits")
    assert (patched - fast[0]).abs().max() > 1e-3  # the patch did something


@pytest.mark.parametrize("head_dim", [4, 8])
def test_observed_attention_bits_do_not_depend_on_the_other_members(head_dim):
    cfg = TransformerConfig(layers=1, heads=2, head_dim=head_dim, vocab_size=5, context_length=15)
    tokens = torch.randint(0, 5, (3, 8, 15), generator=torch.Generator().manual_seed(0))
    name = "blocks.0.attn.hook_pattern"
    with torch.no_grad():
        logits, cache = cfg.build(n_models=3, seeds=[0, 1, 2]).run_with_cache(tokens, names_filter=name)
        alone, alone_cache = cfg.build(n_models=1, seeds=[1]).run_with_cache(tokens[1:2], names_filter=name,
                                                                              member_dim=True)
    assert torch.equal(logits[1], alone[0]) and torch.equal(cache[name][1], alone_cache[name][0])


@pytest.mark.parametrize("head_dim", [4, 8], ids=["torch", "kernel"])
def test_observed_attention_goes_on_with_what_a_hook_changed_in_place(head_dim):
    cfg = TransformerConfig(layers=1, heads=2, head_dim=head_dim, vocab_size=5, context_length=11)
    model = cfg.build(n_models=2, seeds=[0, 1])
    tokens = torch.randint(0, 5, (2, 4, 11), generator=torch.Generator().manual_seed(3))

    def returned(pattern, hook):
        out = torch.zeros_like(pattern)
        out[..., 0] = 1
        return out

    def in_place(pattern, hook):
        pattern.zero_()
        pattern[..., 0] = 1

    with torch.no_grad():
        a = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", returned)])
        b = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", in_place)])
        plain = model(tokens)
    assert torch.equal(a, b) and not torch.equal(a, plain)


@pytest.mark.parametrize("head_dim", [4, 8], ids=["torch", "kernel"])
@pytest.mark.parametrize("name", HOOKS)
def test_a_hook_that_returns_what_it_was_given_changes_no_bit(name, head_dim):
    """Patching a model with its own activations gains nothing, exactly: with gradients off, a hook on any
    attention hook point that returns a copy of its input leaves the output bit-identical to no hook."""
    cfg = TransformerConfig(layers=2, heads=2, head_dim=head_dim, vocab_size=5, context_length=13)
    model = cfg.build(n_models=2, seeds=[0, 1])
    tokens = torch.randint(0, 5, (2, 3, 13), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        hooked = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.0.attn.hook_{name}", lambda t, hook: t.clone())])
        with model.observing():
            unhooked = model(tokens)
    assert torch.equal(hooked, unhooked)


@pytest.mark.parametrize("T", [9, 31])
def test_a_scores_patch_through_the_kernel_matches_the_reference(T):
    cfg = TransformerConfig(layers=1, heads=2, head_dim=8, vocab_size=5, context_length=T)
    model = cfg.build(n_models=2, seeds=[0, 1])
    tokens = torch.randint(0, 5, (2, 4, T), generator=torch.Generator().manual_seed(T))

    def flatten(scores, hook):  # uniform over the past, and attend to the future too (the reference allows it)
        return torch.zeros_like(scores)

    hooks = [("blocks.0.attn.hook_attn_scores", flatten)]
    reference = model.run_with_hooks(tokens, fwd_hooks=hooks).detach()  # gradients on: the reference path
    with torch.no_grad():
        kernel = model.run_with_hooks(tokens, fwd_hooks=hooks)
        plain = model(tokens)
    _assert_close(reference, kernel, "logits")
    assert (kernel - plain).abs().max() > 1e-4


def test_what_a_hook_returns_reaches_the_kernel_in_its_layout():
    """A strided pattern (a stride-0 view) works as on the reference; a wrong size fails as there, with an
    error, never a read past the tensor."""
    cfg = TransformerConfig(layers=1, heads=2, head_dim=8, vocab_size=5, context_length=9)
    model = cfg.build(n_models=2, seeds=[0, 1])
    tokens = torch.randint(0, 5, (2, 3, 9), generator=torch.Generator().manual_seed(2))
    uniform = torch.ones(9, 9).tril()
    uniform = uniform / uniform.sum(-1, keepdim=True)

    hooks = [("blocks.0.attn.hook_pattern", lambda pattern, hook: uniform.expand_as(pattern))]
    reference = model.run_with_hooks(tokens, fwd_hooks=hooks).detach()
    with torch.no_grad():
        kernel = model.run_with_hooks(tokens, fwd_hooks=hooks)
    _assert_close(reference, kernel, "logits")
    wrong = [("blocks.0.attn.hook_pattern", lambda pattern, hook: uniform)]
    with pytest.raises(ValueError, match="returned shape"):
        model.run_with_hooks(tokens, fwd_hooks=wrong)
    with torch.no_grad(), pytest.raises(ValueError, match="returned shape"):
        model.run_with_hooks(tokens, fwd_hooks=wrong)
