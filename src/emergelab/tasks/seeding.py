"""Every per-seed random stream of a run, derived from the master seed alone (devinterp style).

Run seed ``i`` gets five independent streams from ``numpy.random.SeedSequence(master, spawn_key=(i,))``:
``init`` (weights), ``task`` (the ground truth, e.g. the matrix A of the linear map), ``data``
(training batches), ``eval`` (the held-out probe batch; a length-generalization task's per-length
held-out batches derive from it too, :func:`length_eval_tokens`) and ``pretrain`` (the batches of a
pre-training stream, ``train.pretrain``). The streams are the words of one ``generate_state``, whose first
words do not depend on how many are asked for: adding ``pretrain`` as the fifth left the other four as
they were. So seed ``i`` is the same run whether it
trains alone, in an ensemble of 64, or in a worker process, and every later reader (the probe, patching,
figures) rebuilds exactly what training drew.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import Task, make_generator

STREAMS = ("init", "task", "data", "eval", "pretrain")  # new streams go at the end (module doc)


def seed_streams(master_seed: int, seed_index: int) -> dict[str, int]:
    """The seeds of run seed ``seed_index``'s streams (each fits a signed int64, as torch needs)."""
    state = np.random.SeedSequence(master_seed, spawn_key=(seed_index,)).generate_state(len(STREAMS),
                                                                                         dtype=np.uint64)
    return dict(zip(STREAMS, (int(s) >> 1 for s in state)))


def seed_task(task_config: Any, master_seed: int, seed_index: int, device: str | torch.device = "cpu") -> Task:
    """The built task of run seed ``seed_index`` (its own ground truth), drawn exactly as training drew it.

    The generator lives on ``device``: a CUDA generator draws other numbers than a CPU one, so a run
    trained on CUDA rebuilds its ground truth on CUDA."""
    return task_config.build(make_generator(seed_streams(master_seed, seed_index)["task"], device))


def shape_task(task_config: Any, master_seed: int) -> Task:
    """Run seed 0's task for what does not depend on the size of a drawn pool: its sequence length, masks,
    loss positions and held-out batches. A config with ``for_shapes()`` (the cellular automata: a pool of
    ``task.rules`` tables) is built from what that returns, so a cost estimate (``train.estimate``), which
    counts the pool from the config, refuses a pool too large for memory instead of allocating it."""
    shaped = task_config.for_shapes() if hasattr(task_config, "for_shapes") else task_config
    return seed_task(shaped, master_seed, 0)


def held_out_tokens(task: Task, master_seed: int, seed_index: int, n: int,
                    device: str | torch.device = "cpu") -> torch.Tensor:
    """``[n, L]``: the first ``n`` sequences of seed ``seed_index``'s eval stream (``n =
    train.eval_batch_size`` is exactly the probe's batch)."""
    return task.sample(n, make_generator(seed_streams(master_seed, seed_index)["eval"], device)).tokens


def length_eval_tokens(task: Task, master_seed: int, seed_index: int, length: int, n: int,
                       device: str | torch.device = "cpu") -> torch.Tensor:
    """``[n, L]``: seed ``seed_index``'s held-out sequences of exactly ``length`` (a task with
    ``sample_length``, :class:`~emergelab.tasks.base.LengthTask`). Each length draws from its own generator
    derived from the seed's eval stream alone (``SeedSequence(eval, spawn_key=(length,))``), so the batch of
    one length does not depend on which other lengths are evaluated, nor on the group, order or executor."""
    eval_seed = seed_streams(master_seed, seed_index)["eval"]
    state = np.random.SeedSequence(eval_seed, spawn_key=(int(length),)).generate_state(1, dtype=np.uint64)
    return task.sample_length(n, int(length), make_generator(int(state[0]) >> 1, device)).tokens  # type: ignore[attr-defined]


GENERALIZATION_KEY = (0, 0)  # a two-entry spawn key: never one of length_eval_tokens' one-entry keys


def generalization_tokens(task: Task, master_seed: int, seed_index: int, n: int,
                          device: str | torch.device = "cpu") -> torch.Tensor:
    """``[n, L]``: seed ``seed_index``'s generalization sequences (a task with ``sample_generalization``,
    :class:`~emergelab.tasks.base.RuleTask`), from a generator derived from the seed's eval stream alone
    (``SeedSequence(eval, spawn_key=GENERALIZATION_KEY)``)."""
    eval_seed = seed_streams(master_seed, seed_index)["eval"]
    state = np.random.SeedSequence(eval_seed, spawn_key=GENERALIZATION_KEY).generate_state(1, dtype=np.uint64)
    return task.sample_generalization(n, make_generator(int(state[0]) >> 1, device)).tokens  # type: ignore[attr-defined]


FRESH_KEY = (0, 1)  # two entries, as GENERALIZATION_KEY, and not it


def fresh_tokens(task: Task, master_seed: int, seed_index: int, n: int,
                 device: str | torch.device = "cpu") -> torch.Tensor:
    """``[n, L]``: seed ``seed_index``'s sequences from outside its pool (a task with ``sample_fresh``,
    :class:`~emergelab.tasks.base.PoolTask`), from a generator derived from the seed's eval stream alone
    (``SeedSequence(eval, spawn_key=FRESH_KEY)``): the held-out batch stays what it was without them."""
    eval_seed = seed_streams(master_seed, seed_index)["eval"]
    state = np.random.SeedSequence(eval_seed, spawn_key=FRESH_KEY).generate_state(1, dtype=np.uint64)
    return task.sample_fresh(n, make_generator(int(state[0]) >> 1, device)).tokens  # type: ignore[attr-defined]


MARGINAL_KEY = (0, 2)  # two entries, as FRESH_KEY, and not it


def marginal_tokens(task: Task, master_seed: int, seed_index: int, n: int,
                    device: str | torch.device = "cpu") -> torch.Tensor:
    """``[n, L]``: seed ``seed_index``'s sequences for measuring each output's marginal loss
    (:mod:`~emergelab.tasks.marginal`), from a generator derived from the seed's eval stream alone
    (``SeedSequence(eval, spawn_key=MARGINAL_KEY)``): nothing training or the probes draw changes."""
    eval_seed = seed_streams(master_seed, seed_index)["eval"]
    state = np.random.SeedSequence(eval_seed, spawn_key=MARGINAL_KEY).generate_state(1, dtype=np.uint64)
    return task.sample(n, make_generator(int(state[0]) >> 1, device)).tokens
