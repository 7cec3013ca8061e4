"""Advisory file locks on run directories (released by the OS when the holding process dies)."""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class RunLockedError(RuntimeError):
    """Another process holds the lock: it is training this run (or this part of it) right now."""


@contextmanager
def locked(path: str | Path, wait: bool = True, what: str = "this run") -> Iterator[None]:
    """Hold an exclusive lock on ``path``; ``wait=False`` raises :class:`RunLockedError` at once when
    another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise RunLockedError(f"{path.parent.parent}: another emergelab process is training {what}; "
                                 "wait for it to finish (or stop it) and re-run") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_locked(path: str | Path) -> bool:
    """Whether another process holds the lock on ``path`` now (False when the file does not exist)."""
    path = Path(path)
    try:
        handle = open(path, "r")
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
