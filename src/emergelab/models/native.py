"""The C kernels of the CPU training step, compiled on first use and loaded with ``ctypes``.

``causal_attention.c`` (the fused attention of short sequences: ``fast_attention.NativeCausalAttention``),
``layer_norm.c`` (layer norm with the per-member affine map: ``layers.NativeLayerNorm``), ``gelu.c``
(``layers.NativeGelu``) and ``entropy.c`` (the probes' attention entropy: ``row_entropy``) are compiled
once per machine with the system's C compiler (``$CC``, else ``cc``) into one library in a cache directory
(``$EMERGELAB_CACHE``, else ``$XDG_CACHE_HOME/emergelab``, else ``~/.cache/emergelab``), named by the hash of
the sources, the compiler, the flags and the CPU's feature flags (``-march=native``: a cache shared between
machines never hands one a library built for another). Compiling takes about a second; every later process
loads the cached library. The write is atomic (a temporary file renamed), so processes starting together
may compile side by side and load the same bytes.

Without a working compiler :func:`kernels` returns None and the training step runs the torch forms
(``fast_attention.CausalAttention``, ``F.layer_norm``, ``F.gelu``, the torch entropy): same math, other
rounding, so a seed's numbers then differ in their last bits from a machine that has the kernels
(docs/determinism.md).
``EMERGELAB_NATIVE=0`` chooses the torch forms deliberately (to compare, or to match such a machine).
Each build is checked once against :data:`REFERENCE_FINGERPRINT` (:func:`fingerprint`: every kernel's
outputs on fixed inputs, hashed); a build whose bits differ still runs, with a warning.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import torch

HERE = Path(__file__).parent
SOURCES = (HERE / "causal_attention.c", HERE / "layer_norm.c", HERE / "gelu.c", HERE / "entropy.c")
HEADERS = (HERE / "vec.h",)
FLAGS = ("-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno", "-fPIC", "-shared")
NATIVE_ISA = ("-march=native",)  # results do not depend on it (the source fixes every rounding); speed does


def cache_dir() -> Path:
    """Where compiled kernels are kept."""
    if os.environ.get("EMERGELAB_CACHE"):
        return Path(os.environ["EMERGELAB_CACHE"]) / "kernels"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "emergelab" / "kernels"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor()


def _compile(compiler: str, flags: tuple[str, ...], target: Path) -> bool:
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
        os.close(fd)
        done = subprocess.run([compiler, *flags, "-o", tmp, *map(str, SOURCES), "-lm"], capture_output=True,
                              timeout=120)
        if done.returncode != 0:
            return False
        os.replace(tmp, target)
        return True
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _cache_dirs() -> list[Path]:
    """:func:`cache_dir`, then a directory under the system's temporary one (for a read-only home)."""
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return [cache_dir(), Path(tempfile.gettempdir()) / f"emergelab-{user}" / "kernels"]


def _compiler() -> tuple[str, str | None]:
    """The C compiler's name (``$CC``, else ``cc``) and its path (None: not found)."""
    name = os.environ.get("CC", "cc")
    return name, shutil.which(name)


def _build() -> tuple[Path | None, str]:
    """The compiled library (built now if no cache holds it), or None and why not."""
    name, compiler = _compiler()
    if compiler is None:
        return None, f"no C compiler ({name!r} not found; set CC to one)"
    source = b"\0".join(path.read_bytes() for path in SOURCES + HEADERS)
    for directory in _cache_dirs():
        for flags in (FLAGS + NATIVE_ISA, FLAGS):  # a compiler without -march=native (some arm64 clangs): plain
            key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(flags).encode(),
                                             platform.machine().encode(), _cpu_flags().encode()])).hexdigest()[:16]
            target = directory / f"emergelab-kernels-{key}.so"
            if target.exists() or _compile(compiler, flags, target):
                return target, ""
    return None, (f"{compiler} could not build the kernels (try: {compiler} {' '.join(FLAGS)} -o k.so "
                  f"{' '.join(map(str, SOURCES))} -lm)")


class NativeKernelsWarning(UserWarning):
    """The C kernels could not be built or loaded on this machine: the torch forms run instead."""


