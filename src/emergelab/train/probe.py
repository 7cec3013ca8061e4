"""The no-grad probe: measurements of every seed on a fixed held-out batch.

All reductions are batched over seeds, layers and heads; one host transfer per probe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..models import Transformer


@dataclass
class ProbeTargets:
    """What a probe compares against, for ``E`` seeds.

    tokens: ``[E, B, L]``; loss_mask: ``[P]`` bool; output_index: ``[P]`` (-1 none);
    gt_mask: ``[E, P, P]`` bool ground-truth attention.
    """

    tokens: torch.Tensor
    loss_mask: torch.Tensor
    output_index: torch.Tensor
    gt_mask: torch.Tensor
    n_outputs: int


@dataclass
class ProbeResult:
    """Per-seed measurements as numpy arrays (E = seeds, L = layers, H = heads, O = outputs)."""

    loss: np.ndarray  # [E]
    accuracy: np.ndarray  # [E]
    target_prob: np.ndarray  # [E]
    loss_pos: np.ndarray  # [E, O]
    accuracy_pos: np.ndarray  # [E, O]
    target_prob_pos: np.ndarray  # [E, O]
    attn_entropy: np.ndarray  # [E, L, H]
    attn_gt_mass: np.ndarray  # [E, L, H]
    attn_entropy_pos: np.ndarray  # [E, L, H, O]
    attn_gt_mass_pos: np.ndarray  # [E, L, H, O]
    pattern: torch.Tensor  # [E, L, H, P, P] batch-mean attention (on the model's device)


def _is_pattern(name: str) -> bool:
    return name.endswith("attn.hook_pattern")


@torch.no_grad()
def probe(model: Transformer, targets: ProbeTargets, attn_bias: torch.Tensor | None = None) -> ProbeResult:
    """Measure ``model`` (E members) on ``targets``; see ``store.metrics`` for each metric's meaning."""
    E, B, _ = targets.tokens.shape
    inputs, labels = targets.tokens[..., :-1], targets.tokens[..., 1:]
    logits, cache = model.run_with_cache(inputs, names_filter=_is_pattern, attn_bias=attn_bias)
    P = inputs.shape[-1]
    log_probs = F.log_softmax(logits.float(), dim=-1)  # [E, B, P, V]
    target_logp = log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # [E, B, P]
    correct = (logits.argmax(-1) == labels).float()
    per_position = torch.stack([-target_logp, correct, target_logp.exp()]).mean(dim=2)  # [3, E, P]

    mask = targets.loss_mask.float()
    overall = (per_position * mask).sum(-1) / mask.sum()  # [3, E]
    outputs = F.one_hot(targets.output_index.clamp(min=0), targets.n_outputs).float()
    outputs = outputs * (targets.output_index >= 0).float().unsqueeze(-1)  # [P, O]
    per_output = (per_position @ outputs) / outputs.sum(0).clamp(min=1)  # [3, E, O]

    layers = [cache[f"blocks.{l}.attn.hook_pattern"] for l in range(len(model.blocks))]
    pattern = torch.stack(layers, dim=1)  # [E*B, L, H, P, P]
    pattern = pattern.view(E, B, *pattern.shape[1:])  # [E, B, L, H, P, P]
    entropy = -(pattern * pattern.clamp(min=1e-30).log()).sum(-1).mean(1)  # [E, L, H, P]
    gt = targets.gt_mask.float()  # [E, P, P]
    mass = (pattern.mean(1) * gt[:, None, None]).sum(-1)  # [E, L, H, P]
    relevant = targets.gt_mask.any(-1).float()  # [E, P]
    rel_count = relevant.sum(-1).clamp(min=1)[:, None, None]
    rel_outputs = relevant[:, :, None] * outputs  # [E, P, O]
    rel_out_count = rel_outputs.sum(1).clamp(min=1)[:, None, None]  # [E, 1, 1, O]

    def per_head(values: torch.Tensor) -> torch.Tensor:  # [E, L, H, P] -> [E, L, H]
        return (values * relevant[:, None, None]).sum(-1) / rel_count

    def per_head_output(values: torch.Tensor) -> torch.Tensor:  # [E, L, H, P] -> [E, L, H, O]
        return torch.einsum("elhp,epo->elho", values, rel_outputs) / rel_out_count

    host = [t.cpu().numpy().astype(np.float64) for t in (
        overall, per_output, per_head(entropy), per_head(mass), per_head_output(entropy),
        per_head_output(mass))]
    return ProbeResult(
        loss=host[0][0], accuracy=host[0][1], target_prob=host[0][2],
        loss_pos=host[1][0], accuracy_pos=host[1][1], target_prob_pos=host[1][2],
        attn_entropy=host[2], attn_gt_mass=host[3], attn_entropy_pos=host[4], attn_gt_mass_pos=host[5],
        pattern=pattern.mean(1),
    )
