"""Damaged files: recognised when read, reported in one line, checked in bulk (``emergelab check``).

Every reader of the store goes through :func:`read_verified` and a parser here: a file recorded in the
run's ``manifest.jsonl`` must have the recorded size and sha256, and every file must parse (YAML / JSON;
a safetensors header that matches the file's length; a Parquet footer with the metrics schema). Anything
else raises :class:`CorruptFileError`, whose message is one line: which file, what is wrong, what to do.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from .manifest import MANIFEST, Manifest, ManifestState, sha256_file

# What to do about a damaged file, by its name (relative to the run directory).
ADVICE = {
    "config.yaml": "it cannot be rebuilt: restore it from a backup, or train again in a new directory",
    "task.json": "re-run the run's `emergelab run` command (same config and --out) to rebuild it",
    "summary.json": "re-run the run's `emergelab run` command (same config and --out) to rebuild it",
    "metrics.parquet": "a finished run's metrics cannot be rebuilt (its resume states are gone): restore it "
                       "from a backup, or delete the run directory and train again",
    "checkpoints": "a checkpoint cannot be rebuilt without training again: restore it from a backup",
    "attention": "an attention snapshot cannot be rebuilt without training again: restore it from a backup",
    "state": "re-run `emergelab run`: it resumes from the previous intact resume state",
    "state/plan.json": "re-run `emergelab run`: without it the resume states cannot be used, and the run trains "
                       "from the start",
}


def advice_for(rel: str) -> str:
    return ADVICE.get(rel) or ADVICE.get(rel.split("/", 1)[0], "restore it from a backup")


class CorruptFileError(RuntimeError):
    """A file of a run directory is damaged or missing. ``str(error)`` is one line: the file, the damage,
    what to do. The CLI prints it and exits with code 2."""

    def __init__(self, path: str | Path, problem: str, advice: str = ""):
        self.path, self.problem, self.advice = Path(path), problem, advice
        super().__init__(f"{path}: {problem}" + (f"; {advice}" if advice else ""))


class CorruptFileWarning(UserWarning):
    """A damaged file that was skipped or worked around (a run left out of a query, a resume state
    passed over)."""


def warn(message: str) -> None:
    warnings.warn(message, CorruptFileWarning, stacklevel=3)


def _one_line_warning(original: Callable) -> Callable:
    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if isinstance(category, type) and (issubclass(category, CorruptFileWarning)
                                           or getattr(category, "one_line", False)):
            import sys

            stream = file or sys.stderr
            # on a terminal, clear the line first: a progress bar may be drawn there (it redraws below)
            clear = "\r\x1b[K" if getattr(stream, "isatty", lambda: False)() else ""
            stream.write(f"{clear}emergelab: warning: {message}\n")  # one write: workers' lines do not interleave
            stream.flush()
            return
        original(message, category, filename, lineno, file, line)

    show._emergelab = True  # type: ignore[attr-defined]
    return show


def install_warning_format() -> None:
    """Print :class:`CorruptFileWarning` s (and warnings whose category sets ``one_line = True``) as one line
    (``emergelab: warning: ...``), in this process."""
    if not getattr(warnings.showwarning, "_emergelab", False):
        warnings.showwarning = _one_line_warning(warnings.showwarning)


install_warning_format()  # also in spawned worker processes, which import the store


# ---------------------------------------------------------------------------------------------- reading
def _run_root(path: Path) -> Path:
    """The run directory holding ``path`` (the nearest parent with a manifest or a config.yaml)."""
    for parent in path.parents:
        if (parent / MANIFEST).exists() or (parent / "config.yaml").exists():
            return parent
    return path.parent


def read_verified(path: str | Path, root: str | Path | None = None, state: ManifestState | None = None,
                  missing_ok: bool = False) -> bytes | None:
    """The bytes of ``path``, checked against run ``root``'s manifest (found from ``path`` if None).

    A missing file raises :class:`CorruptFileError` when the manifest records it, else
    ``FileNotFoundError`` (None with ``missing_ok``)."""
    path = Path(path)
    manifest = Manifest(root if root is not None else _run_root(path))
    entry = manifest.expected(path, state)
    rel = manifest.relative(path)
    if not path.exists():
        if entry is not None:
            raise CorruptFileError(path, f"missing (the run's {MANIFEST} records it)", advice_for(rel))
        if missing_ok:
            return None
        raise FileNotFoundError(f"{path}: no such file")
    data = path.read_bytes()
    if entry is not None:
        if len(data) != entry.size:
            raise CorruptFileError(path, f"damaged: {len(data)} bytes where {MANIFEST} records {entry.size}"
                                         f"{' (truncated)' if len(data) < entry.size else ''}", advice_for(rel))
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise CorruptFileError(path, f"damaged: its sha256 differs from the one {MANIFEST} records",
                                   advice_for(rel))
    return data


def size_mismatch(path: Path, manifest: Manifest, state: ManifestState | None = None) -> tuple[int | None, int] | None:
    """The cheap half of :func:`read_verified`, a stat and no read: ``(size found, None if missing; size
    recorded)`` where ``path`` is not the size ``manifest`` records, else None (as recorded, or unrecorded)."""
    entry = manifest.expected(path, state)
    if entry is None:
        return None
    try:
        size: int | None = path.stat().st_size
    except OSError:
        size = None
    return None if size == entry.size else (size, entry.size)


def content_mismatch(path: Path, manifest: Manifest, state: ManifestState | None = None) -> bool:
    """Whether ``path`` is not what ``manifest`` records: missing, another size, or (a full read) another
    sha256. False where unrecorded. :func:`read_verified` without keeping the bytes."""
    if size_mismatch(path, manifest, state) is not None:
        return True
    entry = manifest.expected(path, state)
    return entry is not None and sha256_file(path)[1] != entry.sha256


def _damaged(path: Path, what: str, error: BaseException) -> CorruptFileError:
    detail = " ".join(str(error).split())[:160]
    rel = Manifest(_run_root(path)).relative(path)
    return CorruptFileError(path, f"damaged: not a valid {what} ({type(error).__name__}: {detail})",
                            advice_for(rel))


def parse_yaml_mapping(path: Path, data: bytes) -> dict[str, Any]:
    try:
        value = yaml.safe_load(data.decode("utf-8"))
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {type(value).__name__}")
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as error:
        raise _damaged(path, "YAML mapping", error) from None
    return value


def parse_json(path: Path, data: bytes, kind: type = dict) -> Any:
    try:
        value = json.loads(data.decode("utf-8"))
        if not isinstance(value, kind):
            raise ValueError(f"expected a JSON {kind.__name__}, got {type(value).__name__}")
    except (ValueError, UnicodeDecodeError) as error:
        raise _damaged(path, "JSON file", error) from None
    return value


def parse_summary(path: Path, data: bytes) -> dict[str, Any]:
    """A training run's summary.json (an LM scan writes another kind, read as plain JSON): ``task`` (str),
    ``steps`` (int), ``seeds`` ({seed: {"final_loss": number or None, "learned_step": {output: step or None},
    ...}}), what ``emergelab run`` prints; anything else is damaged."""
    value = parse_json(path, data)

    def number_or_none(x: Any) -> bool:
        return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))

    try:
        if not isinstance(value.get("task"), str) or not isinstance(value.get("steps"), int):
            raise ValueError("task or steps missing")
        if not number_or_none(value.get("optimal_loss")) or not isinstance(value.get("seeds"), dict):
            raise ValueError("optimal_loss or seeds of the wrong kind")
        for seed, info in value["seeds"].items():
            if not (isinstance(info, dict) and number_or_none(info.get("final_loss"))
                    and number_or_none(info.get("fresh_loss"))
                    and isinstance(info.get("learned_step"), dict)
                    and all(number_or_none(step) for step in info["learned_step"].values())):
                raise ValueError(f"seed {seed}: not a final_loss and learned_step")
    except ValueError as error:
        raise _damaged(path, "run summary", error) from None
    return value


def parse_parquet(path: Path, data: bytes, schema: pa.Schema | None = None, footer_only: bool = False) -> pa.Table | None:
    """The table in ``data`` (a Parquet file) with ``schema``; ``footer_only``: check the footer and the
    schema without decoding the pages (None)."""
    try:
        if footer_only:
            found = pq.ParquetFile(pa.BufferReader(data)).schema_arrow
            table = None
        else:
            table = pq.read_table(pa.BufferReader(data))
            found = table.schema
        if schema is not None:
            names = [(f.name, f.type) for f in found]
            if names != [(f.name, f.type) for f in schema]:
                raise ValueError(f"columns {[n for n, _ in names]} do not match the schema {schema.names}")
    except (pa.ArrowException, OSError, ValueError) as error:
        raise _damaged(path, "Parquet file", error) from None
    return table


def parse_safetensors(path: Path, data: bytes, device: str = "cpu") -> dict[str, Any]:
    from safetensors.torch import load

    try:
        tensors = load(data)
    except Exception as error:  # SafetensorError, or the header's JSON / UTF-8 errors
        raise _damaged(path, "safetensors file", error) from None
    return {k: v.to(device) for k, v in tensors.items()} if str(device) != "cpu" else tensors


def _parse_any(path: Path, data: bytes) -> None:
    """Structural check of one file by its kind (suffix); unknown kinds pass."""
    if path.suffix == ".safetensors":
        parse_safetensors(path, data)
    elif path.suffix == ".parquet":
        from .metrics import SCHEMA

        parse_parquet(path, data, SCHEMA if path.name == "metrics.parquet" else None)
    elif path.suffix == ".json":
        parse_json(path, data)
    elif path.suffix in (".yaml", ".yml"):
        parse_yaml_mapping(path, data)


# ---------------------------------------------------------------------------------------------- checking
@dataclass(frozen=True)
class Problem:
    """A damaged, missing or unverifiable file of a run (``path``: absolute or as given)."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


