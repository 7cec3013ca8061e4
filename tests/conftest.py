"""Shared test setup: torch runs at one thread so timings and results do not depend on the host."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def cpu_generator():
    """Factory: ``cpu_generator(seed)`` is a fresh CPU ``torch.Generator`` seeded with ``seed``."""

    def make(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(int(seed))

    return make
