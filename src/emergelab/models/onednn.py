"""fp32 matrix products through oneDNN, the library torch's CPU build carries beside MKL.

torch runs a float32 ``mm``/``bmm`` on a CPU with MKL, whose kernels on this project's AMD EPYC (Zen 5, AVX-512)
run at AVX2's rate: 104-111 GFLOP/s a thread at our models' shapes, where oneDNN's JIT kernels run 207-245
(2026-11-28, ``benchmarks/onednn_products.py``; benchmarks/README.md "oneDNN"). torch routes a float32 product to
oneDNN only for reduced precision; its ``mkldnn::_linear_pointwise`` (the op Inductor's CPU backend calls)
takes plain strided tensors and computes ``x @ w^T + b`` at full fp32 precision.

:func:`available` says whether it is used here. By default only where it was measured faster: an x86-64 CPU
of AMD's with AVX-512, where MKL runs at AVX2's rate. On an Intel Xeon with AVX-512 and AMX
(the GPU host, 2026-11-28) MKL ran the products as fast as oneDNN (125-154 against 116-150 GFLOP/s a thread)
and a map's forward + backward 1.1-3x faster than ``OneDnnMemberLinear``, so it is off there; it is off too
on other processors (never measured: Apple's or other ARM cores, an x86-64 CPU without AVX-512 or of
another vendor). ``EMERGELAB_ONEDNN=1`` turns it on anywhere, ``EMERGELAB_ONEDNN=0`` off, and it is used
only where the op exists and computes a known product (:func:`usable`).
``models/layers.py:OneDnnMemberLinear`` is the one user. The choice never depends on a timing, so a machine
always trains the same numbers.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache

import torch


MIN_FEATURES = 32
MIN_MACS = 3_500_000
"""``layers.member_linear`` takes oneDNN for a map when both its widths are at least ``MIN_FEATURES`` and a
member's product has at least ``MIN_MACS`` multiply-adds (rows x inputs x outputs); below that a call's fixed
cost (~15 us) outweighs the faster kernel (forward + backward, ``baddbmm``'s time over oneDNN's, 1 thread, AMD
EPYC Zen 5, 2026-11-28, ``benchmarks/onednn_products.py``: 16 x 16 at 960 rows 0.44x, 32 x 32 at 960 0.74x,
64 x 64 at 256 0.77x, 32 x 96 at 960 1.20x, 64 x 64 at 960 1.26x, 64 x 192 at 960 1.70x, at 3840 2.04x). The
line sits above 2.5M: inside the training step the tiny preset's 32 x 96 map at 960 rows (2.95M) measured
3-15% slower through oneDNN than through ``baddbmm`` (``benchmarks/profile_step.py --size tiny``), where
the demo's 64 x 64 at 960 (3.9M) and up gain."""


X86_64 = ("x86_64", "amd64")


def cpu_vendor() -> str:
    """The CPU's vendor string ("AuthenticAMD", "GenuineIntel"; "" if unknown): ``/proc/cpuinfo`` on Linux,
    ``platform.processor()`` elsewhere (it names the vendor on Windows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return next((v for v in ("AuthenticAMD", "GenuineIntel") if v in platform.processor()), "")


def _off_by_default() -> str:
    """Why this processor does not take oneDNN by default ("" if it does): it does on AMD's x86-64 CPUs
    with AVX-512 (torch's own CPU-capability check), where MKL runs AVX2's kernels."""
    machine = platform.machine().lower()
    if machine not in X86_64:
        return f"on {machine or 'this processor'}"
    vendor = cpu_vendor()
    if vendor == "GenuineIntel":
        return "on Intel CPUs, where MKL runs AVX-512 and measured faster"
    if vendor != "AuthenticAMD":
        return f"on an x86-64 CPU of vendor {vendor or 'unknown'}"
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return "without AVX-512"
    return ""


def _why_not() -> str:
    """Why oneDNN is not used here by the switch or the processor ("" if they allow it)."""
    flag = os.environ.get("EMERGELAB_ONEDNN", "")
    if flag == "0":
        return "EMERGELAB_ONEDNN=0"
    where = "" if flag == "1" else _off_by_default()
    return f"off by default {where}; EMERGELAB_ONEDNN=1 turns it on" if where else ""


@lru_cache(maxsize=None)
def usable() -> bool:
    """Whether torch's oneDNN op is here and computes the products :func:`linear` promises (whatever the
    processor or the switch say)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        op = torch.ops.mkldnn._linear_pointwise
        # the forms OneDnnMemberLinear passes: contiguous and transposed views, with and without a bias
        x, xt = torch.ones(3, 16), torch.ones(16, 3).t()
        w, wt = torch.full((17, 16), 0.5), torch.full((16, 17), 0.5).t()
        want, bias = torch.full((3, 17), 8.0), torch.full((17,), 1.0)
        return all(torch.equal(op(a, b, None, "none", [None], ""), want) for a in (x, xt) for b in (w, wt)) \
            and torch.equal(op(x, wt, bias, "none", [None], ""), want + 1)
    except (AttributeError, RuntimeError):
        return False


@lru_cache(maxsize=None)
def available() -> bool:
    """Whether ``member_linear`` takes :func:`linear` on this machine: an AMD x86-64 CPU with AVX-512 (or
    ``EMERGELAB_ONEDNN=1``), not ``EMERGELAB_ONEDNN=0`` (to compare, or to match a machine without it), and
    the op :func:`usable`."""
    return not _why_not() and usable()


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ w^T (+ bias)``: x ``[N, k]``, w ``[o, k]`` (any strides; a transposed view is as fast as a
    contiguous weight, a transposed ``x`` is copied first), bias ``[o]`` -> ``[N, o]`` contiguous, float32."""
    return torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [None], "")


def describe() -> str:
    """One line for ``emergelab list``: which library multiplies the large maps here, and why."""
    if available():
        return (f"matrix products: oneDNN for maps of >= {MIN_FEATURES} features each way and >= "
                f"{MIN_MACS / 1e6:g}M multiply-adds a member (models/onednn.py; EMERGELAB_ONEDNN=0: MKL's baddbmm)")
    return f"matrix products: torch's baddbmm (oneDNN: {_why_not() or 'not usable in this torch build'})"
