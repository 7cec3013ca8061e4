"""Named experiment presets: a task plus overrides. ``emergelab list`` shows them."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "demo": {
        "description": "linear map S=8, s=3, 1-layer transformer with 8 heads, 4 seeds: "
                       "per-bit stepwise learning (~1 min on 2 idle CPU cores)",
        "task": {"name": "linear-map", "state_size": 8, "sparsity": 3},
        "model": {"layers": 1, "heads": 8, "head_dim": 8, "mlp_ratio": 4},
        "train": {"steps": 3000, "batch_size": 64, "lr": 0.002, "seeds": 4, "eval_every": 25},
    },
    "linear-map-tiny": {
        "description": "linear map S=8, s=2, attention-only, 2 seeds: bits emerge one at a time (~11 s)",
        "task": {"name": "linear-map", "state_size": 8, "sparsity": 2},
        "model": {"layers": 1, "heads": 4, "head_dim": 8, "mlp_ratio": 0},
        "train": {"steps": 1500, "batch_size": 64, "lr": 0.003, "seeds": 2, "eval_every": 25},
    },
    "cellular-automata-small": {
        "description": "cellular automata S=8, T=8, k=4, W=3, fresh rule per sequence, 2 layers",
        "task": {"name": "cellular-automata", "state_size": 8, "trajectory_length": 8, "alphabet": 4},
        "model": {"layers": 2, "heads": 4, "head_dim": 16, "mlp_ratio": 4},
        "train": {"steps": 3000, "batch_size": 32, "lr": 0.001, "seeds": 2, "eval_every": 50},
    },
}


def preset_dict(name: str) -> dict[str, Any]:
    """The config dict of preset ``name`` (without its description)."""
    from .config import ConfigError

    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: allowed presets are {', '.join(PRESETS)}")
    return {k: dict(v) for k, v in PRESETS[name].items() if k != "description"}
