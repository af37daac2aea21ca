"""Group-relative advantages for RLOO and GRPO.

`rewards` is (G, n): G prompts (groups), n completions each. NaN marks an unscorable completion (a reward
function's None, as in TRL): it gets advantage 0 and is left out of its group's baseline and std. A group
with fewer than two scorable completions has no baseline, so all its advantages are 0.
"""

from __future__ import annotations

import torch


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """A_i = r_i - mean_{j != i} r_j over the scorable completions of a group. (G, n) -> (G, n)."""
    valid = ~torch.isnan(rewards)  # (G, n)
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    count = valid.sum(-1, keepdim=True)  # (G, 1)
    others = (count - 1).clamp(min=1)
    baseline = (r.sum(-1, keepdim=True) - r) / others  # leave-one-out mean, (G, n)
    return torch.where(valid & (count >= 2), r - baseline, torch.zeros_like(r))


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (r_i - mean) / (std + eps) per group. std is the *sample* std (n - 1 denominator), as TRL's
    GRPOTrainer computes it (`torch.std`). A group whose rewards are all equal gets zeros. (G, n) -> (G, n)."""
    valid = ~torch.isnan(rewards)  # (G, n)
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    count = valid.sum(-1, keepdim=True)  # (G, 1)
    mean = r.sum(-1, keepdim=True) / count.clamp(min=1)
    centered = torch.where(valid, r - mean, torch.zeros_like(r))
    std = (centered.pow(2).sum(-1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
    return torch.where(valid & (count >= 2), centered / (std + eps), torch.zeros_like(r))
