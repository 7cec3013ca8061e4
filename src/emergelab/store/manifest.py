"""``manifest.jsonl``: the size and sha256 of every file the store writes into a run directory.

An append-only journal at the run's root, one line per write::

    {"p":"checkpoints/seed-000/step-00000400.safetensors","n":18624,"h":"9f2c..."} 1a2b3c4d
    {"p":"state/group-0/step-00000100","del":true} 5e6f7a8b

``p`` is the path relative to the run directory, ``n`` the size in bytes, ``h`` the sha256 of the
contents; ``del`` marks a path (and everything below it) removed by the store. The trailing word is the
first 8 hex digits of the sha256 of the JSON text, so a damaged line is recognised as such. The latest
line for a path wins.

Why a journal: a checkpoint write costs one ``O_APPEND`` write of ~150 bytes (no read-modify-write of a
growing file, no lock: worker processes training other seeds of the same run append side by side, and
Linux appends of one small ``write`` do not interleave). The append follows the atomic rename of the data
file and is not fsynced: a crash in between leaves a file without a line, which readers check by its
structure only, as they do every file of a run made before manifests existed. ``finish_run`` compacts the
journal (one line per existing file) once the resume states are gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.jsonl"
_PATH = re.compile(r'"p"\s*:\s*"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Entry:
    size: int
    sha256: str


def sha256_file(path: str | os.PathLike) -> tuple[int, str]:
    """``(size, sha256 hex)`` of a file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _line(record: dict) -> str:
    text = json.dumps(record, separators=(",", ":"))
    return f"{text} {hashlib.sha256(text.encode()).hexdigest()[:8]}\n"


@dataclass
class ManifestState:
    """What the journal says: ``entries`` (relative path -> Entry), ``uncertain`` (paths named by a
    damaged line: their latest record is unknown), ``damaged`` (1-based numbers of damaged lines)."""

    entries: dict[str, Entry]
    uncertain: set[str]
    damaged: list[int]
    exists: bool


class Manifest:
    """The journal of run directory ``root``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.path = self.root / MANIFEST
        self._cache: tuple[tuple[int, int, int], ManifestState] | None = None

    def relative(self, path: str | os.PathLike) -> str:
        return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(self.root))).as_posix()

    def _append(self, text: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def record(self, path: str | os.PathLike, size: int, sha256: str) -> None:
        self._append(_line({"p": self.relative(path), "n": size, "h": sha256}))

    def forget(self, path: str | os.PathLike) -> None:
        """Record that ``path`` (a file or a folder) was removed."""
        self._append(_line({"p": self.relative(path), "del": True}))

    def read(self) -> ManifestState:
        """The journal's current state (re-parsed only when the file changed since the last call)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return ManifestState({}, set(), [], False)
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        state = self._parse()
        self._cache = (key, state)
        return state

    def _parse(self) -> ManifestState:
        entries: dict[str, Entry] = {}
        uncertain: set[str] = set()
        damaged: list[int] = []
        raw = self.path.read_bytes()
        for number, line in enumerate(raw.split(b"\n"), 1):
            if not line:
                continue
            text = line.decode("utf-8", errors="replace")
            body, _, check = text.rpartition(" ")
            record = None
            if body and hashlib.sha256(body.encode()).hexdigest()[:8] == check:
                try:
                    record = json.loads(body)
                except ValueError:
                    record = None
            if not isinstance(record, dict) or not isinstance(record.get("p"), str):
                damaged.append(number)
                match = _PATH.search(text)
                if match:
                    uncertain.add(match.group(1))
                continue
            rel = record["p"]
            if record.get("del"):
                prefix = rel.rstrip("/") + "/"
                for key in [k for k in entries if k == rel or k.startswith(prefix)]:
                    del entries[key]
                uncertain = {k for k in uncertain if not (k == rel or k.startswith(prefix))}
            else:
                entries[rel] = Entry(int(record["n"]), str(record["h"]))
                uncertain.discard(rel)
        return ManifestState(entries, uncertain, damaged, True)

    def expected(self, path: str | os.PathLike, state: ManifestState | None = None) -> Entry | None:
        """The recorded size and sha256 of ``path`` (None: not recorded, or its record is damaged)."""
        state = state or self.read()
        rel = self.relative(path)
        return None if rel in state.uncertain else state.entries.get(rel)

    def compact(self) -> None:
        """Rewrite the journal as one line per recorded file (removed ones dropped), atomically. Only while
        no other process writes into the run (``finish_run`` holds the run lock)."""
        from .atomic import write_text

        state = self.read()
        if not state.exists:
            return
        lines = [_line({"p": rel, "n": e.size, "h": e.sha256}) for rel, e in sorted(state.entries.items())
                 if rel not in state.uncertain]
        write_text(self.path, "".join(lines))
