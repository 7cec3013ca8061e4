"""Training batches of a seed group from one token source (the task, or a pre-training stream), drawn a
chunk of steps at a time, and the generator states that let a resumed run draw them again bit-identically.
"""

from __future__ import annotations

from typing import Callable

import torch

Sampler = Callable[[int, torch.Generator], torch.Tensor]  # (n, generator) -> tokens [n, L]


class ChunkedStream:
    """The batches of ``E`` seeds: seed ``e`` draws with ``samplers[e]`` from ``generators[e]``.

    ``batch(i)`` is ``[E, B, L]``, the stream's ``i``-th batch (``i`` counts this stream's own steps).
    Batches are drawn ``chunk_steps`` at a time (``schedule.data_chunk_steps``: fixed by the config, never
    by the grouping), so seed ``e``'s batches are the same in any group. ``batch`` must be asked for
    ``i = 0, 1, 2 ...`` in order (as training does), starting at 0 or at a step restored by ``restore``.
    """

    def __init__(self, samplers: list[Sampler], generators: list[torch.Generator], batch_size: int,
                 chunk_steps: int):
        self.samplers, self.generators = samplers, generators
        self.batch_size, self.chunk_steps = batch_size, chunk_steps
        self._chunk: torch.Tensor | None = None  # [K, E, B, L]
        self._chunk_index = -1
        self._chunk_start_states: list[torch.Tensor] = []

    def batch(self, i: int) -> torch.Tensor:
        """``[E, B, L]``: the stream's batch of step ``i``."""
        index = i // self.chunk_steps
        if index != self._chunk_index:
            self._chunk_start_states = [g.get_state() for g in self.generators]
            n, B = self.chunk_steps, self.batch_size
            per_seed = [sample(n * B, g).view(n, B, -1) for sample, g in zip(self.samplers, self.generators)]
            self._chunk, self._chunk_index = torch.stack(per_seed, dim=1), index  # [K, E, B, L]
        assert self._chunk is not None
        return self._chunk[i % self.chunk_steps]

    def resume_states(self, i: int) -> list[torch.Tensor]:
        """Per seed, the generator state from which ``batch(i)`` onward is drawn again: the start of the
        chunk holding step ``i`` (the current state when that chunk is not drawn yet)."""
        at_boundary = i // self.chunk_steps != self._chunk_index
        return [g.get_state() for g in self.generators] if at_boundary else list(self._chunk_start_states)

    def restore(self, states: list[torch.Tensor]) -> None:
        """Set the generators to ``resume_states(i)`` of a saved run; the next ``batch(i)`` redraws its chunk."""
        for g, state in zip(self.generators, states):
            g.set_state(state.cpu())
        self._chunk, self._chunk_index = None, -1
