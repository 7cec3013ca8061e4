"""The transformer: fast SDPA path vs the hooked reference path, hook points, ensembles, bias, configs.

Shapes are odd on purpose (T=13, head_dim=7, 3 heads, d_model=10 != heads*head_dim) to exercise tails.
"""

from __future__ import annotations

import re

import pytest
import torch

from emergelab.config import ConfigError
from emergelab.models import HookPoint, Transformer, TransformerConfig

REL_TOL = 1e-5  # relative error allowed between two float32 computations of the same quantity
E_SEEDS = [11, 22, 33]
T, B, CTX, V = 13, 4, 16, 5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (0 when both are 0)."""
    a, b = a.detach().double(), b.detach().double()
    denom = b.norm().item()
    return (a - b).norm().item() / denom if denom > 0 else (a - b).norm().item()


def make_config(mlp_ratio: float = 4.0, layers: int = 2, init_std: float = 0.4) -> TransformerConfig:
    # A large init_std makes attention patterns far from uniform, so errors in them show.
    return TransformerConfig(layers=layers, heads=3, head_dim=7, d_model=10, mlp_ratio=mlp_ratio,
                             vocab_size=V, context_length=CTX, init_std=init_std)


def make_tokens(n_models: int, seed: int = 0, single: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (B, T) if single else (n_models, B, T)
    return torch.randint(0, V, shape, generator=g)


def observe(tensor: torch.Tensor, hook: HookPoint) -> None:
    """A no-op observing hook: hooking hook_pattern forces the manual attention path."""
    return None


def is_pattern(name: str) -> bool:
    return name.endswith("hook_pattern")


# ----------------------------------------------------------------------------------------------------
# Fast path == hooked reference path (outputs and gradients)
# ----------------------------------------------------------------------------------------------------


def make_bias(kind: str, n_models: int, layers: int, seed: int = 1) -> torch.Tensor | None:
    g = torch.Generator().manual_seed(seed)
    if kind == "none":
        return None
    if kind == "shared":  # [layers, heads, query, key], larger than T: the model slices it
        return torch.randn(layers, 3, CTX, CTX, generator=g).requires_grad_()
    return torch.randn(n_models, layers, 3, CTX, CTX, generator=g).requires_grad_()  # per member


def forward_and_grads(model: Transformer, tokens: torch.Tensor, bias: torch.Tensor | None,
                      manual: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    if bias is not None:
        bias.grad = None
    if manual:
        logits = model.run_with_hooks(tokens, attn_bias=bias, fwd_hooks=[(is_pattern, observe)])
    else:
        model.use_fused_attention(True)  # SDPA, also on a CPU
        logits = model(tokens, attn_bias=bias)
        model.use_fused_attention(None)
    weights = torch.linspace(-1.0, 1.0, logits.numel()).reshape(logits.shape)
    (logits * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    bias_grad = None if bias is None else bias.grad.clone()
    return logits.detach(), grads, bias_grad


@pytest.mark.parametrize("n_models", [1, 3])
@pytest.mark.parametrize("mlp_ratio", [0.0, 4.0])
@pytest.mark.parametrize("bias_kind", ["none", "shared", "per_member"])
def test_manual_attention_matches_sdpa_outputs_and_gradients(n_models, mlp_ratio, bias_kind):
    config = make_config(mlp_ratio)
    model = Transformer(config, n_models=n_models, seeds=E_SEEDS[:n_models])
    tokens = make_tokens(n_models, single=(n_models == 1 and bias_kind == "shared"))
    bias = make_bias(bias_kind, n_models, config.layers)

    fast, fast_grads, fast_bias_grad = forward_and_grads(model, tokens, bias, manual=False)
    slow, slow_grads, slow_bias_grad = forward_and_grads(model, tokens, bias, manual=True)

    assert fast.shape == slow.shape
    assert rel_err(fast, slow) < REL_TOL, rel_err(fast, slow)
    assert set(fast_grads) == {name for name, _ in model.named_parameters()}
    for name in fast_grads:
        assert fast_grads[name].abs().sum() > 0, f"no gradient reaches {name}"
        err = rel_err(fast_grads[name], slow_grads[name])
        assert err < REL_TOL, (name, err)
    if bias is not None:
        err = rel_err(fast_bias_grad, slow_bias_grad)
        assert err < REL_TOL, ("attn_bias", err)
        assert fast_bias_grad[..., T:, :].abs().sum() == 0  # rows beyond T are sliced off


def test_attention_path_is_chosen_explicitly_never_by_hooks(monkeypatch):
    """With fused attention on, model(...) takes SDPA in every layer; run_with_hooks / run_with_cache /
    observing() materialise every layer, whatever is hooked; hooking the pattern of fused attention is an
    error. On a CPU the default is the materialised path (no SDPA at all)."""
    model = Transformer(make_config(), n_models=1)
    model(make_tokens(1, single=True))  # default on a CPU: materialised
    model.use_fused_attention(True)
    tokens = make_tokens(1, single=True)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    model(tokens)
    assert len(calls) == 2
    calls.clear()
    for run in (lambda: model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_q", observe)]),
                lambda: model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_attn_scores", observe)]),
                lambda: model.run_with_cache(tokens, names_filter="hook_embed"),
                lambda: model.run_with_cache(tokens)):
        run()
        assert len(calls) == 0
    with model.observing():
        model(tokens)
    assert len(calls) == 0
    model(tokens)
    assert len(calls) == 2  # the scope restored the fast path
    with model.hooks([("blocks.0.attn.hook_pattern", observe)]):
        with pytest.raises(RuntimeError, match="hook_pattern is not formed by fused attention"):
            model(tokens)


# ----------------------------------------------------------------------------------------------------
# Hook points: every one fires, has its documented shape, and writing to it changes the output
# ----------------------------------------------------------------------------------------------------


def expected_shape(name: str, config: TransformerConfig, E: int, member_dim: bool = False) -> tuple[int, ...]:
    """The shape comments of transformer.py, restated, under the one hook layout (models/hooks.py):
    TransformerLens' shape for a single model, a leading member dimension for an ensemble."""
    d, m, H, D = config.width, config.mlp_width, config.heads, config.head_dim
    suffix = name.rsplit(".", 1)[-1]
    shapes = {
        "hook_embed": (B, T, d), "hook_pos_embed": (B, T, d), "hook_normalized": (B, T, d),
        "hook_q": (B, T, H, D), "hook_k": (B, T, H, D), "hook_v": (B, T, H, D), "hook_z": (B, T, H, D),
        "hook_attn_scores": (B, H, T, T), "hook_pattern": (B, H, T, T),
        "hook_pre": (B, T, m), "hook_post": (B, T, m),
        "hook_resid_pre": (B, T, d), "hook_attn_out": (B, T, d), "hook_resid_mid": (B, T, d),
        "hook_mlp_out": (B, T, d), "hook_resid_post": (B, T, d),
    }
    return shapes[suffix] if E == 1 and not member_dim else (E, *shapes[suffix])


