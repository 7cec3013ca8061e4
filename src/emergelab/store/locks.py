"""Advisory file locks on run directories (released by the OS when the holding process dies).

A lock is ``flock``'s, held by the open file: a forked child would share it through its copy of the
descriptor and keep it after the parent died. So a forked child closes its copies at once
(``os.register_at_fork``): the training workers (``train/execute.py``) never hold the run's lock, and a
run killed with SIGKILL can be resumed as soon as its main process is gone."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

_held: set[IO] = set()  # the lock files this process has open (a forked child closes its copies)


def _close_in_child() -> None:
    for handle in _held:
        handle.close()  # the child's descriptor only: the parent's lock stays
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


class RunLockedError(RuntimeError):
    """Another process holds the lock: it is training this run (or this part of it) right now."""


@contextmanager
def locked(path: str | Path, wait: bool = True, what: str = "this run") -> Iterator[None]:
    """Hold an exclusive lock on ``path``; ``wait=False`` raises :class:`RunLockedError` at once when
    another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        _held.add(handle)
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise RunLockedError(f"{path.parent.parent}: another emergelab process is training {what}; "
                                     "wait for it to finish (or stop it) and re-run") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            _held.discard(handle)


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
