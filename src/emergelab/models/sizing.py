"""Sizing models to a parameter budget, so architectures are compared at equal size."""

from __future__ import annotations

from typing import Any

from ..config import ConfigError


def match_params(config_class: type, target_params: int, vocab_size: int, context_length: int,
                 max_d_model: int = 1 << 14, **fields: Any) -> Any:
    """The resolved config of ``config_class`` (other fields from ``fields``) whose ``d_model`` gives the
    ``n_params()`` closest to ``target_params`` (ties: the smaller model). d_model values the config
    rejects (e.g. not divisible by ``heads``) are skipped.

    Example::

        cfg = match_params(MambaConfig, 100_000, vocab_size=2, context_length=64, layers=2)
        abs(cfg.n_params() - 100_000)   # as small as any d_model makes it
    """
    best, best_gap = None, None
    for d in range(1, max_d_model + 1):
        try:
            config = config_class(**fields, d_model=d).resolved(vocab_size, context_length)
        except ConfigError:
            continue
        n = config.n_params()
        if best_gap is None or abs(n - target_params) < best_gap:
            best, best_gap = config, abs(n - target_params)
        if n >= target_params:  # n_params grows with d_model: every larger d_model is farther
            break
    if best is None:
        raise ConfigError(f"model.d_model: no value in [1, {max_d_model}] is valid for {config_class.__name__} "
                          f"with {fields}")
    return best