class Kernels:
    """The loaded library's entry points, with argument types set."""

    def __init__(self, path: Path):
        lib = ctypes.CDLL(str(path))
        i64, i32, f32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
        self.path = path
        self.fingerprint = ""  # set by kernels() once checked (fingerprint())
        self.forward = lib.causal_attention_forward
        self.forward.argtypes = [ptr, ptr, ptr, i64, i32, i32, i32, f32, i32]
        self.forward.restype = i32
        self.backward = lib.causal_attention_backward
        self.backward.argtypes = [ptr, ptr, ptr, ptr, i64, i32, i32, i32, f32]
        self.backward.restype = i32
        self.scores = lib.causal_attention_scores  # the split forms hooks need (fast_attention._observed_native)
        self.scores.argtypes = [ptr, ptr, i64, i32, i32, i32, f32]
        self.softmax_pv = lib.causal_attention_softmax_pv  # scores NULL: the pattern is given, z = p v
        self.softmax_pv.argtypes = [ptr, ptr, ptr, ptr, i64, i32, i32, i32]
        for f in (self.scores, self.softmax_pv):
            f.restype = i32
        t_max, d_max = ctypes.c_int(), ctypes.c_int()
        lib.causal_attention_limits(ctypes.byref(t_max), ctypes.byref(d_max))
        self.t_max, self.d_max = t_max.value, d_max.value
        self.layer_norm_forward = lib.layer_norm_forward
        self.layer_norm_forward.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i32, f32]
        self.layer_norm_forward.restype = i32
        self.layer_norm_backward = lib.layer_norm_backward
        self.layer_norm_backward.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i32]
        self.layer_norm_backward.restype = i32
        width = ctypes.c_int()
        lib.layer_norm_limits(ctypes.byref(width))
        self.layer_norm_max_width = width.value
        self.gelu_forward = lib.gelu_forward
        self.gelu_forward.argtypes = [ptr, ptr, ptr, i64]
        self.gelu_forward.restype = None
        self.gelu_backward = lib.gelu_backward
        self.gelu_backward.argtypes = [ptr, ptr, ptr, i64]
        self.gelu_backward.restype = None
        self.row_entropy = lib.row_entropy
        self.row_entropy.argtypes = [ptr, ptr, i64, i32]
        self.row_entropy.restype = None


def row_entropy(p: torch.Tensor) -> torch.Tensor:
    """``-sum(p log p)`` over the last dimension: p ``[..., n]`` -> ``[...]`` (``0 log 0 = 0``). The C kernel
    (one pass; ``entropy.c``) for float32 on a CPU where built, else the torch form
    (:func:`row_entropy_reference`)."""
    lib = kernels()
    if lib is None or p.device.type != "cpu" or p.dtype != torch.float32:
        return row_entropy_reference(p)
    p = p.contiguous()
    out = p.new_empty(p.shape[:-1])
    lib.row_entropy(p.data_ptr(), out.data_ptr(), out.numel(), p.shape[-1])
    return out


def row_entropy_reference(p: torch.Tensor) -> torch.Tensor:
    """The torch form of :func:`row_entropy` (probabilities below 1e-30 count as 1e-30: their terms are
    below 7e-29)."""
    return -p.clamp(min=1e-30).log_().mul_(p).sum(-1)


REFERENCE_FINGERPRINT = "dab46491264dfed9f563edb43d337f5c2f32db7556d6e9ce9554de66fe4972c4"
"""What :func:`fingerprint` gives for these sources: the same from GCC 12.2 at -O0, -O2 and -O3 for x86-64,
x86-64-v3 and -march=native (AVX-512) and from Zig 0.17.1's clang (2026-11-26); ``-ffp-contract=fast`` or
``-ffast-math`` give others. A change that alters a kernel's bits must re-record it (and say so: every run's
numbers change)."""


