"""Named experiment presets: a task plus overrides. ``emergelab list`` shows them."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "demo": {
        "description": "linear map S=8, s=3, 1-layer transformer with 8 heads, 4 seeds: "
                       "per-bit stepwise learning (~40 s on 2 idle CPU cores: 2026-11-28)",
        "task": {"name": "linear-map", "state_size": 8, "sparsity": 3},
        "model": {"layers": 1, "heads": 8, "head_dim": 8, "mlp_ratio": 4},
        "train": {"steps": 3000, "batch_size": 64, "lr": 0.002, "seeds": 4, "eval_every": 25},
    },
    "linear-map-tiny": {
        "description": "linear map S=8, s=2, attention-only, 2 seeds: bits emerge one at a time (~5 s on 2 idle CPU cores, figures included: 2026-11-28)",
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
    # the language-model mini-suite (tasks/repetition.py): 3 sizes x 8 seeds, as `reproduce lm-emergence
    # --scale cpu` trains them
    **{f"lm-mini-{size}": {
        "description": f"LM mini-suite, size {size}: 2-layer GPT-style transformer (d_model {16 * heads}) on "
                       "the repetition corpus (V=32, L=48, span 16, uniform background), 8 seeds, 3000 steps",
        "task": {"name": "repetition", "vocab": 32, "seq_len": 48, "span": 16, "zipf": 0.0},
        "model": {"layers": 2, "heads": heads, "head_dim": 16, "mlp_ratio": 4},
        "train": {"steps": 3000, "batch_size": 64, "lr": 0.003, "seeds": 8, "eval_every": 50,
                  "eval_batch_size": 64, "checkpoints": 24, "attention_snapshots": 8},
    } for size, heads in (("s", 1), ("m", 2), ("l", 4))},
}


def preset_dict(name: str) -> dict[str, Any]:
    """The config dict of preset ``name`` (without its description)."""
    from .config import ConfigError

    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: allowed presets are {', '.join(PRESETS)}")
    return {k: dict(v) for k, v in PRESETS[name].items() if k != "description"}
