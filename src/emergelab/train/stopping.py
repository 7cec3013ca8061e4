"""Stops (Ctrl-C, SIGTERM) held back while a section that must not be cut in two runs.

A tracker sends a step to W&B and then records in its ledger that it did (``train/trackers.py``). A stop
raised between the two (a Python signal handler raises wherever the main thread is, here inside
``wandb.log``) left a step that W&B held and the ledger did not, and the resumed run sent it again: a step
twice in W&B. Handlers made by :func:`deferring` raise their exception at once outside
:func:`uninterrupted` sections, and at the end of the outermost one inside.

The state is this module's: signal handlers are per process, and so is what they must know.
"""

from __future__ import annotations

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
