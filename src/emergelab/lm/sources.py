"""Where checkpoints come from: the Hugging Face hub, or a local folder of revisions (tests, mirrors).

A :class:`CheckpointSource` names its revisions and copies one into a folder the caller owns::

    source.name                      "EleutherAI/pythia-160m" (recorded in the scan's config)
    source.revisions()               ["step0", "step1", ..., "step143000"]
    source.size(revision)            bytes it will take (None when unknown), checked against a disk budget
    source.fetch(revision, into)     -> folder with config.json, *.safetensors (and tokenizer.json)

``fetch`` may return a folder other than ``into`` (a checkpoint already in the Hugging Face cache); the
caller deletes ``into`` after use (``scan`` does, so a scan holds one checkpoint at a time).

* :class:`HubSource` downloads ``config.json``, ``*.safetensors`` and the tokenizer files of
  ``repo@revision`` (never pickle weights, never remote code), retrying network errors with exponential
  backoff; when the hub cannot be reached, or ``HF_HUB_OFFLINE=1`` is set and the checkpoint is not in
  the Hugging Face cache, it raises :class:`HubUnavailableError` (one line; the CLI exits 2).
* :class:`LocalSource` reads ``ROOT/<revision>/`` folders (``ROOT/step0/``, ``ROOT/step1/``, ...): the
  layout tests build with ``save_pretrained``. ``from_pretrained(local_path, revision=...)`` ignores the
  revision for a local path, hence this explicit layout.

Pythia naming (:func:`pythia_repo`, :func:`pythia_revisions`): ``EleutherAI/pythia-{size}`` is seed 0 (the
original run), ``EleutherAI/pythia-{size}-seed{k}`` seeds 1..9 (PolyPythias: 14m to 410m only); the
variants :data:`PYTHIA_VARIANTS` name the deduplicated-Pile run and the 160m runs that vary only the data
order or only the initialisation; revisions ``step0``, ``step1, 2, 4 ... 512``, then ``step1000`` to
``step143000`` every 1000 (154 in all).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import time
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

from ..config import ConfigError

# Files a checkpoint needs; pickle weights (*.bin, *.pt) are never downloaded.
ALLOW = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
         "tokenizer_config.json", "special_tokens_map.json"]
PYTHIA_SIZES = ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
# The suites on the hub (model cards of EleutherAI/pythia-*, van der Wal et al. 2025, "PolyPythias"):
# seed: pythia-{size} (seed 0, the original run) and pythia-{size}-seed{1..9} for the PolyPythias sizes;
# deduped: pythia-{size}-deduped, the original run's recipe on the deduplicated Pile (one seed);
# data-seed / weight-seed: pythia-160m-{variant}{1..3}, only the data order / only the initialisation varied.
PYTHIA_VARIANTS = ("seed", "deduped", "data-seed", "weight-seed")
POLYPYTHIA_SIZES = ("14m", "31m", "70m", "160m", "410m")
PYTHIA_CONTEXT = 2048  # max_position_embeddings of every Pythia size
# config.json keys that give a model's context (positions it was built for), in the order tried
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
_STEP = re.compile(r"step(\d+)$")
T = TypeVar("T")


class HubUnavailableError(ConfigError):
    """The hub cannot be reached (after retries), or offline mode is set and the checkpoint is not cached."""


class CheckpointSource(Protocol):
    name: str

    def revisions(self) -> list[str]: ...

    def size(self, revision: str) -> int | None: ...

    def fetch(self, revision: str, into: Path) -> Path: ...


def revision_step(revision: str) -> int:
    """``"step1000"`` -> 1000 (the step a Pythia-style revision names)."""
    match = _STEP.fullmatch(revision)
    if not match:
        raise ConfigError(f"revision {revision!r}: expected stepN (e.g. step1000)")
    return int(match.group(1))


def pythia_revisions() -> list[str]:
    """The 154 Pythia checkpoint revisions in training order: step0, step1, 2, 4 ... 512, step1000 ... 143000."""
    steps = [0] + [2 ** i for i in range(10)] + list(range(1000, 143001, 1000))
    return [f"step{s}" for s in steps]


def pythia_repo(size: str, seed: int = 0, variant: str = "seed") -> str:
    """The hub repo of one Pythia run (:data:`PYTHIA_VARIANTS`):

    * ``seed``: ``EleutherAI/pythia-{size}`` for seed 0 (the original run), ``...-seed{k}`` for seeds 1..9,
      which exist for :data:`POLYPYTHIA_SIZES` only;
    * ``deduped``: ``EleutherAI/pythia-{size}-deduped``, seed 0 only (no other seed was trained);
    * ``data-seed`` / ``weight-seed``: ``EleutherAI/pythia-160m-data-seed{k}`` / ``-weight-seed{k}``, seeds
      1..3, 160m only: runs that vary only the data order (the initialisation fixed) or only the
      initialisation (the data order fixed). The model cards do not say that the fixed half is the original
      run's, so seed 0 is not one of them: scan ``pythia-160m`` beside them as its own source if wanted.

    A combination the hub does not hold is a :class:`ConfigError` naming what exists, before any request."""
    if size not in PYTHIA_SIZES:
        raise ConfigError(f"pythia size {size!r}: allowed sizes are {', '.join(PYTHIA_SIZES)}")
    if variant not in PYTHIA_VARIANTS:
        raise ConfigError(f"pythia variant {variant!r}: allowed variants are {', '.join(PYTHIA_VARIANTS)}")
    ok = isinstance(seed, int) and not isinstance(seed, bool)
    if variant == "seed":
        if not (ok and 0 <= seed <= 9):
            raise ConfigError(f"pythia seed {seed!r}: must be 0..9 (0 is the original run)")
        if seed and size not in POLYPYTHIA_SIZES:
            raise ConfigError(f"pythia seed {seed}: pythia-{size} has seed 0 only (seeds 1..9 exist for "
                              f"{', '.join(POLYPYTHIA_SIZES)}: PolyPythias)")
        return f"EleutherAI/pythia-{size}" if seed == 0 else f"EleutherAI/pythia-{size}-seed{seed}"
    if variant == "deduped":
        if not (ok and seed == 0):
            raise ConfigError(f"pythia seed {seed!r}: the deduped variant has seed 0 only")
        return f"EleutherAI/pythia-{size}-deduped"
    if size != "160m":
        raise ConfigError(f"pythia variant {variant!r}: exists for size 160m only, not {size!r}")
    if not (ok and 1 <= seed <= 3):
        raise ConfigError(f"pythia seed {seed!r}: the {variant} variant has seeds 1..3 (seed 0, the original "
                          "pythia-160m, is not stated to share its fixed half)")
    return f"EleutherAI/pythia-160m-{variant}{seed}"


def pythia_seeds(size: str, variant: str = "seed") -> list[int]:
    """Every seed :func:`pythia_repo` names for ``size`` and ``variant`` (0..9, 0, or 1..3)."""
    seeds = []
    for seed in range(10):
        try:
            pythia_repo(size, seed, variant)
        except ConfigError:
            continue
        seeds.append(seed)
    if not seeds:
        pythia_repo(size, 1, variant)  # raises the reason (a size the variant lacks)
    return seeds


def folder_size(path: Path) -> int:
    """Bytes of every file below ``path`` (0 when it does not exist)."""
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def read_config_json(path: Path) -> dict[str, Any]:
    """``path`` (a checkpoint's ``config.json``) as a dict, or a one-line ConfigError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot be read ({getattr(error, 'strerror', None) or error})") from None
    except ValueError as error:
        raise ConfigError(f"{path}: not valid JSON ({error}); the checkpoint's config.json is damaged") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise ConfigError(f"{path}: not a transformers config.json (a JSON object with a model_type)")
    return data


def context_of(config: dict[str, Any]) -> int | None:
    """The positions a model's ``config.json`` says it was built for (None when it does not say)."""
    for key in CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_safetensors(path: Path) -> None:
    """A one-line ConfigError naming ``path`` unless its safetensors header is intact and every tensor it
    lists lies inside the file (a truncated or partly downloaded file fails here, not in the loader)."""
    damaged = f"{path}: damaged safetensors file"
    advice = "replace it (download or save the checkpoint again)"
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            text = handle.read(n) if n is not None and n <= min(size - 8, 100 * 2 ** 20) else None
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror or error})") from None
    if n is None:
        raise ConfigError(f"{damaged} ({size} bytes, shorter than its 8-byte header); {advice}")
    if text is None:
        raise ConfigError(f"{damaged} (a header of {n} bytes in a file of {size} bytes: truncated, or not "
                          f"safetensors); {advice}")
    try:
        header = json.loads(text.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict):
        raise ConfigError(f"{damaged} (its header is not a JSON object); {advice}")
    ends = [entry.get("data_offsets", [0, 0])[-1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and isinstance(entry.get("data_offsets"), list)
            and entry.get("data_offsets")]
    need = 8 + n + max([e for e in ends if isinstance(e, int)], default=0)
    if need > size:
        raise ConfigError(f"{damaged} (truncated: {size} bytes where its header needs {need}); {advice}")


def check_checkpoint(folder: Path) -> None:
    """One line naming the file unless ``folder`` holds a readable ``config.json`` and intact
    ``*.safetensors`` weights (pickle weights are never loaded). Reads headers only."""
    read_config_json(folder / "config.json")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        has = f" (it has {', '.join(pickles)})" if pickles else ""
        raise ConfigError(f"{folder}: no *.safetensors weights{has}: safetensors only, pickle weights are never "
                          "loaded; convert the checkpoint to safetensors first")
    for path in files:
        check_safetensors(path)


def source_context(source: Any) -> int | None:
    """The model context a source knows before any checkpoint is loaded (None when unknown)."""
    context = getattr(source, "context", None)
    return context() if callable(context) else None


class LocalSource:
    """Revisions as folders ``root/<revision>/`` (each a ``save_pretrained`` folder). ``fetch`` copies
    the checkpoint into ``into``, as a download would, so disk budgets and eviction behave as on the hub."""

    def __init__(self, root: str | Path, revisions: list[str] | None = None):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ConfigError(f"{self.root}: no such folder of checkpoint revisions")
        self.name = str(self.root)
        self._revisions = revisions

    def revisions(self) -> list[str]:
        if self._revisions is not None:
            return list(self._revisions)
        found = [p.name for p in self.root.iterdir() if (p / "config.json").exists()]
        return sorted(found, key=lambda r: (revision_step(r) if _STEP.fullmatch(r) else -1, r))

    def size(self, revision: str) -> int | None:
        return folder_size(self.folder(revision))

    def check(self, revisions: list[str]) -> None:
        """ConfigError (one line) for a revision that is not here; reads nothing but the folder names."""
        for revision in revisions:
            self.folder(revision)

    def context(self) -> int | None:
        """The context of the first revision's ``config.json`` (None without revisions or that key)."""
        revisions = self.revisions()
        return context_of(read_config_json(self.folder(revisions[0]) / "config.json")) if revisions else None

    def fetch(self, revision: str, into: Path) -> Path:
        source = self.folder(revision)
        check_checkpoint(source)  # damage is named in the user's folder, not in the copy
        into.mkdir(parents=True, exist_ok=True)
        for path in source.iterdir():
            if path.is_file() and not path.name.endswith((".bin", ".pt", ".pth")):
                shutil.copy2(path, into / path.name)
        return into

    def folder(self, revision: str) -> Path:
        """The user's folder of ``revision`` (ConfigError when it has no ``config.json``)."""
        folder = self.root / revision
        if not (folder / "config.json").exists():
            raise ConfigError(f"{self.root}: no revision {revision!r} (expected {folder}/config.json)")
        return folder


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def is_network_error(error: BaseException) -> bool:
    """A failure worth retrying: connection, timeout, 429/5xx; not a missing repo, revision or file."""
    from huggingface_hub import errors

    if isinstance(error, (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.EntryNotFoundError,
                          errors.GatedRepoError, errors.LocalEntryNotFoundError)):
        return False
    if isinstance(error, errors.HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        return status is None or status == 429 or status >= 500
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(isinstance(error, (ConnectionError, TimeoutError, OSError))
                or names & {"TransportError", "TimeoutException", "NetworkError", "ConnectError",
                            "RequestException", "ConnectionError"})


def with_retries(fn: Callable[[], T], what: str, *, attempts: int = 5, backoff: float = 2.0,
                 sleep: Callable[[float], None] = time.sleep,
                 retry_if: Callable[[BaseException], bool] = is_network_error) -> T:
    """``fn()``, retried on network errors with delays ``backoff * 2**i`` seconds; after ``attempts``
    failures raises :class:`HubUnavailableError` naming ``what`` and the last error (one line)."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as error:  # noqa: BLE001 - classified below
            if not retry_if(error):
                raise
            last = error
            if attempt + 1 < attempts:
                sleep(backoff * 2 ** attempt)
    reason = " ".join(str(last).split())[:200] or type(last).__name__
    raise HubUnavailableError(f"cannot reach the Hugging Face hub for {what} after {attempts} tries "
                              f"({type(last).__name__}: {reason}); check the network and re-run (the scan "
                              "resumes), or set HF_HUB_OFFLINE=1 to use cached checkpoints only")


class HubSource:
    """``repo`` on the Hugging Face hub; revisions are git branches/tags (Pythia: ``stepN``).

    ``revisions``: the list to scan (default: :func:`pythia_revisions` for an ``EleutherAI/pythia-*``
    repo; else pass it). ``use_cache``: take a checkpoint from the Hugging Face cache when it is there
    (nothing is downloaded, nothing counts against a scan's disk budget).
    """

    def __init__(self, repo: str, revisions: list[str] | None = None, *, attempts: int = 5,
                 backoff: float = 2.0, use_cache: bool = True, token: str | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        from . import require_transformers

        require_transformers()
        if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 1000:
            raise ConfigError(f"attempts={attempts!r}: tries per hub request must be an integer in [1, 1000]")
        if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not (
                math.isfinite(backoff) and 0 <= backoff <= 3600):
            raise ConfigError(f"backoff={backoff!r}: the first retry delay must be a number of seconds in [0, 3600]")
        self.name = repo
        if revisions is None and not repo.startswith("EleutherAI/pythia-"):
            raise ConfigError(f"{repo}: not a Pythia repo; give its revisions explicitly")
        self._revisions = revisions
        self.attempts, self.backoff, self.use_cache, self.token, self.sleep = attempts, backoff, use_cache, token, sleep

    def revisions(self) -> list[str]:
        return list(self._revisions) if self._revisions is not None else pythia_revisions()

    def _pythia(self) -> bool:
        return re.fullmatch(r"EleutherAI/pythia-[^/]+", self.name) is not None

    def check(self, revisions: list[str]) -> None:
        """ConfigError for a revision a Pythia repo does not have (no network; other repos: not checked)."""
        if self._pythia():
            known = set(pythia_revisions())
            for revision in revisions:
                if revision not in known:
                    raise ConfigError(f"{self.name}: no revision {revision!r}; Pythia's are step0, step1, 2, 4 "
                                      "... 512, then step1000 to step143000 every 1000")

    def context(self) -> int | None:
        return PYTHIA_CONTEXT if self._pythia() else None

    def _cached(self, revision: str) -> Path | None:
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(self.name, revision=revision, allow_patterns=ALLOW,
                                          local_files_only=True))
        except Exception:  # noqa: BLE001 - anything short of a complete cached snapshot means "not cached"
            return None
        if not ((path / "config.json").exists() and any(path.glob("*.safetensors"))):
            return None
        check_checkpoint(path)
        return path

    def size(self, revision: str) -> int | None:
        if _offline() or (self.use_cache and self._cached(revision) is not None):
            return None
        from fnmatch import fnmatch

        from huggingface_hub import HfApi

        def ask() -> Any:
            return HfApi(token=self.token).model_info(self.name, revision=revision, files_metadata=True)

        info = with_retries(ask, f"{self.name}@{revision}", attempts=self.attempts, backoff=self.backoff,
                            sleep=self.sleep)
        return sum(s.size or 0 for s in info.siblings or [] if any(fnmatch(s.rfilename, p) for p in ALLOW))

    def fetch(self, revision: str, into: Path) -> Path:
        if self.use_cache or _offline():
            cached = self._cached(revision)
            if cached is not None:
                return cached
        if _offline():
            raise HubUnavailableError(f"HF_HUB_OFFLINE=1 is set and {self.name}@{revision} is not in the Hugging "
                                      "Face cache; unset HF_HUB_OFFLINE to download it")
        from huggingface_hub import snapshot_download

        def download() -> Path:
            return Path(snapshot_download(self.name, revision=revision, local_dir=into, allow_patterns=ALLOW,
                                          token=self.token))

        folder = with_retries(download, f"{self.name}@{revision}", attempts=self.attempts,
                              backoff=self.backoff, sleep=self.sleep)
        if not any(folder.glob("*.safetensors")):
            raise ConfigError(f"{self.name}@{revision} has no safetensors weights (pickle weights are never "
                              "loaded); convert the checkpoint to safetensors first")
        check_checkpoint(folder)
        return folder


def parse_seeds(text: str) -> list[int]:
    """``"0-2,5"`` -> ``[0, 1, 2, 5]``."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected a list such as 0,1,2 or 0-9") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"--seeds {text!r}: expected distinct seeds >= 0")
    return seeds


def seed_folders(root: str | Path) -> list[int]:
    """The seeds ``k`` of ``root``'s ``seed<k>/`` folders, ascending ([] when it has none)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(int(p.name[4:]) for p in root.iterdir() if p.is_dir() and re.fullmatch(r"seed\d+", p.name))


def make_sources(*, pythia: str | None = None, repo: str | None = None, local: str | Path | None = None,
                 seeds: list[int] | None = None, revisions: list[str] | None = None, variant: str = "seed",
                 **hub: Any) -> dict[int, CheckpointSource]:
    """Suite seed -> source, from exactly one of:

    * ``pythia="14m"``: ``EleutherAI/pythia-14m`` (seed 0) and ``...-seed{k}``, or another ``variant``'s
      repos (:func:`pythia_repo`; default seeds: 0, or 1 for the 160m data-seed / weight-seed runs);
    * ``repo="org/name"``: one hub repo, seed 0 (``revisions`` needed unless it is a Pythia repo);
    * ``local=ROOT``: ``ROOT/seed{k}/<revision>/`` for each seed (default: every ``seed{k}`` folder), or
      ``ROOT/<revision>/`` for seed 0 alone.

    ``hub``: keyword arguments of :class:`HubSource` (attempts, backoff, use_cache, token)."""
    if sum(x is not None for x in (pythia, repo, local)) != 1:
        raise ConfigError("give exactly one of --pythia SIZE, --repo REPO, --local DIR")
    if variant != "seed" and pythia is None:
        raise ConfigError(f"--variant {variant}: names a Pythia suite's runs; give it with --pythia SIZE")
    if seeds is None:
        seeds = (seed_folders(local) or [0]) if local is not None else [0]
        if pythia is not None:
            seeds = pythia_seeds(pythia, variant)[:1]
    if pythia is not None:
        return {s: HubSource(pythia_repo(pythia, s, variant), revisions, **hub) for s in seeds}
    if repo is not None:
        if seeds != [0]:
            raise ConfigError("--repo names one seed's repo; use --pythia SIZE --seeds ... for a suite")
        return {0: HubSource(repo, revisions, **hub)}
    root = Path(local)  # type: ignore[arg-type]
    if all((root / f"seed{s}").is_dir() for s in seeds) and (root / f"seed{seeds[0]}").exists():
        return {s: LocalSource(root / f"seed{s}", revisions) for s in seeds}
    if seeds == [0]:
        return {0: LocalSource(root, revisions)}
    missing = [str(root / f"seed{s}") for s in seeds if not (root / f"seed{s}").is_dir()]
    raise ConfigError(f"--local {root}: no folder {missing[0]} (layout: ROOT/seed<k>/<revision>/)")