def declared_names(config: TransformerConfig) -> set[str]:
    names = {"hook_embed", "hook_pos_embed", "ln_final.hook_normalized"}
    for layer in range(config.layers):
        p = f"blocks.{layer}"
        names |= {f"{p}.{h}" for h in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_resid_post")}
        names |= {f"{p}.ln1.hook_normalized"}
        names |= {f"{p}.attn.{h}" for h in ("hook_q", "hook_k", "hook_v", "hook_attn_scores",
                                             "hook_pattern", "hook_z")}
        if config.mlp_width:
            names |= {f"{p}.hook_mlp_out", f"{p}.ln2.hook_normalized", f"{p}.mlp.hook_pre",
                      f"{p}.mlp.hook_post"}
    return names


@pytest.mark.parametrize("n_models", [1, 3])
@pytest.mark.parametrize("mlp_ratio", [0.0, 4.0])
def test_every_hook_point_fires_with_documented_shape(n_models, mlp_ratio):
    config = make_config(mlp_ratio)
    model = Transformer(config, n_models=n_models, seeds=E_SEEDS[:n_models])
    assert set(model.hook_dict) == declared_names(config)
    for name, hp in model.hook_dict.items():
        assert hp.name == name and model.get_submodule(name) is hp
    tokens = make_tokens(n_models, single=(n_models == 1))
    logits, cache = model.run_with_cache(tokens)
    assert set(cache) == set(model.hook_dict)
    for name, tensor in cache.items():
        assert tuple(tensor.shape) == expected_shape(name, config, n_models), name
        assert not tensor.requires_grad
    for layer in range(config.layers):
        scores = cache[f"blocks.{layer}.attn.hook_attn_scores"]
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        above = torch.ones(T, T, dtype=torch.bool).triu(1)
        assert torch.isneginf(scores[..., above]).all() and torch.isfinite(scores[..., ~above]).all()
        assert (pattern[..., above] == 0).all()
        assert rel_err(pattern.sum(-1), torch.ones_like(pattern.sum(-1))) < REL_TOL
    # with member_dim=True every hook shows the member dimension, also for a single model
    _, full = model.run_with_cache(tokens, member_dim=True)
    for name, tensor in full.items():
        assert tuple(tensor.shape) == expected_shape(name, config, n_models, member_dim=True), name
        assert torch.equal(tensor if n_models > 1 else tensor[0], cache[name])
    # the cache holds the activations the output was computed from: ln_final and W_U give the logits
    final = full["ln_final.hook_normalized"]
    recomputed = torch.einsum("ebtd,edv->ebtv", final, model.W_U.detach()) + model.b_U.detach()[:, None, None]
    assert rel_err(logits.reshape(recomputed.shape), recomputed) < REL_TOL
    # names_filter selects
    _, only = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_pattern")
    assert set(only) == {"blocks.0.attn.hook_pattern"}
    _, some = model.run_with_cache(tokens, names_filter=["hook_embed", "blocks.1.hook_resid_post"])
    assert set(some) == {"hook_embed", "blocks.1.hook_resid_post"}


def perturb(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """A different, valid value for the activation at hook point ``name``."""
    g = torch.Generator().manual_seed(7)
    if name.endswith("hook_pattern"):  # uniform causal attention: rows sum to 1, zero above diagonal
        n = tensor.shape[-1]
        uniform = torch.ones(n, n).tril()
        return (uniform / uniform.sum(-1, keepdim=True)).expand_as(tensor).clone()
    noise = torch.randn(tensor.shape, generator=g)
    if name.endswith("hook_attn_scores"):  # noise only where the score is not masked
        return torch.where(torch.isfinite(tensor), tensor + 3 * noise, tensor)
    return tensor + noise


@pytest.mark.parametrize("n_models", [1, 3])
def test_writing_to_every_hook_point_changes_the_output(n_models):
    config = make_config(4.0)
    model = Transformer(config, n_models=n_models, seeds=E_SEEDS[:n_models])
    tokens = make_tokens(n_models)
    with torch.no_grad():
        base = model(tokens)
        for name in model.hook_dict:
            seen = []

            def write(tensor, hook, name=name):
                seen.append(hook.name)
                return perturb(name, tensor)

            out = model.run_with_hooks(tokens, fwd_hooks=[(name, write)])
            assert seen == [name]
            assert (out - base).abs().max() > 1e-4, f"writing to {name} did not change the output"
            # and the hook is gone again
            assert torch.equal(model(tokens), base), name


def test_pattern_write_reaches_output_exactly():
    """Patching a pattern with the pattern it already has changes nothing (the write is what is used)."""
    model = Transformer(make_config(0.0, layers=1), n_models=1)
    tokens = make_tokens(1, single=True)
    with torch.no_grad():
        base, cache = model.run_with_cache(tokens, names_filter=is_pattern)
        same = model.run_with_hooks(
            tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda t, h: cache[h.name].clone())])
    assert rel_err(same, base) < REL_TOL


