"""The policy loss: PPO-style clipped surrogate with asymmetric clip range, and the k3 KL estimator.

All per-token tensors are (B, T): B completions, T completion tokens, right-padded; `mask` is 1 on real
tokens. Padded positions may hold anything finite; they never reach the loss.
"""

from __future__ import annotations

import torch


def aggregate(values: torch.Tensor, mask: torch.Tensor, aggregation: str = "token") -> torch.Tensor:
    """Reduce per-token values (B, T) to a scalar.

    token: sum over all real tokens / number of real tokens (DAPO; long answers weigh more).
    sequence: per-sequence token mean, then mean over the B sequences (original GRPO; an empty completion
    counts as a 0, as in TRL)."""
    mask = mask.to(values.dtype)
    if aggregation == "token":
        return (values * mask).sum() / mask.sum().clamp(min=1)
    if aggregation == "sequence":
        return ((values * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    raise ValueError(f"unknown loss aggregation {aggregation!r} (expected token or sequence)")


def clipped_surrogate(new_logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                      mask: torch.Tensor, eps_low: float, eps_high: float,
                      aggregation: str = "token") -> tuple[torch.Tensor, dict]:
    """-min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A), aggregated. Returns (loss, stats) with
    stats = clip_fraction (share of real tokens whose gradient the clip removes) and ratio_mean."""
    ratio = torch.exp(new_logprobs - old_logprobs)  # (B, T)
    adv = advantages[:, None]  # (B, 1)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * adv
    loss = aggregate(-torch.min(unclipped, clipped), mask, aggregation)
    with torch.no_grad():
        # clipping bites where the ratio left the trust region in the direction the advantage pushes it
        clipped_tokens = ((ratio > 1 + eps_high) & (adv > 0)) | ((ratio < 1 - eps_low) & (adv < 0))  # (B, T)
        real = mask.float()
        n = real.sum().clamp(min=1)
        stats = {"clip_fraction": ((clipped_tokens.float() * real).sum() / n).item(),
                 "ratio_mean": ((ratio * real).sum() / n).item()}
    return loss, stats


def k3_kl(new_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(new || ref): exp(ref - new) - (ref - new) - 1 >= 0; 0 off the mask.
    (B, T) -> (B, T)."""
    delta = ref_logprobs - new_logprobs
    return torch.where(mask.bool(), torch.exp(delta) - delta - 1, torch.zeros_like(delta))
