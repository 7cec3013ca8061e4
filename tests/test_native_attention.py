"""The fused C attention (``models/causal_attention.c`` through ``fast_attention.NativeCausalAttention``)
against a float64 reference, the invariances its bit-identity rests on, and the torch form it falls back to."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from emergelab.models import TransformerConfig, native
from emergelab.models import fast_attention
from emergelab.models.fast_attention import NativeCausalAttention, causal_attention, native_applies

needs_kernel = pytest.mark.skipif(native.kernels() is None, reason="no C compiler on this machine")


def _reference(qkv: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D), causal) v, written out; qkv [E, B, T, 3, H, D] -> [E, B, T, H, D]."""
    q, k, v = qkv.unbind(3)
    T = qkv.shape[2]
    s = torch.einsum("ebihd,ebjhd->ebhij", q, k) / math.sqrt(qkv.shape[-1])
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return torch.einsum("ebhij,ebjhd->ebihd", s.softmax(-1), v)


def _native(qkv: torch.Tensor, dz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = qkv.clone().requires_grad_()
    z = NativeCausalAttention.apply(x)
    z.backward(dz)
    return z.detach(), x.grad


@needs_kernel
@pytest.mark.parametrize("E,B,T,H,D", [(1, 3, 1, 2, 8), (2, 3, 7, 3, 8), (1, 2, 8, 1, 8), (2, 2, 9, 2, 16),
                                       (1, 4, 15, 8, 8), (1, 2, 31, 8, 8), (1, 1, 64, 2, 24),
                                       (1, 1, 128, 1, 32), (3, 2, 33, 2, 16)])
def test_native_attention_matches_a_float64_reference(E, B, T, H, D):
    g = torch.Generator().manual_seed(T * 100 + D)
    qkv = 2 * torch.randn(E, B, T, 3, H, D, generator=g)
    dz = torch.randn(E, B, T, H, D, generator=g)
    z, dqkv = _native(qkv, dz)
    x = qkv.double().requires_grad_()
    ref = _reference(x)
    ref.backward(dz.double())
    assert (z.double() - ref).abs().max() <= 2e-6 * ref.abs().max()
    assert (dqkv.double() - x.grad).abs().max() <= 1e-5 * x.grad.abs().max()


@needs_kernel
def test_a_problems_bits_depend_on_its_own_inputs_only():
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(3, 5, 31, 3, 4, 8, generator=g)
    dz = torch.randn(3, 5, 31, 4, 8, generator=g)
    z, dqkv = _native(qkv, dz)
    alone_z, alone_d = _native(qkv[1:2].contiguous(), dz[1:2].contiguous())  # member 1 without the others
    assert torch.equal(alone_z, z[1:2]) and torch.equal(alone_d, dqkv[1:2])
    one_z, one_d = _native(qkv[2:, 3:4].contiguous(), dz[2:, 3:4].contiguous())  # one sequence of member 2
    assert torch.equal(one_z, z[2:, 3:4]) and torch.equal(one_d, dqkv[2:, 3:4])


@needs_kernel
def test_the_kernels_give_the_reference_bits():
    """Every kernel's outputs on fixed inputs (native.fingerprint) are the recorded ones: a change to a kernel
    that alters its bits fails here until REFERENCE_FINGERPRINT is re-recorded on purpose."""
    assert native.fingerprint(native.kernels()) == native.REFERENCE_FINGERPRINT


@needs_kernel
def test_the_bits_do_not_depend_on_the_instruction_set(tmp_path):
    """The cached library is built with -march=native; the same sources built for the baseline ISA (SSE2 on
    x86-64) must give the same bits, since they fix every rounding (no FMA, no reassociation)."""
    import shutil
    plain = tmp_path / "plain.so"
    assert native._compile(shutil.which("cc") or "cc", native.FLAGS, plain)
    assert native.fingerprint(native.Kernels(plain)) == native.REFERENCE_FINGERPRINT


@needs_kernel
def test_a_build_with_other_bits_warns_once_per_build(tmp_path, monkeypatch):
    import shutil
    copy = tmp_path / "k.so"
    shutil.copy(native.kernels().path, copy)
    lib = native.Kernels(copy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        native._check_fingerprint(lib)  # the reference bits: silent, and the result kept beside the library
    assert (tmp_path / "k.fingerprint").read_text().strip() == native.REFERENCE_FINGERPRINT
    monkeypatch.setattr(native, "REFERENCE_FINGERPRINT", "0" * 64)
    monkeypatch.setattr(native, "fingerprint", lambda lib: pytest.fail("recomputed"))  # read from the record
    with pytest.warns(native.NativeKernelsWarning, match="other bits than the reference build"):
        native._check_fingerprint(lib)


@needs_kernel
def test_shapes_out_of_the_kernels_range_take_the_torch_form():
    lib = native.kernels()
    assert native_applies(torch.zeros(1, 1, lib.t_max, 3, 1, 8), None)
    assert not native_applies(torch.zeros(1, 1, lib.t_max + 1, 3, 1, 8), None)
    assert not native_applies(torch.zeros(1, 1, 7, 3, 1, 64), None)  # D > 32: the torch form is as fast
    assert not native_applies(torch.zeros(1, 1, 7, 3, 1, 12), None)  # D not a multiple of 8
    assert not native_applies(torch.zeros(1, 1, 7, 3, 1, 8), torch.zeros(1, 7, 7))  # an attention bias
    assert not native_applies(torch.zeros(1, 1, 7, 3, 1, 8, dtype=torch.float64), None)
    assert lib.forward(0, 0, 0, 1, lib.t_max + 1, 1, 8, 1.0, lib.t_max + 1) == -1  # the kernel refuses, never overruns


def test_without_the_kernel_the_torch_form_trains(monkeypatch):
    """No compiler (or EMERGELAB_NATIVE=0): the torch form, same math to float tolerance."""
    g = torch.Generator().manual_seed(2)
    qkv = torch.randn(2, 3, 15, 3, 2, 8, generator=g)
    dz = torch.randn(2, 3, 15, 2, 8, generator=g)
    monkeypatch.setattr(fast_attention.native, "kernels", lambda: None)
    assert not native_applies(qkv, None)
    x = qkv.clone().requires_grad_()
    z = causal_attention(x)
    z.backward(dz)
    ref_x = qkv.double().requires_grad_()
    ref = _reference(ref_x)
    ref.backward(dz.double())
    assert (z.double() - ref).abs().max() <= 2e-6 * ref.abs().max()
    assert (x.grad.double() - ref_x.grad).abs().max() <= 1e-5 * ref_x.grad.abs().max()


def test_no_compiler_means_no_kernel_and_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("EMERGELAB_CACHE", str(tmp_path))
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert native._build()[0] is None
    with pytest.warns(native.NativeKernelsWarning, match="no C compiler"):
        assert native.kernels.__wrapped__() is None
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    path, why = native._build()
    assert path is None and "could not build" in why and not list(tmp_path.rglob("*.so*"))
    monkeypatch.setenv("EMERGELAB_NATIVE", "0")  # chosen: silent
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.kernels.__wrapped__() is None


@needs_kernel
def test_an_unwritable_cache_falls_back_to_the_temporary_directory(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("EMERGELAB_CACHE", str(blocker))  # .../a-file/kernels cannot be created
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    path, _ = native._build()
    assert path is not None and path.is_relative_to(tmp_path / "tmp") and native.Kernels(path).t_max > 0


@needs_kernel
def test_the_model_trains_through_the_kernel_as_through_the_reference():
    cfg = TransformerConfig(layers=2, heads=2, head_dim=16, vocab_size=3, context_length=20).resolved(3, 20)
    model = cfg.build(2, seeds=[0, 1])
    tokens = torch.randint(0, 3, (2, 4, 20), generator=torch.Generator().manual_seed(3))
    assert native_applies(torch.zeros(2, 4, 20, 3, 2, 16), None)  # the blocked path below takes the kernel
    grads = []
    for blocked in (True, False):
        for block in model.blocks:
            block.attn.blocked = blocked
        model.zero_grad(set_to_none=True)
        out = model(tokens)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, ref in grads[1].items():
        assert (grads[0][name] - ref).abs().max() <= 2e-5 * ref.abs().max() + 1e-7, name


@needs_kernel
def test_the_hooks_pattern_is_the_backwards_pattern_without_its_padding():
    from emergelab.models.fast_attention import native_forward
    qkv = torch.randn(2, 3, 13, 3, 2, 16, generator=torch.Generator().manual_seed(4))
    z, padded = native_forward(qkv)
    z2, pattern = native_forward(qkv, padded=False)
    assert torch.equal(z, z2) and pattern.shape == (2, 3, 2, 13, 13)
    assert torch.equal(pattern, padded.view(2, 3, 2, 13, 16)[..., :13])
    assert torch.equal(pattern, pattern.tril())  # exact zeros above the diagonal
    assert native.kernels().forward(qkv.data_ptr(), z.data_ptr(), pattern.data_ptr(), 6, 13, 2, 16, 0.25, 14) == -1