# ----------------------------------------------------------------------------------------------------
# Hooks never outlive their scope
# ----------------------------------------------------------------------------------------------------


def no_hooks_left(model: Transformer) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("n_models", [1, 2])
def test_a_hook_returning_no_tensor_or_another_shape_is_named(n_models):
    """A hook that returns a tuple, or a tensor of another shape, failed layers later with an unrelated
    error (``'tuple' object has no attribute 'unsqueeze'``); now a TypeError / ValueError naming the hook point."""
    model = Transformer(make_config(), n_models=n_models)
    tokens = make_tokens(n_models, single=n_models == 1)
    name = "blocks.0.attn.hook_pattern"
    with pytest.raises(TypeError, match=f"hook function on {name} returned a tuple"):
        model.run_with_hooks(tokens, fwd_hooks=[(name, lambda t, hook: (t,))])
    with pytest.raises(ValueError, match=f"hook function on {name} returned shape"):
        model.run_with_hooks(tokens, fwd_hooks=[(name, lambda t, hook: t[..., :1, :])])
    assert no_hooks_left(model)
    same = model.run_with_hooks(tokens, fwd_hooks=[(name, lambda t, hook: t.clone())])  # a tensor: fine
    assert torch.allclose(same, model(tokens), atol=1e-5)  # the reference path against the fast one


def test_hooks_removed_after_success_and_after_errors():
    model = Transformer(make_config(), n_models=1)
    tokens = make_tokens(1, single=True)
    model.run_with_hooks(tokens, fwd_hooks=[(lambda n: True, observe)])
    assert no_hooks_left(model)
    model.run_with_cache(tokens)
    assert no_hooks_left(model)

    def boom(tensor, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", observe), ("blocks.1.hook_resid_mid", boom)])
    assert no_hooks_left(model)

    too_long = torch.zeros(1, CTX + 1, dtype=torch.int64)
    with pytest.raises(ValueError):
        model.run_with_cache(too_long)
    assert no_hooks_left(model)
    with pytest.raises(ValueError):
        model.run_with_hooks(too_long, fwd_hooks=[(lambda n: True, observe)])
    assert no_hooks_left(model)

    # an unknown name fails while registering, after a valid one was already added
    with pytest.raises(KeyError):
        model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", observe), ("blocks.9.hook_nope", observe)])
    assert no_hooks_left(model)
    with pytest.raises(KeyError):
        model.run_with_cache(tokens, names_filter="blocks.9.hook_nope")
    assert no_hooks_left(model)
    # a misspelt name in a list of names is an error too, not an empty cache or a hook that never fires
    with pytest.raises(KeyError, match=r"no hook point named \['blocks\.0\.attn\.hook_patern'\]"):
        model.run_with_cache(tokens, names_filter=["hook_embed", "blocks.0.attn.hook_patern"])
    with pytest.raises(KeyError, match="hook_patern"):
        model.run_with_hooks(tokens, fwd_hooks=[(["blocks.0.attn.hook_patern"], observe)])
    assert no_hooks_left(model)

    # an exception raised inside the with-block of hooks() itself
    with pytest.raises(RuntimeError, match="inside"):
        with model.hooks([("hook_embed", observe)]):
            assert not no_hooks_left(model)
            raise RuntimeError("inside")
    assert no_hooks_left(model)
    # the fast path is back once the scopes are left
    assert not any(block.attn.materialize for block in model.blocks)


# ----------------------------------------------------------------------------------------------------
# Ensembles: member e of seeds [a, b, c] is the single model with seed b
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("mlp_ratio", [0.0, 4.0])
@pytest.mark.parametrize("positions", [slice(5, T), torch.tensor([0, 4, 5, 12])], ids=["slice", "index"])
def test_positions_give_the_full_forwards_logits_and_gradients_there(layers, mlp_ratio, positions):
    """``forward(..., positions=)`` (the fast path: the last block's MLP, final norm and unembedding on
    those rows only) against the reference: every position computed, then the selected ones taken."""
    model = Transformer(make_config(mlp_ratio, layers), n_models=3, seeds=E_SEEDS)
    tokens = make_tokens(3)
    w = torch.randn(3, B, len(range(T)[positions]) if isinstance(positions, slice) else len(positions), V,
                    generator=torch.Generator().manual_seed(5))
    full = model(tokens)[:, :, positions]
    (full * w).sum().backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    part = model(tokens, positions=positions)
    (part * w).sum().backward()
    assert part.shape == full.shape and rel_err(part, full) < REL_TOL
    for n, p in model.named_parameters():
        assert rel_err(p.grad, reference[n]) < REL_TOL, n
    single = Transformer(make_config(mlp_ratio, layers), n_models=1, seeds=E_SEEDS[:1])
    assert single(tokens[0], positions=positions).shape == full[0].shape


def test_positions_as_lists_negative_entries_and_bad_values():
    model = Transformer(make_config(4.0, layers=2), n_models=1)
    tokens = make_tokens(1, single=True)
    full = model(tokens)
    for positions, rows in (([1, 12], [1, 12]), ((0,), [0]), (torch.tensor([-1, 2]), [T - 1, 2]),
                            (torch.tensor([3, 4], dtype=torch.int32), [3, 4])):
        assert rel_err(model(tokens, positions=positions), full[:, rows]) < REL_TOL, positions
    for positions, error, words in ((torch.tensor([T]), ValueError, f"lie in [-{T}, {T})"),
                                    ([1.5], TypeError, "a slice or integers"),
                                    (torch.tensor([[1]]), TypeError, "1-D integer tensor"),
                                    (torch.tensor([True]), TypeError, "dtype torch.bool"), ("x", TypeError, "str")):
        with pytest.raises(error, match=re.escape(words)):
            model(tokens, positions=positions)


def test_the_hooks_after_the_last_mixer_see_the_selected_positions_only():
    model = Transformer(make_config(4.0, layers=2), n_models=1)
    _, cache = model.run_with_cache(make_tokens(1, single=True), positions=slice(9, T))
    assert cache["blocks.1.hook_resid_mid"].shape == (B, T, 10)  # the last mixer reads every position
    for name in ("blocks.1.mlp.hook_pre", "blocks.1.hook_resid_post", "ln_final.hook_normalized"):
        assert cache[name].shape[:2] == (B, T - 9), name
    assert cache["blocks.0.hook_resid_post"].shape == (B, T, 10)


@pytest.mark.parametrize("mlp_ratio", [0.0, 4.0])
def test_ensemble_member_equals_single_model(mlp_ratio):
    config = make_config(mlp_ratio, init_std=0.02)
    ensemble = Transformer(config, n_models=3, seeds=E_SEEDS)
    tokens = make_tokens(3)
    with torch.no_grad():
        logits = ensemble(tokens)
        for e, seed in enumerate(E_SEEDS):
            single = Transformer(config, n_models=1, seeds=[seed])
            for name, value in single.state_dict().items():
                assert torch.equal(ensemble.state_dict()[name][e], value[0]), (e, name)
            alone = single(tokens[e])
            assert rel_err(logits[e], alone) < REL_TOL
            assert (logits[e] - alone).abs().max() < 1e-5
            # member(e) is a bit-equal copy with the same logits, and a copy, not a view
            member = ensemble.member(e)
            assert member.n_models == 1
            for name, value in member.state_dict().items():
                assert torch.equal(value, single.state_dict()[name]), (e, name)
            assert torch.equal(member(tokens[e]), alone)
            member.W_E.add_(1.0)
            assert torch.equal(ensemble.W_E[e], single.W_E[0])
        # different seeds give different members
        assert not torch.equal(ensemble.W_E[0], ensemble.W_E[1])


def test_member_state_dicts_round_trip():
    config = make_config(4.0)
    ensemble = Transformer(config, n_models=3, seeds=E_SEEDS)
    states = [ensemble.member_state_dict(e) for e in range(3)]
    assert states[1]["W_E"].shape == (V, config.width)
    rebuilt = Transformer.from_member_state_dicts(config, states)
    assert rebuilt.n_models == 3
    for name, value in ensemble.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], value), name
    tokens = make_tokens(3)
    with torch.no_grad():
        assert torch.equal(rebuilt(tokens), ensemble(tokens))
    # a reordered subset builds a smaller ensemble in that order
    pair = Transformer.from_member_state_dicts(config, [states[2], states[0]])
    assert torch.equal(pair.blocks[0].attn.W_QKV, ensemble.blocks[0].attn.W_QKV[[2, 0]])
    # member_state_dict is a copy
    states[0]["W_E"].add_(1.0)
    assert not torch.equal(states[0]["W_E"], ensemble.W_E[0])