def fingerprint(lib: Kernels) -> str:
    """sha256 (hex) of every entry point's outputs on fixed inputs: attention forward (both pattern layouts),
    backward, the split scores and softmax + ``p v``, layer norm both ways, GELU both ways and the entropy,
    over shapes that cover the kernels' tails (T = 1..128 across chunk edges, D = 8..32, widths up to 4096).
    The inputs are multiples of 2^-18 drawn by numpy's PCG64, exact in float32 and the same everywhere
    (torch's normal sampler is vectorised differently per CPU). The kernels fix their rounding in their
    source, so every machine and compiler should give :data:`REFERENCE_FINGERPRINT`;
    ``tests/test_native_attention.py`` holds this tree to it, and ``benchmarks/kernel_ab.py`` compares two
    commits' kernels with it."""
    import numpy as np

    rng = np.random.default_rng(0)
    h = hashlib.sha256()

    def draw(*shape: int, scale: float = 1.0) -> torch.Tensor:  # uniform on [-4, 4) x scale, exact
        ints = rng.integers(-2 ** 20, 2 ** 20, size=shape)
        return torch.from_numpy((ints * (scale / 2 ** 18)).astype(np.float32))

    def add(*tensors: torch.Tensor) -> None:
        for t in tensors:
            h.update(t.numpy().tobytes())

    for T, D in ((1, 8), (7, 16), (8, 24), (9, 32), (17, 8), (31, 8), (33, 16), (100, 8), (128, 32)):
        NB, H = 2, 2
        TP = 8 * ((T + 7) // 8)
        qkv = draw(NB, T, 3, H, D)
        z, p, p_rows = torch.empty(NB, T, H, D), torch.empty(NB, H, T, TP), torch.empty(NB, H, T, T)
        lib.forward(qkv.data_ptr(), z.data_ptr(), p.data_ptr(), NB, T, H, D, 0.35, TP)
        dz, dqkv = draw(NB, T, H, D), torch.empty_like(qkv)
        lib.backward(qkv.data_ptr(), p.data_ptr(), dz.data_ptr(), dqkv.data_ptr(), NB, T, H, D, 0.35)
        z_rows, S, z_split = torch.empty_like(z), torch.empty(NB, H, T, T), torch.empty_like(z)
        lib.forward(qkv.data_ptr(), z_rows.data_ptr(), p_rows.data_ptr(), NB, T, H, D, 0.35, T)
        lib.scores(qkv.data_ptr(), S.data_ptr(), NB, T, H, D, 0.35)
        lib.softmax_pv(S.data_ptr(), qkv.data_ptr(), p_rows.data_ptr(), z_split.data_ptr(), NB, T, H, D)
        add(z, p, dqkv, z_rows, S, p_rows, z_split)
    for E, R, d in ((1, 1, 8), (2, 7, 64), (2, 13, 72), (1, 5, 4096)):
        x, w, b, dy = draw(E, R, d), draw(E, d), draw(E, d), draw(E, R, d)
        y, mean, rstd = torch.empty_like(x), torch.empty(E, R), torch.empty(E, R)
        lib.layer_norm_forward(x.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr(), mean.data_ptr(),
                               rstd.data_ptr(), E, R, d, 1e-5)
        dx, dw, db = torch.empty_like(x), torch.empty_like(w), torch.empty_like(w)
        lib.layer_norm_backward(x.data_ptr(), w.data_ptr(), mean.data_ptr(), rstd.data_ptr(), dy.data_ptr(),
                                dx.data_ptr(), dw.data_ptr(), db.data_ptr(), E, R, d)
        add(y, mean, rstd, dx, dw, db)
    x = draw(1021, scale=6.0)  # |x| up to 24: GELU's exp underflows past |x| ~ 18.6
    y, dydx, dx = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
    lib.gelu_forward(x.data_ptr(), y.data_ptr(), dydx.data_ptr(), x.numel())
    lib.gelu_backward(x.data_ptr(), dydx.data_ptr(), dx.data_ptr(), x.numel())
    p = (draw(37, 33, scale=0.125) + 0.5).tril()  # [0, 1), zero chunks above the diagonal
    entropy = torch.empty(37)
    lib.row_entropy(p.data_ptr(), entropy.data_ptr(), 37, 33)
    add(y, dydx, dx, entropy)
    return h.hexdigest()


def _check_fingerprint(lib: Kernels) -> str:
    """This build's :func:`fingerprint`, with a warning when it is not :data:`REFERENCE_FINGERPRINT` (a compiler
    that contracts or reassociates despite the flags, say). The result is kept beside the library, so each
    build is computed once (~20 ms)."""
    record = lib.path.with_suffix(".fingerprint")
    try:
        found = record.read_text().strip()
    except OSError:
        found = ""
    if len(found) != 64:  # none yet (or unreadable): compute it, and keep it (atomically: others may read it)
        found = fingerprint(lib)
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=record.parent, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write(found + "\n")
            os.replace(tmp, record)
        except OSError:  # a read-only cache: check again next time
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
    if found != REFERENCE_FINGERPRINT:
        warnings.warn(f"emergelab: the C kernels built here ({lib.path}) give other bits than the reference build "
                      f"(fingerprint {found[:12]}, expected {REFERENCE_FINGERPRINT[:12]}): training works, but its "
                      "numbers differ in the last bits from other machines' (docs/determinism.md). "
                      "EMERGELAB_NATIVE=0 chooses the torch forms instead.", NativeKernelsWarning, stacklevel=3)
    return found


@lru_cache(maxsize=1)
def kernels() -> Kernels | None:
    """The compiled kernels (compiling them if this machine has none cached yet), or None: ``EMERGELAB_NATIVE=0``,
    or no working compiler (then a :class:`NativeKernelsWarning` says why, once per process). Decided once
    per process."""
    if os.environ.get("EMERGELAB_NATIVE", "1") == "0":
        return None
    path, why = _build()
    if path is not None:
        try:
            lib = Kernels(path)
        except OSError as error:
            why = f"the built library could not be loaded ({error})"
        else:
            lib.fingerprint = _check_fingerprint(lib)
            return lib
    warnings.warn(f"emergelab: {why}; training runs the torch forms instead (slower, and other last bits than on a "
                  "machine with the kernels: docs/determinism.md). EMERGELAB_NATIVE=0 chooses them and silences "
                  "this.", NativeKernelsWarning, stacklevel=2)
    return None


def describe() -> str:
    """A few lines on this machine's kernels: built or not (and why), where, and whether their bits are the
    reference ones (``emergelab list`` prints it)."""
    if os.environ.get("EMERGELAB_NATIVE", "1") == "0":
        return "C kernels: off (EMERGELAB_NATIVE=0): training runs the torch forms"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NativeKernelsWarning)
        lib = kernels()
    if lib is None:
        return "C kernels: not built: " + "; ".join(str(w.message) for w in caught)
    same = "the reference bits" if lib.fingerprint == REFERENCE_FINGERPRINT else \
        f"NOT the reference {REFERENCE_FINGERPRINT[:16]}"
    return "\n".join([f"C kernels: {lib.path}",
                      f"compiler: {_compiler()[1]}",  # the one that built it: the cache key holds its path
                      f"fingerprint: {lib.fingerprint[:16]} ({same})",
                      f"attention: T <= {lib.t_max}, head dims 8..{lib.d_max} in steps of 8; layer norm widths up to "
                      f"{lib.layer_norm_max_width}"])
