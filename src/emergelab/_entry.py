"""The ``emergelab`` console command's first step.

Importing the command line takes a second or two (torch, pyarrow); a Ctrl-C in that time would otherwise
print the import's traceback, because ``cli.main``, which turns an interrupt into one line, is not running
yet."""

from __future__ import annotations

import sys


def entry() -> None:
    try:
        from .cli import entry as run
    except KeyboardInterrupt:
        print("emergelab: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    run()
