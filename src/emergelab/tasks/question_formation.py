"""Question formation (McCoy, Frank and Linzen 2020, "Does syntax need to grow on trees?"): turn an
English declarative into a yes/no question, from training data that the linear rule ("front the first
auxiliary") and the hierarchical rule ("front the main clause's auxiliary") both explain.

**Not the paper's exact distribution.** The grammar below has the paper's structure (determiners,
singular/plural nouns, do-support auxiliaries that agree with their subject, intransitive and
transitive verbs, prepositional phrases, relative clauses with who/that on subjects and objects, subject-
and object-gap relative clauses), but its word lists are ours, shorter, and its rule probabilities are
ours (uniform over the kinds listed); the paper's grammar file was not used. What is faithful is the
experimental design: which sentences appear as questions in training, and the generalization set.

Grammar (one noun-number variable per noun, ``N_k``; an auxiliary agrees with its subject's variable)::

    S       -> SUBJ AUX_main VP .
    SUBJ    -> D N0 | D N0 P D N1                                   (no relative clause)
             | D N0 R AUX(N0) VI | D N0 R AUX(N0) VT D N1           (subject-gap relative clause)
             | D N0 R D N1 AUX(N1) VT                               (object-gap relative clause)
    AUX_main agrees with N0
    VP      -> VI | VI P D N2 | VT D N2 | VT D N2 P D N3
             | VT D N2 R AUX(N2) VI | VT D N2 R D N3 AUX(N3) VT    (relative clause on the object)

A sentence draws its subject kind and VP kind uniformly among those allowed (below), each noun's number
uniformly, and each word uniformly from its list (an auxiliary: does/doesn't for a singular subject,
do/don't for a plural one). Sentences have 4 to ``W = 17`` words, the last one ``.``.

**Splits** (McCoy et al.'s design):

* training: a declarative with the ``<decl>`` marker maps to itself (every subject kind); a declarative with
  the ``<quest>`` marker maps to its question, **only for subjects without a relative clause**, where the
  first auxiliary is the main one, so both rules give the same question (a fraction ``quest_fraction`` of
  training sequences are questions);
* generalization set (:meth:`QuestionFormationTask.sample_generalization`): questions about sentences
  with a relative clause on the subject, where the first auxiliary is the relative clause's. The
  two auxiliaries are always different words (where the draw made them equal, the relative clause's
  auxiliary is negated: does <-> doesn't, do <-> don't), so the first word of the output tells which rule
  the model applied. Its target output is the hierarchical (correct) question.

Question: the moved auxiliary first, then the sentence without it, ``?`` for ``.``: "my newt who does
giggle doesn't swim ." -> hierarchical "doesn't my newt who does giggle swim ?", linear "does my newt who
giggle doesn't swim ?". A question has as many words as its declarative.

Layout (``L = 2W + 1 = 35`` tokens, ``P = 34`` positions)::

    token index   0 .. n-1         n .. W-1    W        W+1 .. W+n          W+n+1 .. 2W
    token         the sentence     PAD ...     marker   the output words    PAD ...

Tokens: ``<pad>`` 0, ``<decl>`` 1, ``<quest>`` 2, ``.`` 3, ``?`` 4, then the words (``vocab_size = 59``).
The loss covers the output region (positions ``W .. 2W-1``, predicting tokens ``W+1 .. 2W``), stop PADs
included; output ``i`` = output word ``i`` (token ``W+1+i``, predicted at position ``W+i``); output 0 is the
fronted auxiliary of a question. Every output is a function of the input: optimum 0. Output ``i`` counts
only in the sequences whose query for it holds a word (``i <= n``; output ``n`` is the stop): past that the
query holds PAD and predicts PAD (``tasks.base.PaddedAnswers``).

Ground-truth attention: none as a fixed ``[P, P]`` mask (which input word a question word copies depends
on the sentence), so the mask is empty; the probes then record only the attention entropy, over each
output's own queries (``train.measure.AttentionScores``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import require_float
from .base import Batch, MapView, PaddedAnswers, check_draw

SPECIALS = ("<pad>", "<decl>", "<quest>", ".", "?")
PAD, DECL, QUEST, DOT, QMARK = range(5)
CATEGORIES: dict[str, tuple[str, ...]] = {  # word lists (ours; the paper's are longer)
    "D": ("the", "some", "my", "your", "our", "her"),
    "N_sg": ("newt", "orangutan", "peacock", "quail", "raven", "salamander", "unicorn", "walrus", "yak", "zebra"),
    "N_pl": ("newts", "orangutans", "peacocks", "quails", "ravens", "salamanders", "unicorns", "walruses", "yaks",
             "zebras"),
    "A_sg": ("does", "doesn't"),
    "A_pl": ("do", "don't"),
    "VI": ("giggle", "smile", "sleep", "swim", "wait", "move", "read", "eat"),
    "VT": ("entertain", "amuse", "applaud", "confuse", "admire", "accept", "remember", "comfort"),
    "P": ("around", "near", "with", "upon", "by", "behind"),
    "R": ("who", "that"),
}
WORDS: tuple[str, ...] = SPECIALS + tuple(w for words in CATEGORIES.values() for w in words)
TOKEN = {w: i for i, w in enumerate(WORDS)}
AUXILIARIES = CATEGORIES["A_sg"] + CATEGORIES["A_pl"]
RELATIVIZERS = CATEGORIES["R"]
NEGATED = {"does": "doesn't", "doesn't": "does", "do": "don't", "don't": "do"}

# A template symbol: (category, noun-number variable or -1). "N"/"A" resolve to N_sg/N_pl, A_sg/A_pl.
SUBJECTS: dict[str, tuple[str, ...]] = {
    "plain": ("D", "N0"),
    "pp": ("D", "N0", "P", "D", "N1"),
    "rc-subject-gap": ("D", "N0", "R", "A0", "VI"),
    "rc-subject-gap-transitive": ("D", "N0", "R", "A0", "VT", "D", "N1"),
    "rc-object-gap": ("D", "N0", "R", "D", "N1", "A1", "VT"),
}
VPS: dict[str, tuple[str, ...]] = {
    "intransitive": ("VI",),
    "intransitive-pp": ("VI", "P", "D", "N2"),
    "transitive": ("VT", "D", "N2"),
    "transitive-pp": ("VT", "D", "N2", "P", "D", "N3"),
    "object-rc-subject-gap": ("VT", "D", "N2", "R", "A2", "VI"),
    "object-rc-object-gap": ("VT", "D", "N2", "R", "D", "N3", "A3", "VT"),
}
NO_SUBJECT_RC = ("plain", "pp")
SUBJECT_RC = ("rc-subject-gap", "rc-subject-gap-transitive", "rc-object-gap")
MAX_WORDS = max(map(len, SUBJECTS.values())) + 1 + max(map(len, VPS.values())) + 1  # 17
RULES = ("hierarchical", "linear")


def template(subject: str, vp: str) -> list[str]:
    """The symbols of sentence kind (subject, vp): ``SUBJ A0 VP .`` (the main auxiliary agrees with N0)."""
    return [*SUBJECTS[subject], "A0", *VPS[vp], "."]


@dataclass(frozen=True)
class QuestionFormationConfig:
    """quest_fraction: the fraction of training sequences that are questions (the others are
    declaratives copied under ``<decl>``)."""

    name: ClassVar[str] = "question-formation"
    quest_fraction: float = 0.5

    def __post_init__(self) -> None:
        require_float("task.quest_fraction", self.quest_fraction, 0.0, 1.0)

    def sizes(self) -> tuple[int, int]:
        """``(vocab_size, seq_len)`` without building."""
        return len(WORDS), 2 * MAX_WORDS + 1

    def build(self, generator: torch.Generator) -> "QuestionFormationTask":
        check_draw("QuestionFormationConfig.build", generator)
        return QuestionFormationTask(self, generator.device)


class QuestionFormationTask(PaddedAnswers):
    """The question-formation task (no per-run ground truth: every seed's task is the same).

    Besides the task contract it offers, for the rule evaluation (``train/measure_ood.py``, ``RuleEval``):
    ``rules`` (``("hierarchical", "linear")``), ``decision_position`` (the position predicting the first
    output word), :meth:`sample_generalization`, :meth:`apply_rule` and :meth:`auxiliary_positions`."""

    output_name = "word"
    rules = RULES

    def __init__(self, config: QuestionFormationConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.words = WORDS
        self.vocab_size = len(WORDS)
        self.width = W = MAX_WORDS
        self.seq_len = 2 * W + 1
        self.n_outputs = W
        self.pad = PAD  # past its own question a sequence's queries hold PAD: no output there (PaddedAnswers)
        self.decision_position = W
        P = self.seq_len - 1
        positions = torch.arange(P, device=device)
        self.loss_mask = positions >= W
        self.output_index = torch.where(positions >= W, positions - W, -1)
        self.attention_mask = torch.zeros(P, P, dtype=torch.bool, device=device)
        self._build_tables(device)

    # ------------------------------------------------------------------ tables
    def _build_tables(self, device: torch.device | str) -> None:
        """Every sentence kind as rows of ``[K, W]`` tensors: category code and number variable per slot."""
        self.categories = list(CATEGORIES) + ["."]
        code = {c: i for i, c in enumerate(self.categories)}
        size = max(len(w) for w in CATEGORIES.values())
        table = torch.full((len(self.categories), size), PAD, dtype=torch.int64)
        sizes = torch.ones(len(self.categories), dtype=torch.int64)
        for c, words in CATEGORIES.items():
            table[code[c], :len(words)] = torch.tensor([TOKEN[w] for w in words])
            sizes[code[c]] = len(words)
        table[code["."], 0] = DOT
        self.kinds = [(s, v) for s in SUBJECTS for v in VPS]
        K, W = len(self.kinds), self.width
        cat = torch.full((K, W), -1, dtype=torch.int64)
        var = torch.full((K, W), -1, dtype=torch.int64)
        length = torch.zeros(K, dtype=torch.int64)
        for k, (s, v) in enumerate(self.kinds):
            symbols = template(s, v)
            length[k] = len(symbols)
            for j, sym in enumerate(symbols):
                if sym[0] in "NA" and sym[1:].isdigit():
                    cat[k, j], var[k, j] = code[f"{sym[0]}_sg"], int(sym[1:])  # _pl is the next code
                else:
                    cat[k, j] = code[sym]
        self._table, self._sizes = table.to(device), sizes.to(device)
        self._cat, self._var, self._length = cat.to(device), var.to(device), length.to(device)
        negate = torch.arange(len(WORDS), dtype=torch.int64)
        for a, b in NEGATED.items():
            negate[TOKEN[a]] = TOKEN[b]
        self._negate = negate.to(device)
        is_aux = torch.zeros(len(WORDS), dtype=torch.bool)
        is_aux[[TOKEN[a] for a in AUXILIARIES]] = True
        self._is_aux = is_aux.to(device)
        is_rel = torch.zeros(len(WORDS), dtype=torch.bool)
        is_rel[[TOKEN[r] for r in RELATIVIZERS]] = True
        self._is_rel = is_rel.to(device)

    # ------------------------------------------------------------------ sentences
    def _sentences(self, u: torch.Tensor, subjects: tuple[str, ...]) -> torch.Tensor:
        """``[n, W]`` declaratives (PAD after the ``.``) from uniforms ``u [n, 6 + W]`` (float64): subject
        kind uniform in ``subjects``, VP kind uniform, four noun numbers, one word pick per slot."""
        subject_ids = torch.tensor([list(SUBJECTS).index(s) for s in subjects], device=u.device)
        s = subject_ids[_pick(u[:, 0], len(subjects))]
        v = _pick(u[:, 1], len(VPS))
        kind = s * len(VPS) + v  # [n]
        numbers = _pick(u[:, 2:6], 2)  # [n, 4] 0 singular, 1 plural
        cat, var = self._cat[kind], self._var[kind]  # [n, W]
        cat = torch.where(var >= 0, cat + numbers.gather(1, var.clamp(min=0)), cat)
        safe = cat.clamp(min=0)
        words = self._table[safe, _pick(u[:, 6:], self._sizes[safe])]
        return torch.where(cat >= 0, words, PAD)

    def auxiliary_positions(self, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(first, main)``, each ``[...]``: the position of the first auxiliary and of the main clause's
        auxiliary in declaratives ``words [..., >= W]`` (the sentence region of a sequence). In this grammar
        the subject has a relative clause exactly when its third word is who/that, and then the main
        auxiliary is the second auxiliary; otherwise it is the first."""
        aux = self._is_aux[words[..., :self.width]]
        count = aux.long().cumsum(-1)
        first = (count == 0).sum(-1)  # index of the first auxiliary
        second = (count <= 1).sum(-1)
        main = torch.where(self._is_rel[words[..., 2]], second, first)
        return first, main

    def _question(self, words: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
        """``[..., W]``: the question of declaratives ``words [..., W]`` fronting the word at ``moved [...]``."""
        W = self.width
        j = torch.arange(W, device=words.device)
        last = (words != PAD).sum(-1, keepdim=True) - 1  # position of "."
        m = moved[..., None]
        source = torch.where(j == 0, m, torch.where(j <= m, j - 1, j))
        out = words.gather(-1, source.clamp(max=W - 1))
        out = torch.where(j == last, QMARK, out)
        return torch.where(j > last, PAD, out)

    def _sequences(self, words: torch.Tensor, quest: torch.Tensor, rule: str = "hierarchical") -> torch.Tensor:
        first, main = self.auxiliary_positions(words)
        question = self._question(words, main if rule == "hierarchical" else first)
        out = torch.where(quest[:, None], question, words)
        marker = torch.where(quest, QUEST, DECL)
        return torch.cat([words, marker[:, None], out], dim=1)

    # ------------------------------------------------------------------ the contract
    def sample(self, n: int, generator: torch.Generator) -> Batch:
        """``n`` training sequences ``[n, 2W+1]``: a question (subject without a relative clause) with
        probability ``quest_fraction``, else a declarative copied (any subject). All from one ``[n, K]``
        block of uniforms, so the first ``m`` of ``n`` sequences are the ``m`` sequences of a smaller draw."""
        check_draw("QuestionFormationTask.sample", generator, n)
        k = 6 + self.width
        u = _uniforms(n, 1 + 2 * k, generator)
        quest = u[:, 0] < self.config.quest_fraction
        questions = self._sentences(u[:, 1:1 + k], NO_SUBJECT_RC)
        declaratives = self._sentences(u[:, 1 + k:], tuple(SUBJECTS))
        words = torch.where(quest[:, None], questions, declaratives)
        return Batch(tokens=self._sequences(words, quest))

    def sample_generalization(self, n: int, generator: torch.Generator) -> Batch:
        """``n`` generalization sequences: questions about sentences with a relative clause on the subject,
        the two auxiliaries different words; target output: the hierarchical question."""
        check_draw("QuestionFormationTask.sample_generalization", generator, n)
        words = self._sentences(_uniforms(n, 6 + self.width, generator), SUBJECT_RC)
        first, main = self.auxiliary_positions(words)
        same = words.gather(1, first[:, None]) == words.gather(1, main[:, None])  # [n, 1]
        negated = self._negate[words]
        at_first = torch.arange(self.width, device=words.device) == first[:, None]
        words = torch.where(same & at_first, negated, words)
        quest = torch.ones(n, dtype=torch.bool, device=words.device)
        return Batch(tokens=self._sequences(words, quest))

    def apply_rule(self, tokens: torch.Tensor, rule: str) -> torch.Tensor:
        """``tokens [..., L]`` with the ``<quest>`` marker and the output region rewritten as the question
        that ``rule`` ("hierarchical" or "linear") forms from each sequence's sentence."""
        if rule not in RULES:
            raise ValueError(f"rule {rule!r}: allowed rules are {', '.join(RULES)}")
        flat = tokens.reshape(-1, tokens.shape[-1])
        words = flat[:, :self.width]
        quest = torch.ones(flat.shape[0], dtype=torch.bool, device=flat.device)
        return self._sequences(words, quest, rule).view(tokens.shape)

    def output_labels(self) -> list[str]:
        return ["word 0 (fronted auxiliary)"] + [f"word {i}" for i in range(1, self.n_outputs)]

    def output_optima(self) -> list[float]:
        """Every output word is a function of the sentence and the marker: optimum 0."""
        return [0.0] * self.n_outputs

    def optimal_loss(self) -> float:
        return 0.0

    def describe(self) -> str:
        return (f"question formation (McCoy et al. 2020 design, our grammar), {self.config.quest_fraction:.0%} of "
                f"training sequences questions, their subjects without relative clauses")

    def decode(self, tokens: torch.Tensor) -> str:
        """One sequence ``[L]`` as text (PADs left out), e.g. for a look at the data."""
        return " ".join(WORDS[t] for t in tokens.tolist() if t != PAD)

    def map_view(self) -> MapView:
        W, P = self.width, self.seq_len - 1
        return MapView(slice(W, P), slice(0, P), f"query position {W}..{P - 1} (emits output word 0..{W - 1})",
                       f"key position 0..{P - 1}")


def _uniforms(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``[n, k]`` float64 uniforms in [0, 1)."""
    return torch.rand((n, k), generator=generator, device=generator.device, dtype=torch.float64)


def _pick(u: torch.Tensor, size: int | torch.Tensor) -> torch.Tensor:
    """Uniform indices ``0 .. size-1`` from uniforms ``u`` (``size`` broadcasts against ``u``)."""
    return torch.minimum((u * size).floor().to(torch.int64), torch.as_tensor(size, device=u.device) - 1)
