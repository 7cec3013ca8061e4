"""The CUDA training step's small-size kernels against their references.

* ``models/triton_layer_norm.py`` (the layer norm on CUDA) against ``LayerNorm.reference`` (``F.layer_norm``
  + the per-member affine map), forward and every gradient, over widths and row counts that leave the
  kernels' tiles partly empty. Without a GPU the kernels run under Triton's interpreter
  (``TRITON_INTERPRET=1``, set before Triton is imported, so in a subprocess, which finds Triton where
  ``make install`` puts it apart from the environment); skipped without Triton.
* ``transformer.bmm_attention`` (the attention of small heads on CUDA) against the materialised attention,
  on a CPU (the function is device-agnostic) and, where there is one, on a GPU through the model.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from emergelab.models.transformer import Attention, TransformerConfig, bmm_attention

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SRC = Path(__file__).resolve().parents[1] / "src"


def _triton_path() -> str | None:
    """Where the subprocess finds Triton: "" when this environment has it, else the folder ``make install``
    fills apart from the environment (``.venv/triton-interpreter``: installed in the environment, Triton would
    send transformers' reference kernels in ``tests/test_mixer_references.py`` to fla's GPU code), else None."""
    import importlib.util

    if importlib.util.find_spec("triton") is not None:
        return ""
    apart = Path(sys.prefix) / "triton-interpreter"
    return str(apart) if (apart / "triton").is_dir() else None


TRITON = _triton_path()


COMPARE = textwrap.dedent("""
    import sys, torch, torch.nn.functional as F
    from emergelab.models import triton_layer_norm as T
    device = sys.argv[1]
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for E, shape, D in [(3, (5, 7), 64), (2, (31,), 48), (1, (4, 3), 8), (4, (130,), 64), (2, (3,), 100)]:
        x = torch.randn(E, *shape, D, generator=gen).to(device).requires_grad_()
        w = (1 + 0.1 * torch.randn(E, D, generator=gen)).to(device).requires_grad_()
        b = (0.1 * torch.randn(E, D, generator=gen)).to(device).requires_grad_()
        g = torch.randn(E, *shape, D, generator=gen).to(device)
        y = T.layer_norm(x, w, b, 1e-5)
        at = (slice(None),) + (None,) * len(shape) + (slice(None),)
        ref = torch.addcmul(b[at], F.layer_norm(x, (D,), eps=1e-5), w[at])
        ours = (y, *torch.autograd.grad(y, (x, w, b), g))
        theirs = (ref, *torch.autograd.grad(ref, (x, w, b), g))
        scale = [1.0, 1.0, math.sqrt(x[0].numel() / D), math.sqrt(x[0].numel() / D)]  # grads sum over rows
        for a, r, s in zip(ours, theirs, scale):
            assert a.shape == r.shape, (a.shape, r.shape)
            worst = max(worst, float((a - r).abs().max()) / s)
        # a member alone gives the same output and input gradient bits as in its ensemble
        y0 = T.layer_norm(x[1:2].detach().requires_grad_(), w[1:2], b[1:2], 1e-5) if E > 1 else None
        if y0 is not None:
            assert torch.equal(y0, y[1:2]), "member 1 alone differs"
    print("WORST", worst)
""").replace("import sys,", "import math, sys,")


def _compare(env: dict[str, str], device: str) -> float:
    path = os.pathsep.join(p for p in (str(SRC), TRITON) if p)
    done = subprocess.run([sys.executable, "-c", COMPARE, device], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": path, **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return float(done.stdout.split("WORST")[-1])


@pytest.mark.skipif(TRITON is None, reason="needs Triton (`make install` puts it in .venv/triton-interpreter)")
def test_triton_layer_norm_matches_the_torch_form_under_the_interpreter():
    assert _compare({"TRITON_INTERPRET": "1"}, "cpu") < 2e-5


@CUDA
@pytest.mark.skipif(TRITON is None, reason="needs Triton")
def test_cuda_triton_layer_norm_matches_the_torch_form():
    assert _compare({}, "cuda") < 2e-5


@CUDA
def test_cuda_layer_norm_takes_triton_and_agrees_with_its_reference():
    from emergelab.models import triton_layer_norm
    from emergelab.models.layers import LayerNorm

    norm = LayerNorm(4, 64).cuda()
    with torch.no_grad():
        norm.w.normal_(1, 0.1)
        norm.b.normal_(0, 0.1)
    x = torch.randn(4, 8, 31, 64, device="cuda")
    assert triton_layer_norm.applies(x, norm.w) == triton_layer_norm.available()
    torch.testing.assert_close(norm(x), norm.reference(x), atol=1e-5, rtol=1e-5)
    LayerNorm.use_triton = False
    try:
        assert torch.equal(norm(x), norm.reference(x))
    finally:
        LayerNorm.use_triton = True


def _materialised(q, k, v, bias):
    T, D = q.shape[-2], q.shape[-1]
    scores = q @ k.transpose(-1, -2) / math.sqrt(D) + (0 if bias is None else bias)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    return torch.softmax(scores, -1) @ v


@pytest.mark.parametrize("with_bias", [False, True])
def test_bmm_attention_matches_the_materialised_attention(with_bias):
    gen = torch.Generator().manual_seed(1)
    N, H, T, D = 6, 3, 9, 8
    q, k, v = (torch.randn(N, H, T, D, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    bias = torch.randn(N, H, T, T, generator=gen, dtype=torch.float64) if with_bias else None
    grad = torch.randn(N, H, T, D, generator=gen, dtype=torch.float64)
    z, ref = bmm_attention(q, k, v, bias), _materialised(q, k, v, bias)
    torch.testing.assert_close(z, ref, atol=1e-12, rtol=1e-12)
    for a, b in zip(torch.autograd.grad(z, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@CUDA
def test_cuda_small_heads_take_bmm_attention_and_agree_with_sdpa_math():
    cfg = TransformerConfig(layers=1, heads=4, head_dim=8, vocab_size=5, context_length=12)
    model = cfg.build(n_models=3).cuda()
    tokens = torch.randint(0, 5, (3, 7, 12), device="cuda")
    assert Attention.small_heads == "bmm"
    ours = model(tokens)
    Attention.small_heads = "sdpa-math"
    try:
        theirs = model(tokens)
    finally:
        Attention.small_heads = "bmm"
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    with model.observing():
        torch.testing.assert_close(ours, model(tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(TRITON is None, reason="needs Triton")
def test_a_cpu_model_never_imports_triton():
    """Importing Triton costs start-up time that a CPU worker should not pay: a CPU model's forward and
    backward never import it, even where it is installed."""
    code = textwrap.dedent("""
        import sys, torch
        from emergelab.models.transformer import TransformerConfig
        model = TransformerConfig(layers=1, heads=2, head_dim=8, vocab_size=3, context_length=6).build(2)
        model(torch.randint(0, 3, (2, 4, 6))).sum().backward()
        print("TRITON" if "triton" in sys.modules else "NONE")
    """)
    path = os.pathsep.join(p for p in (str(SRC), TRITON) if p)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("NONE")
