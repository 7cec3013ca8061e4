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


@pytest.fixture
def benchmark_script():
    """Load a script of ``benchmarks/`` as a module by name (they are scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
