"""A scope with a given number of torch's intra-op threads.

Used where a result's bits would depend on the thread count: a product or a sum whose reduction torch or
the BLAS library splits across threads is run at one thread (docs/determinism.md), and by the trainers
to run each unit at its own thread count."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the scope with ``n`` intra-op threads (0: unchanged), restoring the setting afterwards. Nothing is
    set when nothing changes (it runs inside the training step's products)."""
    before = torch.get_num_threads()
    if not n or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
