"""Turning a run directory's stored weights back into models (the store itself holds plain tensors)."""

from __future__ import annotations

from typing import Any

import torch

from ..config import ConfigError
from ..models import SequenceModel
from ..store import RunDir
from .config import ExperimentConfig


def load_model(run: RunDir, seed: int, step: int, device: str | torch.device = "cpu",
               config: ExperimentConfig | None = None) -> Any:
    """The single model (E = 1, in eval mode) of run seed ``seed`` at checkpoint ``step``.

    The probe's held-out batch: ``interventions.held_out_batch``. A run trained with ``train.bias_beta``
    probed with the attention bias on; ``interventions.probe_bias`` gives it (``model(x, attn_bias=...)``),
    without which a forward pass scores other numbers than the stored metrics.

    Example::

        model = load_model(RunDir("runs/demo"), seed=0, step=3000)
        _, cache = model.run_with_cache(tokens[:, :-1], names_filter=lambda n: n.endswith("hook_pattern"))
    """
    run = run if isinstance(run, RunDir) else RunDir(run)  # a path works too
    config = (config or ExperimentConfig.from_run(run)).resolved()
    if not (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0):
        raise ConfigError(f"seed={seed!r}: must be a run seed index (an integer >= 0)")
    if not run.checkpoint_steps(seed):
        raise ConfigError(f"seed={seed}: no checkpoints of it in {run.path} (seeds with checkpoints: "
                          f"{', '.join(map(str, run.checkpoint_seeds())) or 'none'})")
    state = run.load_checkpoint(seed, step, device)
    return SequenceModel.from_member_state_dicts(config.model, [state]).eval()
