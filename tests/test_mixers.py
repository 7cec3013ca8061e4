"""Alternative sequence mixers behind the model contract: every mixer model meets the same checks
(parameter count, ensemble == single model, causality, fast path == observed path, hooks fire and patch,
config errors), and every fast kernel equals its step-by-step reference in float64, outputs and
gradients, at odd shapes. Comparisons with the field's reference implementations are in
``tests/test_mixer_references.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import pytest
import torch

from emergelab.config import ConfigError
from emergelab.models import MODELS
from emergelab.models.mixers import MIXER_CONFIGS
from emergelab.models.mixers.common import causal_conv1d, diag_scan, diag_scan_naive
from emergelab.models.mixers.gated_deltanet import (gated_delta_rule_chunk, gated_delta_rule_matrix,
                                                    gated_delta_rule_naive, l2norm)
from emergelab.models.mixers.mamba import (selective_kernel, selective_scan, selective_scan_chunked,
                                           selective_scan_naive)
from emergelab.models.mixers.mlp_mixer import token_mix, token_mix_naive

REL_TOL = 1e-5  # float32 vs float32 of the same quantity
REL_TOL_64 = 1e-10  # float64 fast form vs float64 reference
T, B, CTX, V = 13, 3, 16, 5

# Small configs at odd sizes; init_std large so mixing is far from trivial and errors show.
SMALL = {
    "mlp_mixer": dict(d_model=9, heads=3),
    "lru": dict(d_model=9, state_size=7),
    "mamba": dict(d_model=9, state_size=5, expand=2, conv_size=3, dt_rank=3),
    "gated_deltanet": dict(d_model=9, heads=3, head_dim=5, expand_v=1, conv_size=3),
    "mlstm": dict(d_model=9, heads=3, head_dim=5),
    "rwkv7": dict(d_model=9, heads=3, low_rank=4),
}
NAMES = [c.name for c in MIXER_CONFIGS]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    denom = b.norm().item()
    return (a - b).norm().item() / denom if denom > 0 else (a - b).norm().item()


def make_config(name: str, layers: int = 2, mlp_ratio: float = 2.0, init_std: float = 0.3):
    return MODELS[name](layers=layers, mlp_ratio=mlp_ratio, init_std=init_std, **SMALL[name]).resolved(V, CTX)


def tokens(n_models: int | None, seed: int = 0, length: int = T) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (B, length) if n_models is None else (n_models, B, length)
    return torch.randint(0, V, shape, generator=g)


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


# ----------------------------------------------------------------------------------------- contract
@pytest.mark.parametrize("name", NAMES)
def test_positions_give_the_full_forwards_logits_and_gradients_there(name):
    """``positions=`` (the training step's loss positions): the mixer still reads every position; the
    logits and the gradients of a loss on the selected positions are the full forward's, to rounding."""
    model = make_config(name).build(n_models=2, seeds=[5, 6])
    x, rows = tokens(2), slice(4, T)
    w = torch.randn(2, B, T - 4, V, generator=torch.Generator().manual_seed(9))
    full = model(x)[:, :, rows]
    (full * w).sum().backward()
    reference = grads(model)
    model.zero_grad()
    part = model(x, positions=rows)
    (part * w).sum().backward()
    assert part.shape == full.shape and rel_err(part, full) < REL_TOL
    for n, g in grads(model).items():
        assert rel_err(g, reference[n]) < REL_TOL, n


def test_every_mixer_is_registered():
    for name in ("mlp_mixer", "lru", "mamba", "gated_deltanet"):
        assert name in MODELS
    assert set(NAMES) <= set(MODELS)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mlp_ratio", [2.0, 0.0])
def test_parameter_count_is_exact(name, mlp_ratio):
    config = make_config(name, mlp_ratio=mlp_ratio)
    model = config.build(n_models=2, seeds=[0, 1])
    assert sum(p[0].numel() for p in model.parameters()) == config.n_params()
    assert all(p.shape[0] == 2 for p in model.parameters())  # every parameter has the member dim
    assert config.flops_per_token() > 0


@pytest.mark.parametrize("name", NAMES)
def test_ensemble_member_equals_single_model(name):
    config = make_config(name, init_std=0.02)  # the default init; batched float32 rounding stays < 1e-6
    seeds = [11, 22, 33]
    ensemble = config.build(n_models=3, seeds=seeds)
    x = tokens(3)
    out = ensemble(x)
    for e, seed in enumerate(seeds):
        single = config.build(n_models=1, seeds=[seed])
        for (n, p), (_, q) in zip(ensemble.named_parameters(), single.named_parameters()):
            assert torch.equal(p[e], q[0]), n
        assert (out[e] - single(x[e])).abs().max().item() < 1e-6
        assert (ensemble.member(e)(x[e]) - out[e]).abs().max().item() < 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_a_seed_trains_the_same_bits_alone_and_in_an_ensemble(name):
    """Seed 0 trained 4 steps alone and beside seed 1 (SeedGroup, one thread): every parameter bit-identical.
    At d_model 16 this caught two mixers: gated DeltaNet's short convolution handed back a permuted view, on
    which the SiLU backward's bits depended on the ensemble, and Mamba's rank-1 step-size projection took a
    one-column product (``layers.OneFeatureMemberLinear``)."""
    from emergelab.train import ExperimentConfig
    from emergelab.train.group import SeedGroup

    model = {"name": name, "d_model": 16, **({"heads": 2, "head_dim": 8} if name == "gated_deltanet" else {})}
    model = {k: v for k, v in model.items() if k in {f.name for f in dataclasses.fields(MODELS[name])}}
    config = ExperimentConfig.from_dict({"task": {"name": "linear-map"}, "model": model,
                                         "train": {"steps": 100, "seeds": 2, "batch_size": 32}}).resolved()
    pair, alone = SeedGroup(config, [0, 1]), SeedGroup(config, [0])
    for _ in range(4):
        for group in (pair, alone):
            group._train_step()
            group.step += 1
    for (n, p), (_, q) in zip(pair.model.named_parameters(), alone.model.named_parameters()):
        assert torch.equal(p[0], q[0]), n


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("observed", [False, True])
def test_changing_a_token_never_changes_earlier_outputs(name, observed):
    model = make_config(name).build(n_models=2, seeds=[3, 4]).double()
    x = tokens(2, length=CTX)
    with torch.no_grad():
        for t in (0, 5, CTX - 1):
            x2 = x.clone()
            x2[..., t] = (x2[..., t] + 1) % V
            if observed:
                with model.observing():
                    a, b = model(x), model(x2)
            else:
                a, b = model(x), model(x2)
            assert torch.equal(a[..., :t, :], b[..., :t, :]), t
            assert not torch.equal(a[..., t, :], b[..., t, :])  # the token itself is seen


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_path_equals_observed_path_outputs_and_gradients(name, dtype):
    model = make_config(name).build(n_models=2, seeds=[5, 6]).to(dtype)
    x = tokens(2)
    w = torch.randn(2, B, T, V, generator=torch.Generator().manual_seed(9), dtype=dtype)
    (model(x) * w).sum().backward()
    fast_out, fast_grads = model(x).detach(), grads(model)
    model.zero_grad()
    with model.observing():
        out = model(x)
        (out * w).sum().backward()
    tol = REL_TOL if dtype == torch.float32 else REL_TOL_64
    assert rel_err(out, fast_out) < tol
    # in float32 the mLSTM's input-gate biases b_i are left out: their gradient is a sum that cancels (h
    # does not change when every i~ moves together, but for the normaliser's floor), so each form's own
    # float32 rounding is 5e-5 .. 1e-3 of it (both forms alike, against float64); float64 checks it
    skip = {n for n in fast_grads if name == "mlstm" and n.endswith("mixer.b_i")} if dtype == torch.float32 else set()
    for n, g in grads(model).items():
        if n not in skip:
            assert rel_err(g, fast_grads[n]) < tol, n


@pytest.mark.parametrize("name", NAMES)
def test_every_hook_fires_and_writing_to_it_changes_the_output(name):
    model = make_config(name).build(n_models=2, seeds=[1, 2])
    x = tokens(2)
    base, cache = model.run_with_cache(x)
    assert set(cache) == set(model.hook_dict)  # every declared hook fires
    for hook_name, act in cache.items():
        assert act.shape[:2] == (2, B), hook_name  # [E, B, ...]
    for hook_name in model.hook_dict:
        if ".mixer." not in hook_name:
            continue
        patched = model.run_with_hooks(x, fwd_hooks=[(hook_name, lambda t, hook: t * 1.5 + 0.1)])
        assert not torch.allclose(patched, base), hook_name
    single, cache1 = make_config(name).build(1, [1]).run_with_cache(x[0])
    assert all(cache1[n].shape == cache[n].shape[1:] for n in cache)  # a single model drops E


@pytest.mark.parametrize("name", [n for n in NAMES if n != "lru"])
def test_pattern_is_refused_on_the_fast_path_and_is_lower_triangular(name):
    model = make_config(name).build(n_models=2, seeds=[1, 2])
    x = tokens(2)
    with pytest.raises(RuntimeError, match="fast path"), model.hooks([("blocks.0.mixer.hook_pattern", lambda t, h: None)]):
        model(x)
    _, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_pattern"))
    pattern = cache["blocks.1.mixer.hook_pattern"]  # [E, B, heads or channels, Tq, Tk]
    assert pattern.shape[0] == 2 and pattern.shape[1] == B and pattern.shape[-2:] == (T, T)
    assert torch.equal(pattern, pattern.tril())


@pytest.mark.parametrize("name", NAMES)
def test_a_few_steps_of_training_lower_the_loss(name):
    torch.manual_seed(0)
    model = make_config(name, init_std=0.02).build(n_models=2, seeds=[0, 1])
    x = tokens(2, length=CTX)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        logits = model(x[..., :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), x[..., 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


@pytest.mark.parametrize("name,field,value", [
    ("mlp_mixer", "heads", 4), ("mlp_mixer", "d_model", 0), ("lru", "r_min", 0.995), ("lru", "state_size", 0),
    ("mamba", "dt_rank", 0), ("mamba", "dt_min", -1.0), ("gated_deltanet", "conv_size", -1),
    ("gated_deltanet", "head_dim", 1.5), ("mlstm", "heads", 0), ("rwkv7", "low_rank", 0),
])
def test_bad_config_raises_one_line_error_naming_the_field(name, field, value):
    if name not in MODELS:
        pytest.skip(f"{name} not built")
    kwargs = dict(SMALL[name])
    kwargs[field] = value
    with pytest.raises(ConfigError, match=rf"^model\.{field}=") as info:
        MODELS[name](**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_attention_bias_on_a_mixer_fails_before_any_file_is_written(name, tmp_path):
    from emergelab.train import ExperimentConfig, train

    data = {"task": {"name": "linear-map", "state_size": 4, "sparsity": 1},
            "model": {"name": name, **SMALL[name]}, "train": {"steps": 4, "seeds": 1, "bias_beta": 3.0}}
    with pytest.raises(ConfigError, match=rf"^train\.bias_beta=3\.0: model\.name={name} has no attention scores"):
        train(ExperimentConfig.from_dict(data), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", NAMES)
def test_head_patching_a_mixer_is_pointed_to_its_mixing_matrix(name):
    """Asked for attention heads, a mixer says what it has instead: its mixing matrix (``what="mixer"``,
    which then patches and ablates), or, for the LRU, which has none, its other hook points."""
    from emergelab.interventions import ablation_table, cache_attention, patching_table

    model = make_config(name).build()
    batch = tokens(None, length=CTX + 1)
    hint = (r"its mixer's hook points are blocks\.\{l\}\.mixer\.hook_state_im, blocks\.\{l\}\.mixer\.hook_state_re, "
            r"for run_with_cache" if name == "lru" else
            r"its mixer's mixing matrix is blocks\.\{l\}\.mixer\.hook_pattern: patch it with what=\"mixer\"")
    for call in (lambda: cache_attention(model, batch), lambda: ablation_table(model, batch),
                 lambda: patching_table(model, model, batch)):
        with pytest.raises(ValueError, match=r"has no hook point blocks\.0\.attn\.hook_pattern to patch or "
                                             r"ablate; " + hint):
            call()
    if name != "lru":
        table = ablation_table(model, batch, what="mixer", kind="zero")
        assert table.prob_drop.shape[0] == 2 and table.what == "mixer"
        assert torch.isfinite(table.prob_drop).all()


def test_unresolved_config_is_rejected():
    with pytest.raises(ConfigError, match="vocab_size"):
        MODELS["lru"]().build()


# ----------------------------------------------------------------------------------------- kernels
def _check_same(fast_fn, ref_fn, inputs: list[torch.Tensor], tol: float = REL_TOL_64):
    """Outputs and every input gradient of fast_fn and ref_fn agree (float64)."""
    ins_a = [t.detach().clone().requires_grad_(t.is_floating_point() or t.is_complex()) for t in inputs]
    ins_b = [t.detach().clone().requires_grad_(t.is_floating_point() or t.is_complex()) for t in inputs]
    a, b = fast_fn(*ins_a), ref_fn(*ins_b)
    assert rel_err(torch.view_as_real(a) if a.is_complex() else a,
                   torch.view_as_real(b) if b.is_complex() else b) < tol
    w = torch.randn(a.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (a.real * w).sum().backward()
    (b.real * w).sum().backward()
    for i, (x, y) in enumerate(zip(ins_a, ins_b)):
        # an input that cannot affect the output (a_0 in a scan) may get no gradient at all: zero
        gx, gy = (t.grad if t.grad is not None else torch.zeros_like(t) for t in (x, y))
        gx, gy = (torch.view_as_real(g) if g.is_complex() else g for g in (gx, gy))
        assert rel_err(gx, gy) < tol, f"gradient of input {i}"


@pytest.mark.parametrize("length", [1, 13, 63])
@pytest.mark.parametrize("complex_", [False, True])
def test_diag_scan_equals_step_by_step_recurrence(length, complex_):
    g = torch.Generator().manual_seed(length)
    shape = (2, 3, length, 7)
    if complex_:
        a = torch.polar(torch.rand(shape, generator=g, dtype=torch.float64),
                        torch.rand(shape, generator=g, dtype=torch.float64) * 6)
        b = torch.complex(torch.randn(shape, generator=g, dtype=torch.float64),
                          torch.randn(shape, generator=g, dtype=torch.float64))
    else:
        a, b = torch.rand(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    _check_same(diag_scan, diag_scan_naive, [a, b])


def test_causal_conv1d_equals_torch_conv1d_per_member():
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 3, 13, 5, generator=g), torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, generator=g)
    y = causal_conv1d(x, w, b)
    for e in range(2):
        conv = torch.nn.Conv1d(5, 5, 4, groups=5, padding=3)
        conv.weight.data, conv.bias.data = w[e][:, None, :], b[e]
        ref = conv(x[e].transpose(1, 2))[..., :13].transpose(1, 2)
        assert rel_err(y[e], ref) < REL_TOL


@pytest.mark.parametrize("length", [1, 13])
def test_token_mix_equals_position_loop(length):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, length, 3, 5, generator=g, dtype=torch.float64)
    w, b = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64), torch.randn(2, 3, 16, generator=g, dtype=torch.float64)
    _check_same(token_mix, token_mix_naive, [x, w, b])


@pytest.mark.parametrize("length", [1, 13, 63])
def test_selective_scan_and_its_kernel_equal_the_recurrence(length):
    g = torch.Generator().manual_seed(length)
    E, b, I, N = 2, 3, 5, 7
    f64 = dict(generator=g, dtype=torch.float64)
    x, dt = torch.randn(E, b, length, I, **f64), torch.rand(E, b, length, I, **f64)
    A, Bm, C, D = -torch.rand(E, I, N, **f64) * 3, torch.randn(E, b, length, N, **f64), \
        torch.randn(E, b, length, N, **f64), torch.randn(E, I, **f64)
    _check_same(selective_scan, selective_scan_naive, [x, dt, A, Bm, C, D])

    def via_kernel(x, dt, A, Bm, C, D):
        return torch.einsum("ebits,ebsi->ebti", selective_kernel(dt, A, Bm, C), x) + D[:, None, None] * x

    _check_same(via_kernel, selective_scan_naive, [x, dt, A, Bm, C, D])
    with torch.no_grad():  # the kernel's in-place branch (no gradients to keep): the same values
        fast, ref = via_kernel(x, dt, A, Bm, C, D), selective_scan_naive(x, dt, A, Bm, C, D)
    assert rel_err(fast, ref) < REL_TOL_64


def _selective_inputs(length: int, dt_scale: float, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(length + seed)
    E, b, I, N = 2, 3, 5, 7
    kw = dict(generator=g, dtype=dtype)
    return [torch.randn(E, b, length, I, **kw), torch.rand(E, b, length, I, **kw) * dt_scale,
            -torch.rand(E, I, N, **kw) * 3, torch.randn(E, b, length, N, **kw), torch.randn(E, b, length, N, **kw),
            torch.randn(E, I, **kw)]


@pytest.mark.parametrize("length", [1, 13, 63, 64, 100])
@pytest.mark.parametrize("chunk", [4, 16, 64])
@pytest.mark.parametrize("dt_scale", [0.1, 30.0])
def test_selective_scan_chunked_equals_the_recurrence(length, chunk, dt_scale):
    """Small dt (Mamba's init, 0.001..0.1) and large dt (steps decaying by up to exp(-90): the chunk is
    shortened to 3 so that exp(-G) stays finite; still exact)."""
    inputs = _selective_inputs(length, dt_scale)
    _check_same(lambda *a: selective_scan_chunked(*a, chunk=chunk), selective_scan_naive, inputs)


@pytest.mark.parametrize("dt_scale", [0.1, 5.0, 30.0])
def test_selective_scan_chunked_float32_stays_finite_and_close_to_float64(dt_scale):
    """float32: at dt_scale 5 the chunk shrinks to 2, at 30 (one step's decay up to exp(-90), past
    float32's range) to 1, i.e. the recurrence itself."""
    inputs = _selective_inputs(100, dt_scale, seed=1)
    exact = selective_scan_naive(*inputs)
    y = selective_scan_chunked(*(t.float() for t in inputs), chunk=64)
    assert torch.isfinite(y).all() and rel_err(y, exact) < 1e-6


def test_stable_chunk_shortens_chunks_only_for_large_decays():
    from emergelab.models.mixers.common import stable_chunk

    assert stable_chunk(1.6, 8, 100, torch.float32) == 8  # Mamba's init: dt <= 0.1, |A| <= 16
    assert stable_chunk(0.61, 64, 100, torch.float32) == 64  # RWKV-7: log w >= -0.607
    assert stable_chunk(0.61, 64, 13, torch.float32) == 13  # never longer than the sequence
    assert stable_chunk(90.0, 16, 100, torch.float64) == 3  # 0.45 * log(max float64) = 319
    assert stable_chunk(1e6, 16, 100, torch.float32) == 1


@pytest.mark.parametrize("length,chunk", [(1, 16), (13, 4), (63, 16), (63, 64)])
def test_gated_delta_rule_chunk_and_matrix_equal_the_recurrence(length, chunk):
    g = torch.Generator().manual_seed(length)
    N, H, Dk, Dv = 2, 3, 5, 7
    f64 = dict(generator=g, dtype=torch.float64)
    q, k = l2norm(torch.randn(N, length, H, Dk, **f64)), l2norm(torch.randn(N, length, H, Dk, **f64))
    v, gl, beta = torch.randn(N, length, H, Dv, **f64), -torch.rand(N, length, H, **f64), torch.rand(N, length, H, **f64)
    _check_same(lambda *a: gated_delta_rule_chunk(*a, chunk=chunk), gated_delta_rule_naive, [q, k, v, gl, beta])

    def via_matrix(q, k, v, gl, beta):
        return torch.einsum("nhts,nshv->nthv", gated_delta_rule_matrix(q, k, gl, beta), v)

    _check_same(via_matrix, gated_delta_rule_naive, [q, k, v, gl, beta])


@pytest.mark.parametrize("length", [1, 13, 63])
def test_mlstm_parallel_equals_the_stabilised_recurrence(length):
    from emergelab.models.mixers.mlstm import mlstm_parallel, mlstm_recurrent

    g = torch.Generator().manual_seed(length)
    f64 = dict(generator=g, dtype=torch.float64)
    q, k, v = (torch.randn(2, 3, length, 5, **f64) for _ in range(3))
    i_pre, f_pre = torch.randn(2, 3, length, **f64) * 3, torch.randn(2, 3, length, **f64) * 3 + 2
    _check_same(mlstm_parallel, mlstm_recurrent, [q, k, v, i_pre, f_pre])


@pytest.mark.parametrize("length,chunk", [(1, 16), (13, 4), (40, 7), (63, 16), (64, 16), (63, 64)])
@pytest.mark.parametrize("gates", ["moderate", "extreme"])
def test_mlstm_chunkwise_equals_the_stabilised_recurrence(length, chunk, gates):
    from emergelab.models.mixers.mlstm import mlstm_chunkwise, mlstm_recurrent

    g = torch.Generator().manual_seed(length + chunk)
    f64 = dict(generator=g, dtype=torch.float64)
    q, k, v = (torch.randn(2, 3, length, 5, **f64) for _ in range(3))
    i_pre, f_pre = torch.randn(2, 3, length, **f64) * 3, torch.randn(2, 3, length, **f64) * 3 + 2
    tol = REL_TOL_64
    if gates == "extreme":  # very negative input gates (the exp(-m) floor of the normaliser decides) and
        i_pre, f_pre = i_pre * 4 - 12, f_pre * 3 - 6  # forget gates near closed (state decays within a chunk)
        # where the normaliser is |q.k| itself, h = sign(q.k) v: the q and k gradients are sums that cancel
        # to ~1e-11 of their terms, so rounding alone (either form) moves them by ~1e-10 relative
        tol = 1e-8
    _check_same(lambda *a: mlstm_chunkwise(*a, chunk=chunk), mlstm_recurrent, [q, k, v, i_pre, f_pre], tol)


@pytest.mark.parametrize("length", [1, 13])
def test_rwkv7_pattern_equals_the_recurrence(length):
    from emergelab.models.mixers.rwkv7 import rwkv7_pattern, rwkv7_recurrent

    g = torch.Generator().manual_seed(length)
    f64 = dict(generator=g, dtype=torch.float64)
    r, k, v = (torch.randn(2, length, 3, 5, **f64) for _ in range(3))
    log_w = -torch.rand(2, length, 3, 5, **f64) * 0.6
    kk = torch.nn.functional.normalize(torch.randn(2, length, 3, 5, **f64), dim=-1)
    lr = torch.rand(2, length, 3, 5, **f64)

    def via_pattern(r, k, v, log_w, kk, lr):
        return torch.einsum("mhts,mshn->mthn", rwkv7_pattern(r, k, log_w, -kk, kk * lr), v)

    _check_same(via_pattern, lambda r, k, v, log_w, kk, lr: rwkv7_recurrent(r, k, v, log_w, -kk, kk * lr),
                [r, k, v, log_w, kk, lr])


def _rwkv7_inputs(length: int, decay_scale: float, dtype=torch.float64):
    g = torch.Generator().manual_seed(length)
    kw = dict(generator=g, dtype=dtype)
    r, k, v = (torch.randn(2, length, 3, 5, **kw) for _ in range(3))
    log_w = -torch.rand(2, length, 3, 5, **kw) * decay_scale
    kk = torch.nn.functional.normalize(torch.randn(2, length, 3, 5, **kw), dim=-1)
    return [r, k, v, log_w, kk, torch.rand(2, length, 3, 5, **kw)]


@pytest.mark.parametrize("length", [1, 13, 63, 64, 100])
@pytest.mark.parametrize("chunk", [4, 16, 64])
@pytest.mark.parametrize("decay_scale", [0.6, 30.0])
def test_rwkv7_chunked_equals_the_recurrence(length, chunk, decay_scale):
    """RWKV-7's own decays (log w in (-0.607, 0)) and far stronger ones (down to -30 a step: the chunk is
    shortened to 10 in float64); a = -kk, b = kk * lr as in the mixer."""
    from emergelab.models.mixers.rwkv7 import rwkv7_chunked, rwkv7_recurrent

    def run(fn):
        return lambda r, k, v, log_w, kk, lr: fn(r, k, v, log_w, -kk, kk * lr)

    _check_same(run(lambda *a: rwkv7_chunked(*a, chunk=chunk)), run(rwkv7_recurrent),
                _rwkv7_inputs(length, decay_scale))


@pytest.mark.parametrize("decay_scale", [0.6, 30.0, 100.0])
def test_rwkv7_chunked_float32_stays_finite_and_close_to_float64(decay_scale):
    from emergelab.models.mixers.rwkv7 import rwkv7_chunked, rwkv7_recurrent

    r, k, v, log_w, kk, lr = _rwkv7_inputs(100, decay_scale)
    exact = rwkv7_recurrent(r, k, v, log_w, -kk, kk * lr)
    r, k, v, log_w, kk, lr = (t.float() for t in (r, k, v, log_w, kk, lr))
    y = rwkv7_chunked(r, k, v, log_w, -kk, kk * lr, chunk=64)
    assert torch.isfinite(y).all() and rel_err(y, exact) < 1e-5


def test_rwkv7_forward_reads_no_decay_bound_unless_hooked(monkeypatch):
    """The model's decays are bounded by construction, so its forward never reads one back (no host sync
    on a GPU); a hook on log_w may set any decay, and then the bound is read and the result stays exact."""
    config = make_config("rwkv7", layers=1)
    model = config.build(n_models=2, seeds=[0, 1]).double()
    x = tokens(2)
    reads = []
    real_item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda t: reads.append(t.shape) or real_item(t))
    model(x)
    assert reads == []

    def strong(log_w, hook):  # decays down to exp(-12) a step: chunks of 16 would overflow exp(-g) (float32)
        return log_w * 20.0

    with model.hooks([("blocks.0.mixer.hook_log_w", strong)]):  # hooked, on the fast (chunked) path
        hooked = model(x)
    assert reads and torch.isfinite(hooked).all()
    # run_with_hooks takes the observed path: the plain recurrence through the pattern
    reference = model.run_with_hooks(x, fwd_hooks=[("blocks.0.mixer.hook_log_w", strong)])
    assert rel_err(hooked, reference) < 1e-10


# ------------------------------------------------------------------------------------------ CUDA
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@CUDA
@pytest.mark.parametrize("name", ["transformer", *NAMES])
@pytest.mark.parametrize("observed", [False, True])
def test_cuda_equals_cpu_outputs_and_gradients(name, observed):
    """Every model's fast path (the one training uses on a GPU) and observed path compute on CUDA what
    they compute on the CPU: float32 rounding only (TF32 off)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if name == "transformer":
        config = MODELS[name](layers=2, heads=3, head_dim=5, mlp_ratio=2.0).resolved(V, CTX)
    else:
        config = make_config(name, init_std=0.1)
    cpu = config.build(n_models=2, seeds=[5, 6])
    gpu = config.build(n_models=2, seeds=[5, 6]).cuda()
    x = tokens(2)
    w = torch.randn(2, B, T, V, generator=torch.Generator().manual_seed(9))
    results = []
    for model, device in ((cpu, "cpu"), (gpu, "cuda")):
        with model.observing() if observed else contextlib.nullcontext():
            out = model(x.to(device))
            (out * w.to(device)).sum().backward()
        results.append((out.detach().cpu(), {n: g.cpu() for n, g in grads(model).items()}))
    (out_cpu, grads_cpu), (out_gpu, grads_gpu) = results
    assert rel_err(out_gpu, out_cpu) < 1e-5
    for n, g in grads_gpu.items():
        assert rel_err(g, grads_cpu[n]) < 1e-4, n


@pytest.mark.parametrize("name", NAMES)
def test_no_positions_leaves_the_position_embedding_out_and_keeps_the_default_hash(name):
    """``model.positions: none`` as for the transformer: no ``W_pos``, the count exact, the model still a
    member-wise causal model; "learned" (the default) keeps every earlier mixer run's hash."""
    from emergelab.train import ExperimentConfig

    learned = make_config(name)
    nope = MODELS[name](layers=2, mlp_ratio=2.0, init_std=0.3, positions="none", **SMALL[name]).resolved(V, CTX)
    model = nope.build(n_models=2, seeds=[0, 1])
    assert not hasattr(model, "W_pos")
    assert sum(p[0].numel() for p in model.parameters()) == nope.n_params() == learned.n_params() - CTX * nope.width
    x = tokens(2)
    with torch.no_grad():
        full, prefix = model(x), model(x[..., :5])
    assert torch.allclose(full[..., :5, :], prefix, rtol=1e-5, atol=1e-6)  # causal
    base = {"task": {"name": "linear-map", "state_size": 4, "sparsity": 2}, "model": {"name": name}}
    keys = [ExperimentConfig.from_dict({**base, "model": {"name": name, **extra}}).resolved().science_key()
            for extra in ({}, {"positions": "learned"}, {"positions": "none"})]
    assert keys[0] == keys[1] != keys[2]
    with pytest.raises(ConfigError, match="model.positions='rotary'"):
        ExperimentConfig.from_dict({**base, "model": {"name": name, "positions": "rotary"}})
