"""The C layer norm, GELU and row entropy (``models/layer_norm.c``, ``gelu.c``, ``entropy.c`` through
``layers.NativeLayerNorm``, ``layers.NativeGelu``, ``native.row_entropy``) against the torch forms
(``LayerNorm.reference``, ``F.gelu``, ``native.row_entropy_reference``) and float64 computations, and the
invariances their bit-identity rests on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from emergelab.models import native
from emergelab.models.layers import LayerNorm, NativeGelu, NativeLayerNorm, gelu, native_layer_norm_applies

needs_kernel = pytest.mark.skipif(native.kernels() is None, reason="no C compiler on this machine")


def _layer_norm(E: int, d: int, seed: int) -> LayerNorm:
    ln = LayerNorm(E, d)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ln.w.copy_(1 + 0.3 * torch.randn(E, d, generator=g))
        ln.b.copy_(0.3 * torch.randn(E, d, generator=g))
    return ln


def _grads(ln: LayerNorm, x: torch.Tensor, dy: torch.Tensor, native_form: bool):
    ln.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    y = NativeLayerNorm.apply(x, ln.w, ln.b) if native_form else ln.reference(x)
    y.backward(dy)
    return y.detach(), x.grad, ln.w.grad.clone(), ln.b.grad.clone()


@needs_kernel
@pytest.mark.parametrize("E,B,T,d", [(1, 3, 5, 8), (2, 4, 31, 64), (3, 2, 7, 24), (1, 1, 200, 256), (2, 1, 1, 16)])
def test_native_layer_norm_matches_torch_and_float64(E, B, T, d):
    ln = _layer_norm(E, d, seed=d)
    g = torch.Generator().manual_seed(T)
    x = 3 * torch.randn(E, B, T, d, generator=g) + 1
    dy = torch.randn(E, B, T, d, generator=g)
    ours = _grads(ln, x, dy, True)
    theirs = _grads(ln, x, dy, False)
    ln64 = _layer_norm(E, d, seed=d).double()
    exact = _grads(ln64, x.double(), dy.double(), False)
    for name, a, b, c in zip(("y", "dx", "dw", "db"), ours, theirs, exact):
        scale = c.abs().max().item()
        assert (a.double() - c).abs().max() <= 4e-6 * scale, name  # as close to exact as torch is
        assert (b.double() - c).abs().max() <= 4e-6 * scale, name


@needs_kernel
def test_rows_and_members_are_independent():
    E, d = 3, 64
    ln = _layer_norm(E, d, seed=0)
    g = torch.Generator().manual_seed(1)
    x, dy = torch.randn(E, 4, 9, d, generator=g), torch.randn(E, 4, 9, d, generator=g)
    y, dx, dw, db = _grads(ln, x, dy, True)
    alone = _layer_norm(1, d, seed=0)
    with torch.no_grad():
        alone.w.copy_(ln.w[1:2])
        alone.b.copy_(ln.b[1:2])
    y1, dx1, dw1, db1 = _grads(alone, x[1:2], dy[1:2], True)  # member 1 without the others
    assert torch.equal(y1, y[1:2]) and torch.equal(dx1, dx[1:2])
    assert torch.equal(dw1, dw[1:2]) and torch.equal(db1, db[1:2])
    rows = NativeLayerNorm.apply(x[:, 2:3].contiguous(), ln.w, ln.b)  # a row's output: that row alone
    assert torch.equal(rows.detach(), y[:, 2:3])


@needs_kernel
def test_the_module_takes_the_kernel_where_it_applies_and_hooks_still_see_the_output():
    ln = _layer_norm(2, 16, seed=3)
    x = torch.randn(2, 3, 5, 16)
    assert native_layer_norm_applies(x, ln.w)
    assert not native_layer_norm_applies(torch.randn(2, 3, 5, 12), torch.ones(2, 12))  # width not a multiple of 8
    assert not native_layer_norm_applies(x.double(), ln.w)
    assert not native_layer_norm_applies(torch.randn(3, 3, 5, 16), ln.w)  # 3 members, weights for 2
    with pytest.raises(RuntimeError):  # ... fails as the torch form does, never reads past w
        ln(torch.randn(3, 3, 5, 16))
    seen = []
    ln.hook_normalized.register_forward_hook(lambda module, inputs, out: seen.append(out) or out * 2)
    out = ln(x)
    assert torch.equal(out, 2 * NativeLayerNorm.apply(x, ln.w, ln.b).detach())
    assert torch.equal(seen[0], out / 2)
    torch.testing.assert_close(ln.reference(x) * 2, out, rtol=1e-5, atol=1e-5)


def test_without_the_kernel_the_module_is_the_torch_form(monkeypatch):
    monkeypatch.setattr(native, "kernels", lambda: None)
    ln = _layer_norm(2, 16, seed=4)
    x = torch.randn(2, 3, 5, 16)
    assert not native_layer_norm_applies(x, ln.w)
    assert torch.equal(ln(x), ln.reference(x))


@needs_kernel
@pytest.mark.parametrize("n", [1, 7, 8, 13, 4096 + 5])
def test_native_gelu_matches_torch_and_float64(n):
    g = torch.Generator().manual_seed(n)
    x = torch.cat([torch.randn(n, generator=g) * 3, torch.tensor([0.0, -0.0, 1e-30, -12.0, 12.0, -100.0, 100.0])])
    dy = torch.randn(x.shape, generator=g)
    xs = x.clone().requires_grad_()
    y = NativeGelu.apply(xs)
    y.backward(dy)
    ref = x.double().requires_grad_()
    exact = F.gelu(ref)
    exact.backward(dy.double())
    torch_x = x.clone().requires_grad_()
    torch_y = F.gelu(torch_x)
    torch_y.backward(dy)
    for ours, theirs, truth in ((y.detach(), torch_y.detach(), exact.detach()), (xs.grad, torch_x.grad, ref.grad)):
        scale = truth.abs().clamp(min=1.0)  # erf's 1.5e-7 absolute error (the formula torch's CPU erf uses)
        assert ((ours.double() - truth).abs() <= 5e-7 * scale).all()
        assert ((theirs.double() - truth).abs() <= 2e-6 * scale).all()  # torch's own: up to ~1.1e-6 measured


@needs_kernel
def test_a_gelu_elements_bits_depend_on_its_value_alone():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(5))
    y = NativeGelu.apply(x)
    for start, stop in ((0, 3), (5, 13), (995, 1000), (1, 1000), (3, 40)):  # tails and misaligned starts
        assert torch.equal(NativeGelu.apply(x[start:stop].clone()), y[start:stop])


def test_without_the_kernel_gelu_is_torchs(monkeypatch):
    monkeypatch.setattr(native, "kernels", lambda: None)
    x = torch.randn(10)
    assert torch.equal(gelu(x), F.gelu(x))


@needs_kernel
@pytest.mark.parametrize("n", [1, 5, 8, 15, 31, 64])
def test_row_entropy_matches_the_torch_form_and_float64(n):
    g = torch.Generator().manual_seed(n)
    logits = 4 * torch.randn(300, n, generator=g)
    logits[::3, n // 2 + 1:] = float("-inf")  # exact zeros, as above an attention pattern's diagonal
    logits[1::7] = torch.where(torch.arange(n) == 0, 0.0, -120.0)  # subnormal and zero probabilities
    p = torch.softmax(logits, -1)
    ours, theirs = native.row_entropy(p), native.row_entropy_reference(p)
    exact = -(p.double() * p.double().clamp(min=1e-300).log()).sum(-1)
    assert (ours.double() - exact).abs().max() <= 1e-6 * max(1.0, exact.abs().max().item())
    assert (theirs.double() - exact).abs().max() <= 1e-6 * max(1.0, exact.abs().max().item())
    one = native.row_entropy(p[5:6].clone())  # a row's bits: that row alone
    assert torch.equal(one, ours[5:6])


def test_row_entropy_without_the_kernel_is_the_torch_form(monkeypatch):
    monkeypatch.setattr(native, "kernels", lambda: None)
    p = torch.softmax(torch.randn(4, 9), -1)
    assert torch.equal(native.row_entropy(p), native.row_entropy_reference(p))


@needs_kernel
def test_gelu_without_gradients_gives_the_same_values():
    x = torch.randn(3, 37, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        plain = NativeGelu.apply(x)
    assert torch.equal(plain, NativeGelu.apply(x.clone().requires_grad_()).detach())