CHECKED_FOLDERS = ("checkpoints", "attention", "state")  # besides the files at the run's root
ROOT_FILES = ("config.yaml", "task.json", "metrics.parquet", "summary.json")


def find_run_dirs(path: str | Path) -> list[Path]:
    """Every run directory (finished or not) at or below ``path``: folders with a config.yaml, a manifest,
    metrics.parquet or summary.json (not searched below a run's checkpoints/, attention/, state/ ...).
    Symbolic links to folders are followed (a folder of links to runs is a collection too), each real
    folder once."""
    import os

    markers = {"config.yaml", MANIFEST, "metrics.parquet", "summary.json"}
    skip = set(CHECKED_FOLDERS) | {"figures", "analysis", "patching"}
    found = []
    seen: set[str] = set()

    def unreadable(error: OSError) -> None:  # os.walk would pass over it in silence
        if os.path.abspath(str(error.filename)) == os.path.abspath(path):
            raise error  # the folder asked for: the CLI says "PATH: Permission denied"
        warnings.warn(f"{error.filename}: {error.strerror}; left out", CorruptFileWarning, stacklevel=3)

    for folder, dirs, names in os.walk(path, followlinks=True, onerror=unreadable):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree, or a second link to the same folder
            dirs[:] = []
            continue
        seen.add(real)
        if markers & set(names):
            found.append(Path(folder))
            dirs[:] = [d for d in dirs if d not in skip]
        dirs.sort()
    return sorted(found)


