"""Stops (Ctrl-C, SIGTERM) held back while a section that must not be cut in two runs.

A tracker sends a step to W&B and then records in its ledger that it did (``train/trackers.py``). A stop
raised between the two (a Python signal handler raises wherever the main thread is, here inside
``wandb.log``) left a step that W&B held and the ledger did not, and the resumed run sent it again: a step
twice in W&B. Handlers made by :func:`deferring` raise their exception at once outside
:func:`uninterrupted` sections, and at the end of the outermost one inside.

The state is this module's: signal handlers are per process, and so is what they must know.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Any, Callable, Iterator

_held = 0  # how many uninterrupted() sections the main thread is in
_pending: list[BaseException] = []  # the stop that arrived inside one (the first only)


def deferring(stop: Callable[[], BaseException]) -> Callable[[int, Any], None]:
    """A signal handler raising ``stop()``, held back to the end of an :func:`uninterrupted` section."""

    def handler(signum: int, frame: Any) -> None:
        if _held:
            if not _pending:
                _pending.append(stop())
            return
        raise stop()

    return handler


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold back stops raised by :func:`deferring` handlers until this section ends (the stop then
    replaces whatever the section raised: a tracker's own failure must not swallow it)."""
    global _held
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if not _held and _pending:
            raise _pending.pop()


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def stops_blocked() -> Iterator[None]:
    """SIGTERM and SIGINT blocked in this thread for the section (where the platform has signal masks): a
    stop sent meanwhile waits, and arrives when the section ends. Threads started inside keep them blocked,
    so a stop reaches the main thread (a stop delivered to a helper thread left a main thread blocked in a
    long call running on); a process forked or spawned inside starts with them blocked and pending, until it
    has its own handlers (``execute._worker_main``: one sent earlier ran the handler inherited from the
    parent, a library's, and could be lost)."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def unblock_stops() -> None:
    """Undo a :func:`stops_blocked` this process started inside (``execute._worker_main``)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
