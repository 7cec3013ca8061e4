"""Capabilities as data: prompt sets whose last token is the answer, and their scores with intervals.

A :class:`PromptSet` is a task batch as everywhere in emergelab: ``tokens [n, L]``; the model reads
``tokens[:, :-1]`` and its prediction at the last position is scored against ``tokens[:, -1]``
(``loss_mask`` marks that position, so ``interventions.patching`` scores exactly it). Every prompt of a
set has the same length.

Capabilities (:data:`CAPABILITIES`, built by :func:`build_prompts`):

* ``repetition`` — in-context repetition: ``length`` random numbers (single-token words, default the
  digits " 0" .. " 9"), then the first ``repeat`` of them again; the answer is the next one of the repeat.
* ``induction`` — induction on random tokens: distinct random tokens with one pair ``A B`` early on; the
  prompt ends in ``A`` and the answer is ``B`` (``A`` occurs nowhere else).
* ``ioi`` — indirect object identification from a template, e.g. "When Mary and John went to the store,
  John gave a drink to" -> " Mary". Names, places and objects are kept only if each is one token (with its
  leading space), so every prompt of a set has the same length; ``wrong`` is the subject token, for the
  logit difference.

Tokenizer-dependent pieces take a ``tokenizers.Tokenizer`` (``Tokenizer.from_file("tokenizer.json")``;
Pythia's and the tests' word-level one alike).

Scores (:func:`score_prompts`): per prompt the probability of the correct token and whether the greedy
token is correct; per set ``target_prob`` (mean, percentile-bootstrap interval), ``solved_fraction``
(Wilson interval), ``loss`` (mean -log p) and for IOI ``logit_diff`` (correct minus subject logit).

Example::

    tok = tokenizers.Tokenizer.from_file("ckpt/tokenizer.json")
    prompts = build_prompts("repetition", tok, n=200, seed=0)
    score = score_prompts(model, prompts)
    score.target_prob, score.target_prob_ci, score.solved_fraction, score.solved_ci
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..config import ConfigError

DIGITS = tuple(f" {d}" for d in range(10))
NAMES = (" Mary", " John", " Alice", " Bob", " Tom", " Anna", " James", " Sarah", " David", " Kate")
PLACES = (" store", " park", " school", " office", " garden")
OBJECTS = (" drink", " book", " ball", " gift", " letter")
IOI_TEMPLATES = (
    "When{IO} and{S} went to the{PLACE},{S} gave a{OBJECT} to",
    "When{S} and{IO} went to the{PLACE},{S} gave a{OBJECT} to",
    "Then,{IO} and{S} had a long talk at the{PLACE}.{S} gave a{OBJECT} to",
)


@dataclass
class PromptSet:
    """``tokens [n, L]`` (the answer is ``tokens[:, -1]``), ``wrong [n]`` (a competing token, or None)."""

    capability: str
    tokens: torch.Tensor
    wrong: torch.Tensor | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def answers(self) -> torch.Tensor:
        return self.tokens[:, -1]

    @property
    def loss_mask(self) -> torch.Tensor:
        """``[L-1]`` bool: only the last position is scored (for ``interventions.patching``)."""
        mask = torch.zeros(self.tokens.shape[1] - 1, dtype=torch.bool)
        mask[-1] = True
        return mask

    def describe(self) -> str:
        knobs = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.capability} ({knobs}): {self.tokens.shape[0]} prompts of {self.tokens.shape[1] - 1} tokens"


def load_tokenizer(path: str | Path, flag: str | None = None) -> Any:
    """A ``tokenizers.Tokenizer`` from a ``tokenizer.json``; a one-line ConfigError naming the file (and
    ``flag``, the option that gave it, e.g. ``"--tokenizer"``) when it is missing or not a tokenizer."""
    from tokenizers import Tokenizer

    where = f"{flag} {path}" if flag else str(path)
    path = Path(path)
    if not path.exists():
        if flag:
            raise ConfigError(f"{where}: no such file; give a tokenizer.json")
        raise ConfigError(f"{path}: no tokenizer.json; pass one with --tokenizer (ScanConfig.tokenizer)")
    if not path.is_file():
        raise ConfigError(f"{where}: not a file; give a tokenizer.json (the tokenizers library's format)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # noqa: BLE001 - the tokenizers library raises a bare Exception
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise ConfigError(f"{where}: not a tokenizer.json (the tokenizers library's format): {reason}") from None


def unknown_token(tokenizer: Any) -> tuple[str, int] | None:
    """``(token, id)`` the tokenizer writes for a word it does not know (a word-level model's ``[UNK]``), or
    None when it has none (byte-level BPE, as Pythia's, spells out any text)."""
    token = getattr(getattr(tokenizer, "model", None), "unk_token", None)
    index = tokenizer.token_to_id(token) if isinstance(token, str) else None
    return None if index is None else (token, int(index))


def _is_unknown(tokenizer: Any, text: str) -> bool:
    unknown = unknown_token(tokenizer)
    return unknown is not None and unknown[1] in tokenizer.encode(text, add_special_tokens=False).ids


def single_token(tokenizer: Any, text: str) -> int:
    """The id of ``text`` when it is exactly one token the tokenizer knows, else ConfigError."""
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    if len(ids) != 1:
        raise ConfigError(f"{text!r} is {len(ids)} tokens for this tokenizer, not one")
    if _is_unknown(tokenizer, text):
        raise ConfigError(f"{text!r} is unknown to this tokenizer (it writes {unknown_token(tokenizer)[0]!r})")
    return ids[0]


def repetition(tokenizer: Any, n: int, *, length: int = 12, repeat: int = 6, words: Sequence[str] = DIGITS,
               seed: int = 0) -> PromptSet:
    """``length`` random words, then the first ``repeat`` again; the answer is word ``repeat``."""
    if not 1 <= repeat < length:
        raise ConfigError(f"repetition: repeat={repeat} must be in 1..length-1 (length={length})")
    ids = torch.tensor([single_token(tokenizer, w) for w in words])
    g = torch.Generator().manual_seed(int(seed))
    x = ids[torch.randint(0, len(ids), (n, length), generator=g)]  # [n, length]
    tokens = torch.cat([x, x[:, :repeat + 1]], dim=1)  # [n, length + repeat + 1]
    return PromptSet("repetition", tokens, params={"length": length, "repeat": repeat, "words": len(words)})


def induction(tokenizer: Any, n: int, *, length: int = 24, token_range: tuple[int, int] | None = None,
              seed: int = 0) -> PromptSet:
    """Distinct random tokens from ``token_range`` (default: the whole vocabulary but special tokens), one
    pair ``A B`` in the first half, ending in ``A``; the answer is ``B``."""
    lo, hi = token_range if token_range is not None else (0, tokenizer.get_vocab_size())
    special = {tokenizer.token_to_id(t) for t in _special_tokens(tokenizer)}
    pool = torch.tensor([i for i in range(lo, hi) if i not in special])
    if len(pool) < length:
        raise ConfigError(f"induction: length={length} needs that many distinct tokens; the range has {len(pool)}")
    g = torch.Generator().manual_seed(int(seed))
    body = torch.stack([pool[torch.randperm(len(pool), generator=g)[:length - 1]] for _ in range(n)])  # [n, L-1]
    where = torch.randint(1, max(2, (length - 1) // 2), (n,), generator=g)  # position of A
    rows = torch.arange(n)
    tokens = torch.cat([body[:, :-1], body[rows, where][:, None], body[rows, where + 1][:, None]], dim=1)
    return PromptSet("induction", tokens, params={"length": length, "token_range": [int(lo), int(hi)]})


def _special_tokens(tokenizer: Any) -> list[str]:
    try:
        decoder = tokenizer.get_added_tokens_decoder()
        return [t.content for t in decoder.values() if t.special]
    except AttributeError:  # older tokenizers
        return []


def ioi(tokenizer: Any, n: int, *, template: int = 0, names: Sequence[str] = NAMES,
        places: Sequence[str] = PLACES, objects: Sequence[str] = OBJECTS, seed: int = 0) -> PromptSet:
    """Prompts from ``IOI_TEMPLATES[template]`` with two distinct single-token names; the answer is the
    indirect object, ``wrong`` the subject."""
    if not 0 <= template < len(IOI_TEMPLATES):
        raise ConfigError(f"ioi: template={template} must be 0..{len(IOI_TEMPLATES) - 1}")
    keep = {kind: [w for w in words if len(tokenizer.encode(w, add_special_tokens=False).ids) == 1
                   and not _is_unknown(tokenizer, w)]
            for kind, words in (("names", names), ("places", places), ("objects", objects))}
    fixed = re.sub(r"\{\w+\}", " ", IOI_TEMPLATES[template])  # the template's own words
    unknown = [w for w in dict.fromkeys(re.findall(r"\w+|[^\w\s]", fixed)) if _is_unknown(tokenizer, w)]
    if unknown:
        raise ConfigError(f"ioi: template={template}'s words {', '.join(map(repr, unknown))} are unknown to this "
                          f"tokenizer (it writes {unknown_token(tokenizer)[0]!r}); its prompts would not read as text")
    if len(keep["names"]) < 2 or not keep["places"] or not keep["objects"]:
        raise ConfigError(f"ioi: too few single-token words for this tokenizer: {keep}")
    g = np.random.default_rng(int(seed))
    rows, wrong = [], []
    for _ in range(n):
        io, s = g.choice(len(keep["names"]), size=2, replace=False)
        io_word, s_word = keep["names"][io], keep["names"][s]
        text = IOI_TEMPLATES[template].format(IO=io_word, S=s_word, PLACE=g.choice(keep["places"]),
                                              OBJECT=g.choice(keep["objects"]))
        ids = tokenizer.encode(text + io_word, add_special_tokens=False).ids
        if ids[-1] != single_token(tokenizer, io_word):
            raise ConfigError(f"ioi: {io_word!r} does not tokenise alone at the end of {text!r}")
        rows.append(ids)
        wrong.append(single_token(tokenizer, s_word))
    if len({len(r) for r in rows}) != 1:
        raise ConfigError("ioi: prompts tokenise to different lengths; pass single-token words")
    return PromptSet("ioi", torch.tensor(rows), torch.tensor(wrong),
                     params={"template": template, "names": len(keep["names"])})


CAPABILITIES = {"repetition": repetition, "induction": induction, "ioi": ioi}
MAX_PROMPT_TOKENS = 4096  # a sane bound on a prompt's length (beyond it attention memory runs to many GB)


def _knobs(capability: str) -> dict[str, Any]:
    import inspect

    return {p.name: p.default for p in inspect.signature(CAPABILITIES[capability]).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "seed"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_knob(capability: str, name: str, value: Any, lo: int, hi: int, why: str = "") -> None:
    if not _is_int(value) or not lo <= value <= hi:
        raise ConfigError(f"--param {name}={value!r}: {capability}'s {name} must be an integer in [{lo}, {hi}]{why}")


def _words_knob(capability: str, name: str, value: Any, least: int) -> None:
    if (isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) < least
            or not all(isinstance(w, str) and w for w in value)):
        raise ConfigError(f"--param {name}={value!r}: {capability}'s {name} must be a list of at least {least} "
                          "non-empty strings, e.g. [' a', ' b']")


def prompt_tokens(capability: str, params: dict[str, Any]) -> int | None:
    """Tokens per prompt (answer included) that ``params`` give, when they fix it without a tokenizer
    (repetition, induction; None for ioi, whose length depends on the tokenizer). Assumes valid knobs."""
    knobs = {**_knobs(capability), **params}
    if capability == "repetition":
        return knobs["length"] + knobs["repeat"] + 1
    if capability == "induction":
        return knobs["length"]
    return None


def check_context(capability: str, params: dict[str, Any], tokens: int, context: int | None, where: str) -> None:
    """ConfigError when prompts of ``tokens`` tokens (the model reads all but the answer) exceed ``context``."""
    if context is not None and tokens - 1 > context:
        knobs = ", ".join(f"{k}={v}" for k, v in params.items()) or "the defaults"
        raise ConfigError(f"--param: {capability} prompts ({knobs}) are {tokens} tokens, {tokens - 1} read by the "
                          f"model, longer than its context of {context} positions ({where}); lower --param length")


def check_params(capability: str, params: dict[str, Any], context: int | None = None,
                 where: str = "config.json") -> None:
    """ConfigError (one line naming the knob and what it allows) for a capability that does not exist, a
    knob it does not have or a value it cannot take, and for prompts longer than :data:`MAX_PROMPT_TOKENS`
    or than ``context`` (the model's, when known; ``where`` says where it comes from). No tokenizer needed,
    so this runs before any download."""
    if capability not in CAPABILITIES:
        raise ConfigError(f"capability {capability!r}: allowed are {', '.join(CAPABILITIES)}")
    defaults = _knobs(capability)
    for name in params:
        if name not in defaults:
            raise ConfigError(f"{capability}: unknown knob {name!r}; knobs are {', '.join(defaults)}")
    knobs = {**defaults, **params}
    if capability == "repetition":
        _int_knob(capability, "length", knobs["length"], 2, MAX_PROMPT_TOKENS // 2)
        _int_knob(capability, "repeat", knobs["repeat"], 1, knobs["length"] - 1, f" (1..length-1, length={knobs['length']})")
        _words_knob(capability, "words", knobs["words"], 1)
    elif capability == "induction":
        _int_knob(capability, "length", knobs["length"], 4, MAX_PROMPT_TOKENS)
        span = knobs["token_range"]
        if span is not None and (isinstance(span, (str, bytes)) or not isinstance(span, Sequence) or len(span) != 2
                                 or not all(_is_int(v) for v in span) or not 0 <= span[0] < span[1]):
            raise ConfigError(f"--param token_range={span!r}: induction's token_range must be two integers "
                              "[lo, hi] with 0 <= lo < hi (token ids lo..hi-1)")
    elif capability == "ioi":
        _int_knob(capability, "template", knobs["template"], 0, len(IOI_TEMPLATES) - 1)
        for name in ("names", "places", "objects"):
            _words_knob(capability, name, knobs[name], 2 if name == "names" else 1)
    tokens = prompt_tokens(capability, params)
    if tokens is not None:
        check_context(capability, params, tokens, context, where)


@contextlib.contextmanager
def memory_errors(prompts: PromptSet, batch_size: int | None, device: Any) -> Iterator[None]:
    """Out-of-memory while running a model on ``prompts`` as one line saying what to lower."""
    import torch

    try:
        yield
    except RuntimeError as error:
        text = str(error)
        if not (isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in text
                or "not enough memory" in text or "out of memory" in text.lower()):
            raise
        n, length = prompts.tokens.shape
        raise ConfigError(f"out of memory on {device} running {n} prompts of {length - 1} tokens in batches of "
                          f"{batch_size or n}; lower --batch-size or the prompt length (--param length)") from None


def build_prompts(capability: str, tokenizer: Any, n: int = 200, seed: int = 0, **params: Any) -> PromptSet:
    """``CAPABILITIES[capability](tokenizer, n, seed=seed, **params)``; unknown names are a ConfigError."""
    check_params(capability, params)
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"n={n!r}: the number of prompts must be a positive integer")
    return CAPABILITIES[capability](tokenizer, n, seed=seed, **params)


# ------------------------------------------------------------------------------------------- scores

def wilson(successes: int, n: int, ci: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion."""
    if n == 0:
        return (0.0, 1.0)
    z = NormalDist().inv_cdf(0.5 + ci / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_mean(values: np.ndarray, ci: float = 0.95, n_boot: int = 1000, rng: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean (seeded, so repeatable)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return (float(values.mean()), float(values.mean())) if values.size else (math.nan, math.nan)
    idx = np.random.default_rng(rng).integers(0, values.size, (n_boot, values.size))
    means = values[idx].mean(axis=1)
    return (float(np.quantile(means, 0.5 - ci / 2)), float(np.quantile(means, 0.5 + ci / 2)))


@dataclass
class Score:
    """One prompt set on one model. ``prob [n]``, ``correct [n]``; means and intervals."""

    prob: np.ndarray
    correct: np.ndarray
    logit_diff: float | None
    ci: float
    target_prob: float
    target_prob_ci: tuple[float, float]
    solved_fraction: float
    solved_ci: tuple[float, float]
    loss: float

    def metrics(self) -> dict[str, float]:
        """Store rows: metric name -> value (``index = ""``)."""
        out = {"target_prob": self.target_prob, "target_prob_lo": self.target_prob_ci[0],
               "target_prob_hi": self.target_prob_ci[1], "solved_fraction": self.solved_fraction,
               "solved_fraction_lo": self.solved_ci[0], "solved_fraction_hi": self.solved_ci[1],
               "loss": self.loss}
        if self.logit_diff is not None:
            out["logit_diff"] = self.logit_diff
        return out


@torch.no_grad()
def score_prompts(model: Any, prompts: PromptSet, *, batch_size: int = 64, ci: float = 0.95,
                  n_boot: int = 1000, rng: int = 0) -> Score:
    """Run ``model(tokens[:, :-1]) -> logits [b, L-1, V]`` batch by batch and score the last position."""
    probs, correct, diffs = [], [], []
    device = next(model.parameters()).device
    for start in range(0, prompts.tokens.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        tokens = prompts.tokens[rows].to(device)
        logits = model(tokens[:, :-1])[:, -1].float()  # [b, V]
        answers = tokens[:, -1]
        logp = logits.log_softmax(-1)
        probs.append(logp.gather(1, answers[:, None])[:, 0].exp().cpu())
        correct.append((logits.argmax(-1) == answers).cpu())
        if prompts.wrong is not None:
            wrong = prompts.wrong[rows].to(device)
            diffs.append((logits.gather(1, answers[:, None]) - logits.gather(1, wrong[:, None]))[:, 0].cpu())
    p = torch.cat(probs).double().numpy()
    c = torch.cat(correct).numpy()
    return Score(prob=p, correct=c, logit_diff=float(torch.cat(diffs).mean()) if diffs else None, ci=ci,
                 target_prob=float(p.mean()), target_prob_ci=bootstrap_mean(p, ci, n_boot, rng),
                 solved_fraction=float(c.mean()), solved_ci=wilson(int(c.sum()), c.size, ci),
                 loss=float(-np.log(np.clip(p, 1e-300, None)).mean()))
