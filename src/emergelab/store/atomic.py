"""Atomic writes: write to a temporary file beside the target, fsync, then rename over it.

A reader never sees a half-written file: it sees the old complete file or the new complete one.
Given a run's ``manifest`` (``store.manifest``), a writer records the new file's size and sha256 there
after the rename.
The file gets the permissions of a plain ``open()``: ``0o666`` less the user's umask (``mkstemp``
alone would leave it ``0o600``).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file

from .manifest import sha256_file

if TYPE_CHECKING:
    from .manifest import Manifest


def _umask() -> int:
    """The process's umask (reading it means setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], manifest: "Manifest | None" = None) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` to ``path`` (same directory, so atomic); record the
    file in ``manifest`` if given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        recorded = sha256_file(tmp) if manifest is not None else None
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    if recorded is not None:
        manifest.record(path, *recorded)
    return path


def write_text(path: str | os.PathLike, text: str, manifest: "Manifest | None" = None) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    return atomic_write(path, write, manifest)


def write_parquet(path: str | os.PathLike, table: pa.Table, manifest: "Manifest | None" = None) -> Path:
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp), manifest)


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None, manifest: "Manifest | None" = None) -> Path:
    """Save CPU-contiguous copies of ``tensors`` (safetensors needs both) atomically; the same tensors and
    metadata give the same bytes (:func:`sort_safetensors_metadata`)."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}

    def write(tmp: str) -> None:
        save_file(cpu, tmp, metadata=metadata)
        sort_safetensors_metadata(tmp)

    return atomic_write(path, write, manifest)


def sort_safetensors_metadata(path: str | os.PathLike) -> None:
    """Rewrite a safetensors file's header in place with its ``__metadata__`` keys sorted.

    safetensors writes the metadata from a Rust ``HashMap``, whose order is random per map, so two saves of
    the same tensors and metadata could differ in their header bytes (and so in their checksums). The
    header is the file's first ``8 + n`` bytes (``n`` little-endian, then JSON padded with spaces to ``n``);
    the reordered JSON is exactly as long, so the tensors' data offsets do not move."""
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        if len(header.get("__metadata__") or {}) < 2:
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > n:  # cannot happen for safetensors' compact JSON; leave such a file as it is
            return
        f.seek(8)
        f.write(text + b" " * (n - len(text)))
