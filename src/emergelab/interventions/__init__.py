"""Interventions on models through their hook points: attention-head patching and ablation, and the
attention bias toward the ground truth (defined with the training recipe in ``train.bias``, re-exported
here for use on any model)."""

from ..train.bias import bias_schedule, ground_truth_bias
from .patching import (
    KINDS,
    WHAT,
    AblationResult,
    GreedyResult,
    PatchingResult,
    PatchTarget,
    ablate_heads,
    ablation_table,
    cache_attention,
    greedy_heads,
    hook_name,
    mean_setter,
    model_device,
    patch_heads,
    patching_table,
    run_with_head_edits,
    source_setter,
    target_metrics,
    uniform_setter,
    zero_setter,
)

__all__ = [
    "bias_schedule", "ground_truth_bias",
    "KINDS", "WHAT", "AblationResult", "GreedyResult", "PatchingResult", "PatchTarget",
    "ablate_heads", "ablation_table", "cache_attention", "greedy_heads", "hook_name", "mean_setter",
    "model_device", "patch_heads", "patching_table", "run_with_head_edits", "source_setter",
    "target_metrics", "uniform_setter", "zero_setter",
]