def leftover_temporaries(root: str | Path) -> list[Path]:
    """The temporary files (``.NAME.XXXX.tmp``, ``store.atomic``) that training's atomic writes left in run
    directory ``root`` when the process was killed mid-write (SIGKILL, OOM): below checkpoints/, attention/
    and state/, and beside the run's own root files. Never read (the rename that would publish them did not
    happen). Other writers' temporaries (a figure, an HTML page being written now) are not listed."""
    root = Path(root)
    found = [p for folder in CHECKED_FOLDERS if (root / folder).is_dir()
             for p in (root / folder).rglob(".*.tmp") if p.is_file()]
    found += [p for name in ROOT_FILES for p in root.glob(f".{name}.*.tmp") if p.is_file()]
    return sorted(found)


def check_run(root: str | Path) -> tuple[list[Problem], list[str]]:
    """Verify every file of run directory ``root``: ``(problems, notes)``.

    Checked: the manifest's lines; every file it records (present, same size and sha256); every
    config.yaml / task.json / metrics.parquet / summary.json at the root and every file below
    checkpoints/, attention/ and state/ by its structure; resume states complete (a meta.json with its
    tensors and metrics). Figures and analysis outputs are derived and not checked."""
    root = Path(root)
    manifest = Manifest(root)
    state = manifest.read()
    problems: list[Problem] = []
    notes: list[str] = []
    if not state.exists:
        notes.append(f"{root}: no {MANIFEST} (a run made before emergelab recorded checksums, or it was "
                     "deleted): files checked by their structure only")
    for number in state.damaged:
        problems.append(Problem(manifest.path, f"line {number} is damaged: the files it records cannot be "
                                               f"verified by checksum; delete line {number} to accept them as "
                                               "they are (checked by their structure only), or restore the "
                                               "file from a backup"))
    if not (root / "config.yaml").exists() and "config.yaml" not in state.entries:
        problems.append(Problem(root / "config.yaml", f"missing; {ADVICE['config.yaml']}"))
    files = {root / name for name in ROOT_FILES if (root / name).exists()}
    for folder in CHECKED_FOLDERS:
        if (root / folder).exists():
            files |= {p for p in (root / folder).rglob("*") if p.is_file() and not p.name.startswith(".")
                      and p.suffix != ".lock"}
    if state.exists:
        known = state.entries.keys() | state.uncertain
        unrecorded = sorted(rel for rel in (str(p.relative_to(root)) for p in files) if rel not in known)
        if unrecorded:
            notes.append(f"{root}: {len(unrecorded)} file(s) not recorded in {MANIFEST} (e.g. {unrecorded[0]}): "
                         "checked by their structure only (written outside emergelab, a crash between writing and "
                         "recording, or lines lost)")
    files |= {root / rel for rel in state.entries}
    for path in sorted(files):
        try:
            data = read_verified(path, root, state)
            if data is not None:
                _parse_any(path, data)
        except CorruptFileError as error:
            problems.append(Problem(path, f"{error.problem}; {error.advice}" if error.advice else error.problem))
        except OSError as error:
            problems.append(Problem(path, f"unreadable ({error})"))
    if (root / "state").exists():
        for step in sorted((root / "state").glob("group-*/step-*")):
            if (step / "meta.json").exists():
                missing = [f for f in ("tensors.safetensors", "metrics.parquet") if not (step / f).exists()]
                if missing and not any((step / f) in {p.path for p in problems} for f in missing):
                    problems.append(Problem(step, f"incomplete resume state (no {', '.join(missing)}); "
                                                  f"{ADVICE['state']}"))
    leftovers = leftover_temporaries(root)
    if leftovers:
        notes.append(f"{root}: {len(leftovers)} leftover temporary file(s) of a write cut short (e.g. "
                     f"{leftovers[0].relative_to(root)}): never read, safe to delete; `emergelab run` removes them "
                     "when it resumes")
    if (root / "summary.json").exists() and not (root / "metrics.parquet").exists() \
            and "metrics.parquet" not in state.entries:
        problems.append(Problem(root / "metrics.parquet", f"missing from a finished run (summary.json is "
                                                          f"there); {ADVICE['metrics.parquet']}"))
    return problems, notes