def test_init_weights_rejects_wrong_seed_count():
    with pytest.raises(ValueError):
        Transformer(make_config(), n_models=3, seeds=[1, 2])


def test_forward_shape_errors():
    model = Transformer(make_config(), n_models=3, seeds=E_SEEDS)
    with pytest.raises(ValueError):
        model(make_tokens(1, single=True))  # [B, T] needs n_models == 1
    with pytest.raises(ValueError):
        model(make_tokens(2))  # 2 members given, 3 in the model
    single = Transformer(make_config(), n_models=1)
    tokens = make_tokens(1, single=True)
    with torch.no_grad():
        assert torch.equal(single(tokens), single(tokens[None])[0])


# ----------------------------------------------------------------------------------------------------
# Attention bias
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_member", [False, True])
def test_huge_bias_makes_pattern_one_hot(per_member):
    config = make_config(4.0)
    E = 3 if per_member else 1
    model = Transformer(config, n_models=E, seeds=E_SEEDS[:E])
    g = torch.Generator().manual_seed(3)
    # target[q] is a random visible key for each query (a different choice per layer, head and member)
    shape = (E, config.layers, config.heads, CTX) if per_member else (config.layers, config.heads, CTX)
    target = (torch.rand(shape, generator=g) * (torch.arange(CTX) + 1)).long()
    bias = torch.zeros(*shape, CTX).scatter_(-1, target[..., None], 1e4)
    tokens = make_tokens(E, single=not per_member)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, attn_bias=bias, names_filter=is_pattern)
        fast = model(tokens, attn_bias=bias)
    assert rel_err(fast, logits) < REL_TOL
    members = target if per_member else target[None]
    for layer in range(config.layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"].reshape(E, B, config.heads, T, T)
        want = torch.nn.functional.one_hot(members[:, layer, :, :T], T).float()  # [E, H, T, T]
        assert (pattern - want[:, None]).abs().max() < 1e-6, layer


def test_zero_bias_is_no_bias():
    model = Transformer(make_config(), n_models=1)
    tokens = make_tokens(1, single=True)
    with torch.no_grad():
        assert rel_err(model(tokens, attn_bias=torch.zeros(2, 3, CTX, CTX)), model(tokens)) < REL_TOL


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------

BAD_MODEL_CONFIGS = [
    (dict(layers=0), "model.layers"),
    (dict(layers=1.5), "model.layers"),
    (dict(heads=0), "model.heads"),
    (dict(head_dim=0), "model.head_dim"),
    (dict(d_model=0), "model.d_model"),
    (dict(mlp_ratio=-1.0), "model.mlp_ratio"),
    (dict(mlp_ratio="4"), "model.mlp_ratio"),
    (dict(vocab_size=0), "model.vocab_size"),
    (dict(context_length=0), "model.context_length"),
    (dict(init_std=0.0), "model.init_std"),
    (dict(init_std=-0.1), "model.init_std"),
]


@pytest.mark.parametrize("kwargs,field", BAD_MODEL_CONFIGS)
def test_bad_model_config_raises_one_line_error_naming_field(kwargs, field):
    with pytest.raises(ConfigError) as info:
        TransformerConfig(**kwargs)
    message = str(info.value)
    assert field in message and "\n" not in message


def test_unresolved_config_is_rejected_by_the_model():
    with pytest.raises(ConfigError, match="model.vocab_size"):
        Transformer(TransformerConfig())


def test_resolved_config_and_parameter_count():
    for mlp_ratio in (0.0, 4.0, 1.5):
        config = TransformerConfig(layers=2, heads=3, head_dim=7, mlp_ratio=mlp_ratio)
        assert config.width == 21
        resolved = config.resolved(vocab_size=V, context_length=CTX)
        assert (resolved.vocab_size, resolved.context_length, resolved.d_model) == (V, CTX, 21)
        model = Transformer(resolved, n_models=3, seeds=E_SEEDS)
        counted = sum(p.numel() for p in model.parameters()) // 3
        assert resolved.n_params() == counted, mlp_ratio
    odd = make_config(0.0)
    assert odd.n_params() == sum(p.numel() for p in Transformer(odd).parameters())


def test_float64_member_round_trip_keeps_dtype_and_matches_sdpa_tightly():
    """A float64 ensemble: member() and from_member_state_dicts keep float64 (no silent downcast),
    and the two attention paths agree to float64 precision."""
    model = Transformer(make_config(4.0), n_models=3, seeds=E_SEEDS).double()
    member = model.member(2)
    rebuilt = Transformer.from_member_state_dicts(model.config, [model.member_state_dict(e) for e in range(3)])
    for copy in (member, rebuilt):
        assert all(p.dtype == torch.float64 for p in copy.parameters())
    for name, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], value)
        assert torch.equal(member.state_dict()[name][0], value[2])
    tokens = make_tokens(3)
    bias = torch.randn(2, 3, CTX, CTX, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast = model(tokens, attn_bias=bias)
        slow = model.run_with_hooks(tokens, attn_bias=bias, fwd_hooks=[(is_pattern, observe)])
    assert rel_err(fast, slow) < 1e-12


# ----------------------------------------------------------------------------------------------------
# model.positions = none (NoPE)
# ----------------------------------------------------------------------------------------------------


def test_no_positions_has_no_position_embedding_and_counts_its_parameters():
    learned = TransformerConfig(layers=2, heads=2, head_dim=4).resolved(5, 11)
    nope = TransformerConfig(layers=2, heads=2, head_dim=4, positions="none").resolved(5, 11)
    for config in (learned, nope):
        model = config.build(n_models=1, seeds=[0])
        assert sum(p.numel() for p in model.parameters()) == config.n_params()
    assert not hasattr(nope.build(n_models=1, seeds=[0]), "W_pos")
    assert learned.n_params() - nope.n_params() == 11 * learned.width


def test_no_positions_sees_order_only_through_causality():
    """Without positions, a one-layer causal model's output at t depends on the multiset of tokens before t
    and on token t only: permuting the earlier tokens leaves it unchanged (the learned model's changes).
    (With more layers the earlier positions' own prefixes differ, so it would not hold.)"""
    tokens = torch.tensor([[1, 2, 3, 4, 0]])
    permuted = torch.tensor([[3, 1, 2, 4, 0]])
    for positions, same in (("none", True), ("learned", False)):
        config = TransformerConfig(layers=1, heads=2, head_dim=4, positions=positions).resolved(5, 5)
        model = config.build(n_models=1, seeds=[0]).double()
        with torch.no_grad():
            a, b = model(tokens)[0, 3], model(permuted)[0, 3]
        assert torch.allclose(a, b, atol=1e-12) == same, positions


def test_default_positions_keep_the_run_hash():
    from emergelab.train import ExperimentConfig

    base = {"task": {"name": "linear-map", "state_size": 4, "sparsity": 2}}
    plain = ExperimentConfig.from_dict(base).resolved()
    explicit = ExperimentConfig.from_dict({**base, "model": {"positions": "learned"}}).resolved()
    nope = ExperimentConfig.from_dict({**base, "model": {"positions": "none"}}).resolved()
    assert plain.science_key() == explicit.science_key() != nope.science_key()
    with pytest.raises(ConfigError, match="model.positions='rotary'"):
        ExperimentConfig.from_dict({**base, "model": {"positions": "rotary"}})


@pytest.mark.parametrize("outputs", [2, 3, 15])
@pytest.mark.parametrize("with_bias", [True, False])
def test_narrow_member_linear_matches_the_plain_products(outputs, with_bias):
    """``NarrowMemberLinear`` (the transposed products, few outputs on a CPU) against ``baddbmm``: outputs
    and all three gradients to float rounding, and a member's bits alone equal to its bits in an ensemble."""
    from emergelab.models.layers import NarrowMemberLinear

    gen = torch.Generator().manual_seed(outputs)
    x = torch.randn(3, 37, 20, generator=gen, requires_grad=True)
    w = torch.randn(3, 20, outputs, generator=gen, requires_grad=True)
    b = torch.randn(3, outputs, generator=gen, requires_grad=True) if with_bias else None
    g = torch.randn(3, 37, outputs, generator=gen)
    leaves = [x, w] + ([b] if with_bias else [])

    def run(fast: bool):
        y = NarrowMemberLinear.apply(x, w, b) if fast else (
            torch.baddbmm(b.unsqueeze(1), x, w) if with_bias else torch.bmm(x, w))
        return (y.detach(), *torch.autograd.grad(y, leaves, g))

    for name, fast, ref in zip(("y", "dx", "dw", "db"), run(True), run(False)):
        assert fast.shape == ref.shape and torch.allclose(fast, ref, rtol=1e-5, atol=1e-5), name
    alone = NarrowMemberLinear.apply(x[1:2].detach(), w[1:2].detach(), None if b is None else b[1:2].detach())
    assert torch.equal(alone[0], NarrowMemberLinear.apply(x.detach(), w.detach(), None if b is None else b.detach())[1])


@pytest.mark.parametrize("rows,inputs,outputs", [(960, 64, 192), (960, 256, 64), (37, 32, 48), (300, 96, 96)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_onednn_member_linear_matches_the_plain_products_and_keeps_a_members_bits(rows, inputs, outputs, with_bias):
    """``OneDnnMemberLinear`` (oneDNN's products, one per member) against ``baddbmm`` and a float64 product:
    the output and all three gradients to float rounding (both directions of the weight gradient's
    transpose: a map that widens and one that narrows); and a member's bits alone equal to its bits in an
    ensemble of 3, at one thread and at two."""
    from emergelab.models import onednn
    from emergelab.models.layers import OneDnnMemberLinear

    if not onednn.usable():
        pytest.skip("oneDNN is not usable in this torch build")
    gen = torch.Generator().manual_seed(rows + inputs * outputs)
    x = torch.randn(3, rows, inputs, generator=gen)
    w = torch.randn(3, inputs, outputs, generator=gen) / inputs ** 0.5
    b = torch.randn(3, outputs, generator=gen) if with_bias else None
    g = torch.randn(3, rows, outputs, generator=gen)

    def run(fn, members, dtype=torch.float32):
        leaves = [t[members].to(dtype).clone().requires_grad_() for t in (x, w) + ((b,) if with_bias else ())]
        y = fn(leaves[0], leaves[1], leaves[2] if with_bias else None)
        return (y.detach(), *torch.autograd.grad(y, leaves, g[members].to(dtype)))

    def plain(xx, ww, bb):
        return torch.baddbmm(bb.unsqueeze(1), xx, ww) if bb is not None else torch.bmm(xx, ww)

    fast, ref, exact = run(OneDnnMemberLinear.apply, slice(None)), run(plain, slice(None)), \
        run(plain, slice(None), torch.float64)
    for name, f, r, e in zip(("y", "dx", "dw", "db"), fast, ref, exact):
        scale = e.abs().max().item()
        assert f.shape == r.shape == e.shape, name
        # the same error as MKL's against float64, to within a factor of 4 (sums of up to 960 products)
        assert (f.double() - e).abs().max() <= 4 * max((r.double() - e).abs().max().item(), 1e-7 * scale), name
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            alone, together = run(OneDnnMemberLinear.apply, slice(1, 2)), run(OneDnnMemberLinear.apply, slice(None))
        finally:
            torch.set_num_threads(1)
        for name, a, t in zip(("y", "dx", "dw", "db"), alone, together):
            assert torch.equal(a[0], t[1]), (name, threads)


@pytest.mark.parametrize("rows,inputs,outputs", [(960, 16, 96), (3968, 24, 17), (37, 48, 5), (256, 64, 64)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_few_members_linear_is_baddbmm_at_one_thread_and_keeps_a_lone_members_bits(rows, inputs, outputs, with_bias):
    """``FewMembersLinear`` (fewer members than threads) is ``baddbmm``'s autograd bit for bit at one thread;
    through ``member_linear`` a lone member at two threads has the bits it has at one thread and in an
    ensemble of 3 (MKL split the weight gradient's rows across threads on an Intel Xeon)."""
    from emergelab.models.layers import FewMembersLinear, member_linear

    gen = torch.Generator().manual_seed(rows * inputs + outputs)
    x, w = torch.randn(3, rows, inputs, generator=gen), torch.randn(3, inputs, outputs, generator=gen)
    b = torch.randn(3, outputs, generator=gen) if with_bias else None
    g = torch.randn(3, rows, outputs, generator=gen)

    def run(fn, members, threads=1):
        leaves = [t[members].clone().requires_grad_() for t in (x, w) + ((b,) if with_bias else ())]
        torch.set_num_threads(threads)
        try:
            y = fn(leaves[0], leaves[1], leaves[2] if with_bias else None)
            return (y.detach(), *torch.autograd.grad(y, leaves, g[members]))
        finally:
            torch.set_num_threads(1)

    def plain(xx, ww, bb):
        return torch.baddbmm(bb.unsqueeze(1), xx, ww) if bb is not None else torch.bmm(xx, ww)

    for members in (slice(1, 2), slice(None)):
        for name, f, r in zip(("y", "dx", "dw", "db"), run(FewMembersLinear.apply, members), run(plain, members)):
            assert torch.equal(f, r), name
    reference = run(member_linear, slice(None))
    for name, alone, together in zip(("y", "dx", "dw", "db"), run(member_linear, slice(1, 2), threads=2), reference):
        assert torch.equal(alone[0], together[1]), name


def test_member_linear_takes_few_members_linear_only_with_fewer_members_than_threads_and_gradients():
    from emergelab.models.layers import member_linear

    def kernel(*args) -> str:  # the autograd node under member_linear's final reshape
        return type(member_linear(*args, None).grad_fn.next_functions[0][0]).__name__

    x, w = torch.randn(1, 960, 16, requires_grad=True), torch.randn(1, 16, 96, requires_grad=True)
    torch.set_num_threads(2)
    try:
        assert kernel(x, w) == "FewMembersLinearBackward"
        assert kernel(x.expand(2, -1, -1), w.expand(2, -1, -1)) == "BmmBackward0"
        with torch.no_grad():
            assert member_linear(x, w, None).grad_fn is None
    finally:
        torch.set_num_threads(1)
    assert kernel(x, w) == "BmmBackward0"


@pytest.fixture
def onednn_on(monkeypatch):
    """oneDNN switched on (``EMERGELAB_ONEDNN=1``) whatever the processor's default; skips where the op is not
    usable. Afterwards the switch and the cached choice are as before."""
    from emergelab.models import onednn

    if not onednn.usable():
        pytest.skip("oneDNN is not usable in this torch build")
    monkeypatch.setenv("EMERGELAB_ONEDNN", "1")
    onednn.available.cache_clear()
    yield onednn
    monkeypatch.undo()
    onednn.available.cache_clear()


def test_member_linear_takes_onednn_by_size_and_not_when_switched_off(onednn_on, monkeypatch):
    """The demo's maps take oneDNN, a small map keeps ``baddbmm`` (its call cost outweighs the kernel), and
    ``EMERGELAB_ONEDNN=0`` keeps every map on ``baddbmm``, bit for bit."""
    from emergelab.models.layers import member_linear, onednn_applies

    assert onednn_on.available()
    assert onednn_applies(torch.zeros(2, 960, 64), torch.zeros(2, 64, 256))
    assert onednn_applies(torch.zeros(2, 960, 256), torch.zeros(2, 256, 64))
    assert not onednn_applies(torch.zeros(2, 960, 16), torch.zeros(2, 16, 16))
    assert not onednn_applies(torch.zeros(2, 256, 64), torch.zeros(2, 64, 64))
    assert not onednn_applies(torch.zeros(2, 960, 64, dtype=torch.float64), torch.zeros(2, 64, 256, dtype=torch.float64))
    x, w, b = torch.randn(2, 960, 64), torch.randn(2, 64, 256), torch.randn(2, 256)
    monkeypatch.setenv("EMERGELAB_ONEDNN", "0")
    onednn_on.available.cache_clear()
    assert not onednn_on.available() and not onednn_applies(torch.zeros(2, 960, 64), torch.zeros(2, 64, 256))
    assert torch.equal(member_linear(x, w, b), torch.baddbmm(b.unsqueeze(1), x, w))


@pytest.mark.parametrize("machine,vendor,capability,why", [
    ("x86_64", "AuthenticAMD", "AVX512", ""),
    ("AMD64", "AuthenticAMD", "AVX512", ""),
    ("x86_64", "GenuineIntel", "AVX512", "off by default on Intel CPUs, where MKL runs AVX-512 and measured faster"),
    ("x86_64", "AuthenticAMD", "AVX2", "off by default without AVX-512"),
    ("x86_64", "", "AVX512", "off by default on an x86-64 CPU of vendor unknown"),
    ("x86_64", "HygonGenuine", "AVX2", "off by default on an x86-64 CPU of vendor HygonGenuine"),
    ("arm64", "", "DEFAULT", "off by default on arm64"),
])
def test_onednn_is_on_by_default_only_where_it_was_measured_faster(monkeypatch, machine, vendor, capability, why):
    """On by default on an AMD x86-64 CPU with AVX-512 (MKL runs AVX2 there); off on Intel's (MKL runs AVX-512
    and was faster), without AVX-512 and on other processors (never measured), on anywhere with
    ``EMERGELAB_ONEDNN=1``: the choice is the processor's and the switch's, never a timing's."""
    import platform

    from emergelab.models import onednn

    if not onednn.usable():
        pytest.skip("oneDNN is not usable in this torch build")
    monkeypatch.setattr(platform, "machine", lambda: machine)
    monkeypatch.setattr(onednn, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.delenv("EMERGELAB_ONEDNN", raising=False)
    try:
        onednn.available.cache_clear()
        assert onednn.available() == (not why)
        if why:
            assert f"(oneDNN: {why}; EMERGELAB_ONEDNN=1 turns it on)" in onednn.describe()
        else:
            assert onednn.describe().startswith("matrix products: oneDNN")
        monkeypatch.setenv("EMERGELAB_ONEDNN", "1")
        onednn.available.cache_clear()
        assert onednn.available() and onednn.describe().startswith("matrix products: oneDNN")
        monkeypatch.setenv("EMERGELAB_ONEDNN", "0")
        onednn.available.cache_clear()
        assert not onednn.available() and onednn.describe().endswith("(oneDNN: EMERGELAB_ONEDNN=0)")
    finally:
        monkeypatch.undo()
        onednn.available.cache_clear()


def test_cpu_vendor_reads_this_machine():
    from pathlib import Path

    from emergelab.models import onednn

    info = Path("/proc/cpuinfo")
    if not info.exists() or "vendor_id" not in info.read_text():
        pytest.skip("no vendor_id in /proc/cpuinfo")
    assert onednn.cpu_vendor() and f"vendor_id\t: {onednn.cpu_vendor()}" in info.read_text()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA not available"))])
@pytest.mark.parametrize("shape", [(4, 240, 64, 256), (2, 5, 16, 16), (3, 7, 24, 5)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_is_nn_linear_with_member_linears_kernels(shape, with_bias, device):
    """``layers.Linear`` (Pythia's maps in ``lm/neox.py``): nn.Linear's parameters and state-dict names, its
    outputs and gradients to float rounding, through oneDNN for a large map and ``baddbmm`` / the narrow form
    for small ones (``baddbmm`` on a GPU); other dtypes take the plain products."""
    from torch import nn

    from emergelab.models.layers import Linear

    B, T, i, o = shape
    torch.manual_seed(o)
    ours, ref = Linear(i, o, bias=with_bias).to(device), nn.Linear(i, o, bias=with_bias).to(device)
    ref.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == list(ref.state_dict())
    x = torch.randn(B, T, i, device=device)
    g = torch.randn(B, T, o, device=device)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    ys = [m(xx) for m, xx in zip((ours, ref), xs)]
    assert ys[0].shape == ys[1].shape == (B, T, o)
    assert torch.allclose(ys[0], ys[1], rtol=1e-5, atol=1e-5)
    for y in ys:
        y.backward(g)
    assert torch.allclose(xs[0].grad, xs[1].grad, rtol=1e-5, atol=1e-5)
    assert torch.allclose(ours.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    if with_bias:
        assert torch.allclose(ours.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(ours.double()(x.double()), ref.double()(x.double()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("inputs,outputs", [(1, 16), (1, 33), (20, 1), (1, 1)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_one_feature_member_linear_matches_the_plain_products_and_keeps_a_members_bits(inputs, outputs, with_bias):
    """``OneFeatureMemberLinear`` (one input or one output, on a CPU: Mamba's rank-1 step-size projection)
    against ``baddbmm`` to float rounding; and through ``member_linear`` a member's output and all three
    gradients alone equal, bit for bit, to the same member in an ensemble of 3 (``baddbmm`` gave the input
    gradient from one feature, and the output to one, other bits: a mamba run at d_model 16 trained other
    numbers under workers than in an ensemble)."""
    from emergelab.models.layers import OneFeatureMemberLinear, member_linear

    gen = torch.Generator().manual_seed(inputs * 100 + outputs)
    x = torch.randn(3, 64, 15, inputs, generator=gen)
    w = torch.randn(3, inputs, outputs, generator=gen)
    b = torch.randn(3, outputs, generator=gen) if with_bias else None
    g = torch.randn(3, 64, 15, outputs, generator=gen)

    def run(fn, members):
        leaves = [t[members].clone().requires_grad_() for t in (x, w) + ((b,) if with_bias else ())]
        y = fn(leaves[0], leaves[1], leaves[2] if with_bias else None)
        return (y.detach(), *torch.autograd.grad(y, leaves, g[members]))

    def plain(xx, ww, bb):
        flat = xx.reshape(xx.shape[0], -1, xx.shape[-1])
        y = torch.baddbmm(bb.unsqueeze(1), flat, ww) if bb is not None else torch.bmm(flat, ww)
        return y.reshape(*xx.shape[:-1], ww.shape[-1])

    def one(xx, ww, bb):
        return OneFeatureMemberLinear.apply(xx.reshape(xx.shape[0], -1, xx.shape[-1]), ww, bb).reshape(
            *xx.shape[:-1], ww.shape[-1])

    for name, fast, ref in zip(("y", "dx", "dw", "db"), run(one, slice(None)), run(plain, slice(None))):
        # dw and db sum 960 products of order 1: another summation order moves them by ~1e-5 of ~30
        assert fast.shape == ref.shape and torch.allclose(fast, ref, rtol=1e-4, atol=1e-3), name
    for name, alone, together in zip(("y", "dx", "dw", "db"), run(member_linear, slice(1, 2)),
                                     run(member_linear, slice(None))):
        assert torch.equal(alone[0], together[1]), name


@pytest.mark.parametrize("vocab", [5, 6, 7, 9, 11, 13])
def test_unembedding_bits_of_a_member_do_not_depend_on_the_ensemble(vocab):
    """MKL's ``baddbmm`` gave a lone member other bits than the same member in an ensemble of 3 for maps
    to 1, 5-7, 9-11 and 13-15 outputs (measured, torch 2.13 CPU); the narrow form (2-15 outputs) does not."""
    cfg = TransformerConfig(layers=1, heads=2, head_dim=4, vocab_size=vocab, context_length=9)
    tokens = torch.randint(0, vocab, (3, 6, 9), generator=torch.Generator().manual_seed(vocab))
    ensemble, alone = cfg.build(n_models=3, seeds=[0, 1, 2]), cfg.build(n_models=1, seeds=[1])
    logits, single = ensemble(tokens), alone(tokens[1:2])
    assert torch.equal(logits[1], single[0])
    logits.square().sum().backward()
    single.square().sum().backward()
    assert torch.equal(ensemble.W_U.grad[1], alone.W_U.grad[0])


def test_torch_threads_sets_and_restores_only_when_the_count_changes(monkeypatch):
    """``models.threads.torch_threads`` runs inside the training step's products: a scope that changes
    nothing (0, or the current count) sets nothing; one that does restores the count, also on an error."""
    from emergelab.models.threads import torch_threads

    before = torch.get_num_threads()
    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n) or real(n))
    for n in (0, before):
        with torch_threads(n):
            assert torch.get_num_threads() == before
    assert calls == []
    with pytest.raises(KeyError):
        with torch_threads(before + 1):
            assert torch.get_num_threads() == before + 1
            raise KeyError
    assert torch.get_num_threads() == before and calls == [before + 1, before]
