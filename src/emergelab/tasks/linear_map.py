"""Task 1: the sparse linear map over GF(2) ("parity"), ``x1 = A @ x0 mod 2``.

A is ``S x S`` binary with exactly ``s`` ones per row at uniformly random columns (diagonal allowed),
drawn once per run. A sequence is ``x0 x1`` flattened (``L = 2S`` tokens, no BOS, no separators).

Rows drawn independently can be equal (probability ``1 - prod_{k<S} (1 - k / C(S, s))``: 0.41 at S = 8,
s = 3, the demo preset; 0.19 at S = 16, s = 3). Then ``x1[i] = x1[j]`` for the later row ``i``: bit ``i``
is a copy of an earlier output, which attention learns in a few hundred steps whatever ``s`` is
(docs/results.md, "sparsity at the paper's scale"), and its ground-truth keys (``x0``) are not the ones a
copying head reads. ``rows = "distinct"`` redraws a row until it differs from every earlier one. Subtler
shortcuts remain (a row that is the XOR of two earlier rows: a 2-sparse parity of earlier outputs):
:func:`shortcut_fan_in` lists each bit's.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import require, require_choice, require_int
from .base import Batch, MapView, check_draw


@dataclass(frozen=True)
class LinearMapConfig:
    """state_size: S bits per state. sparsity: s ones per row of A (hardest near S/2). rows: independent
    (each row of A drawn on its own, as the paper does: two rows can be equal, which makes the later bit a
    copy of an earlier output; module doc) or distinct (a row equal to an earlier one is drawn again;
    needs C(S, s) >= S)."""

    name: ClassVar[str] = "linear-map"
    state_size: int = 8
    sparsity: int = 2
    rows: str = "independent"

    def __post_init__(self) -> None:
        require_int("task.state_size", self.state_size, 1, 4096)
        ok = isinstance(self.sparsity, int) and not isinstance(self.sparsity, bool)
        require(ok and 1 <= self.sparsity <= self.state_size, "task.sparsity",
                self.sparsity, f"must be an integer in [1, task.state_size={self.state_size}]")
        require_choice("task.rows", self.rows, ROWS)
        if self.rows == "distinct":
            require(math.comb(self.state_size, self.sparsity) >= self.state_size, "task.rows", self.rows,
                    f"needs at least S = {self.state_size} different rows, and S = {self.state_size}, "
                    f"s = {self.sparsity} has C(S, s) = {math.comb(self.state_size, self.sparsity)}: "
                    "use rows=independent or another sparsity")

    def sizes(self) -> tuple[int, int]:
        """``(vocab_size, seq_len)`` of the task this config builds, without building it."""
        return 2, 2 * self.state_size

    def build(self, generator: torch.Generator) -> "LinearMapTask":
        check_draw("LinearMapConfig.build", generator)
        return LinearMapTask(self, draw_sparse_matrix(self.state_size, self.sparsity, generator,
                                                      distinct=self.rows == "distinct"))


ROWS = ("independent", "distinct")
FAN_IN_BUDGET = 50_000  # combinations of earlier rows LinearMapTask.output_fan_in searches (~50 ms)


def shortcut_fan_in(matrix: torch.Tensor, max_outputs: int = 2) -> list[tuple[int, tuple[int, ...]]]:
    """Per bit ``i`` of ``x1``, the fewest tokens it is the XOR of, using at most ``max_outputs`` earlier
    outputs ``x1[j]`` (``j < i``, which a sequence shows before ``x1[i]``) and whichever ``x0`` bits remain:
    ``min |T| + |A_i xor (xor_{t in T} A_t)|`` over ``T`` of at most ``max_outputs`` earlier rows, with
    that ``T``; ``T = ()`` gives ``s``. A bit with a fan-in below ``s`` has a shortcut: 1 is a copy of an
    earlier output (equal rows), 2 the XOR of two earlier outputs, or of one and an ``x0`` bit, and so on.
    Shortcuts that save most are the ones that matter: at S = 16, s = 6 most matrices have several bits at
    fan-in 5 (an earlier row sharing 4 columns), while copies (1) and 2-sparse XORs are learned at once.
    On ties the smallest ``T`` (then the first) wins, so at s = 2 a row that is the XOR of two earlier
    rows reads ``(2, ())``.

    matrix ``[S, S]`` of 0 and 1 (any dtype), max_outputs >= 0 -> ``[(fan_in, T)]`` per row."""
    if not isinstance(matrix, torch.Tensor) or matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"shortcut_fan_in: matrix must be a square [S, S] tensor (task.matrix), got "
                         f"{type(matrix).__name__} {tuple(getattr(matrix, 'shape', ()))}")
    if not bool(((matrix == 0) | (matrix == 1)).all()):
        raise ValueError("shortcut_fan_in: matrix entries must be 0 or 1")
    if isinstance(max_outputs, bool) or not isinstance(max_outputs, int) or max_outputs < 0:
        raise ValueError(f"shortcut_fan_in: max_outputs must be an integer >= 0, got {max_outputs!r}")
    rows = [int("".join(map(str, r)), 2) if r else 0 for r in matrix.to(torch.int64).tolist()]
    first: dict[int, int] = {}  # row -> its first index: a copy's answer without a search
    result = []
    for i, row in enumerate(rows):
        if max_outputs >= 1 and row in first:  # fan-in 1 with the first equal row: what the search finds
            result.append((1, (first[row],)))
            continue
        first.setdefault(row, i)
        best = (row.bit_count(), ())
        for k in range(1, max_outputs + 1):
            for earlier in itertools.combinations(range(i), k):
                rest = row
                for t in earlier:
                    rest ^= rows[t]
                if rest.bit_count() + k < best[0]:
                    best = (rest.bit_count() + k, earlier)
        result.append(best)
    return result


def draw_sparse_matrix(state_size: int, sparsity: int, generator: torch.Generator,
                       distinct: bool = False) -> torch.Tensor:
    """``[S, S]`` int64 0/1 matrix with exactly ``sparsity`` ones per row at uniform random columns.
    ``distinct``: then, row by row, a row equal to an earlier one is drawn again from the same generator
    (uniform over the s-subsets not yet used; the first draw is the independent matrix's)."""
    scores = torch.rand(state_size, state_size, generator=generator, device=generator.device)
    columns = scores.argsort(dim=1)[:, :sparsity]  # a uniform random s-subset per row
    matrix = torch.zeros(state_size, state_size, dtype=torch.int64, device=generator.device)
    matrix.scatter_(1, columns, 1)
    if distinct:
        rows = matrix.cpu().numpy()  # read once (on a GPU a read per row would wait for the device each time)
        seen: set[bytes] = set()
        for i in range(state_size):
            while rows[i].tobytes() in seen:
                redraw = torch.rand(state_size, generator=generator, device=generator.device).argsort()[:sparsity]
                rows[i] = 0
                rows[i, redraw.cpu().numpy()] = 1
            seen.add(rows[i].tobytes())
        matrix = torch.from_numpy(rows).to(generator.device)
    return matrix


class LinearMapTask:
    """The linear-map task for one matrix A (``[S, S]`` int64, on the generator's device)."""

    output_name = "bit"

    def __init__(self, config: LinearMapConfig, matrix: torch.Tensor):
        self.config = config
        self.matrix = matrix
        self.state_size = S = config.state_size
        self.vocab_size = 2
        self.seq_len = 2 * S
        self.n_outputs = S
        device = matrix.device
        positions = torch.arange(self.seq_len - 1, device=device)
        self.loss_mask = torch.ones(self.seq_len - 1, dtype=torch.bool, device=device)
        # Position p predicts token p+1; tokens S.. are x1, so p = S+i-1 predicts x1[i].
        self.output_index = torch.where(positions >= S - 1, positions - (S - 1), -1)
        mask = torch.zeros(self.seq_len - 1, self.seq_len - 1, dtype=torch.bool, device=device)
        mask[S - 1:, :S] = matrix.bool()
        self.attention_mask = mask

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        """``n`` sequences ``[n, 2S]``: x0 uniform, x1 = A x0 mod 2."""
        check_draw("LinearMapTask.sample", generator, n)
        x0 = torch.randint(0, 2, (n, self.state_size), generator=generator, device=generator.device)
        # Float matmul is exact here (sums of at most S ones) and, unlike int64, runs on CUDA.
        x1 = (x0.to(torch.float32) @ self.matrix.T.to(torch.float32)).to(torch.int64) % 2
        return Batch(tokens=torch.cat([x0, x1], dim=1))

    def output_labels(self) -> list[str]:
        return [f"bit {i}" for i in range(self.n_outputs)]

    def output_fan_in(self) -> list[int]:
        """Per bit, :func:`shortcut_fan_in`'s fan-in: ``s``, 1 for a copy of an earlier output, 2 for the XOR
        of two, ... Through at most two earlier outputs while that search stays under ``FAN_IN_BUDGET``
        combinations (S <= 68), one (S <= 316), else copies alone (a training run records it at step 0:
        it must not cost seconds a seed)."""
        S = self.state_size
        depth = 2 if math.comb(S, 3) <= FAN_IN_BUDGET else 1 if math.comb(S, 2) <= FAN_IN_BUDGET else 0
        if depth:
            return [fan for fan, _ in shortcut_fan_in(self.matrix, depth)]
        seen: set[bytes] = set()  # copies alone: an equal earlier row, found by hashing
        fan_in = []
        for row in self.matrix.to(torch.uint8).cpu().numpy():
            fan_in.append(1 if row.tobytes() in seen else self.config.sparsity)
            seen.add(row.tobytes())
        return fan_in

    def output_optima(self) -> list[float]:
        """Every bit of x1 is determined by x0: optimum 0."""
        return [0.0] * self.n_outputs

    def describe(self) -> str:
        rows = ", distinct rows" if self.config.rows == "distinct" else ""
        return f"linear map S={self.state_size} s={self.config.sparsity}{rows}"

    def map_view(self) -> MapView:
        """The queries ``S-1 .. 2S-2`` (predicting ``x1[0..S-1]``) against the keys ``0 .. S-1`` (``x0``)."""
        S = self.state_size
        return MapView(slice(S - 1, 2 * S - 1), slice(0, S),
                       f"query position {S - 1}..{2 * S - 2} (predicts x1[0..{S - 1}])",
                       f"key position 0..{S - 1} (x0)")

    def optimal_loss(self) -> float:
        """Mean loss of the Bayes predictor over the 2S-1 positions: ``(S-1)/(2S-1) * ln 2``."""
        S = self.state_size
        return (S - 1) / (2 * S - 1) * math.log(2)
