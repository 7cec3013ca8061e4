"""Interventions on models through their hook points: attention-head patching and ablation, and the
attention bias toward the ground truth (defined with the training recipe in ``train.bias``, re-exported
here for use on any model); on a run's checkpoints (``checkpoints``): the probe's held-out batch, the
bias its probe used, head patching between two checkpoints."""

from ..train.bias import bias_schedule, ground_truth_bias
from .checkpoints import held_out_batch, patch_checkpoints, probe_bias, write_patching
from .patching import (
    DIRECTIONS,
    KINDS,
    WHAT,
    AblationResult,
    GreedyResult,
    PatchingResult,
    PatchTarget,
    ablate_heads,
    ablation_table,
    cache_attention,
    cache_chunked,
    check_direction,
    count_heads,
    greedy_heads,
    greedy_passes,
    hook_name,
    mean_setter,
    model_device,
    patch_heads,
    patching_table,
    progress_bar,
    run_with_head_edits,
    source_setter,
    target_metrics,
    uniform_setter,
    zero_setter,
)

__all__ = [
    "bias_schedule", "ground_truth_bias", "held_out_batch", "patch_checkpoints", "probe_bias", "write_patching",
    "DIRECTIONS", "KINDS", "WHAT", "AblationResult", "GreedyResult", "PatchingResult", "PatchTarget",
    "ablate_heads", "ablation_table", "cache_attention", "cache_chunked", "check_direction", "count_heads",
    "greedy_heads", "greedy_passes", "hook_name", "mean_setter",
    "model_device", "patch_heads", "patching_table", "progress_bar", "run_with_head_edits", "source_setter",
    "target_metrics", "uniform_setter", "zero_setter",
]
