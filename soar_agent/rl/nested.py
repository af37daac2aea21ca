"""Nested-ReFT (arXiv 2508.10123): rollouts from the student with some middle decoder layers skipped (a
cheaper, off-policy behaviour model), an importance-weighted update of the full student.

One step: choose which middle layers to skip for this batch (`choose_skipped`, seeded) -> sample
`group_size` completions per problem with those layers skipped (`skipping` around the core's `rollout`;
the engine records the behaviour model's log-probs) -> rewards, RLOO advantages -> score the sampled
tokens under the behaviour model once more, without a graph, at the sampling temperature
(`behaviour_logprobs`) -> the core's `policy_step` with `CorrectedSurrogate` as its loss: every token's
clipped-surrogate term times a correction weight computed from the token's importance ratio
rho = pi_full / pi_behaviour (the full student at rollout time over the skipped one).

This file owns the layer skipping (no weight copies: the model's ModuleList of decoder layers is swapped
for the kept subset inside a context manager), the choice of skipped layers, the three corrections and
the training loop on the core's seams.

From the paper (see methods.md section 4): the behaviour model is the target with a subset of its layers
skipped, chosen dynamically per batch; rollouts are off-policy and cheaper; the update is importance
weighted; three bias-mitigation variants exist; tokens/s and accuracy are reported against the
full-model baseline. Never skipping the first or last layer is methods.md's rule.

Ours (the paper's selection rule, skip ratios and variant formulas are not public):
* Selection: `round(nested_skip_ratio * L)` of the L decoder layers (at most L - 2), drawn uniformly from
  the middle layers 1..L-2 per step by a generator seeded from the training seed.
* The update is decoupled (as in "decoupled PPO", Hilton et al. 2022): the trust region is around the
  full student at rollout time (the proximal policy; one optimizer step per batch, so it is the current
  weights, detached), and the behaviour mismatch enters only through a detached per-token weight w:
  loss = aggregate(-w * min(r * A, clip(r) * A)), r = pi_theta / pi_proximal. Clipping against the
  behaviour model instead would zero the gradient of most tokens whenever the skipped model is far off.
* The three corrections (`correction_weights`), with rho_t = exp(log pi_full - log pi_behaviour):
  `truncated`: w_t = min(rho_t, C) (per-token truncated IS, C = student.nested_is_cap);
  `retrace`: w_t = prod_{s <= t} lambda * min(1, rho_s) (a Retrace-style trace cut along the completion,
  lambda = student.nested_trace_lambda): once the behaviour model took a token the full model finds
  less likely, the rest of the completion counts less;
  `masked`: w_t = 1 for every token of a completion whose mean log-ratio over its tokens lies in
  [-band, band], 0 for the whole completion otherwise (band = student.nested_mask_band).
  None of them is unbiased; each trades bias for variance differently. Each step records `is_ess`,
  the Kish effective sample size (sum w)^2 / sum w^2 of the corrected token weights divided by the token
  count (1 = on-policy), `is_ess_raw` the same for the raw rho, `log_ratio_mean` (mean log rho over
  the behaviour model's tokens: minus an estimate of the per-token KL(behaviour || full)),
  `is_weight_mean` and `masked_fraction` (completions the `masked` correction dropped).
* The behaviour log-probs are recomputed in one no-graph pass of the skipped model (the engine records
  temperature-1 log-probs and none for the appended EOS); the pass is skipped, and the `is_*` figures are
  NaN, on steps whose advantages are all zero (no update). `tests/test_nested.py` checks that the pass and
  the engine's KV-cached sampling agree.
* With nothing skipped (ratio 0, or a model with fewer than three layers) the behaviour model is the
  student: rho is exactly 1, every correction weight is exactly 1, and a step is bit-for-bit the core's
  RLOO step (same rollouts, same seed, same weights after).
* Advantages are RLOO's. Rollouts always use the HF engine on the student (a vLLM engine holds its own
  weights and cannot skip layers). Layer skipping needs a Llama-style model: a ModuleList of decoder layers at
  `.model.layers` (peft-wrapped or not) whose attention writes the KV cache at its own `layer_idx`, and
  one attention type for every layer (the kept layers keep their indices, so the cache holds entries at
  the kept indices only; the mask sizes are read at layer 0, which is never skipped).

Measured (bench/nested.py, README): on a 16-layer narrow fixture, 8 layers skipped sample 1.96x the
tokens/s of the full model with a log-ratio of -0.025 per token; on the shipped 4-layer model one skipped
layer gives 1.12x and a different model (log-ratio -1.7 per token, raw ESS 0.07) whose rollouts earn
almost no reward, so the student barely trains there. Skipping pays on deep models only.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import time
from dataclasses import dataclass, field, replace
from typing import Iterator

import torch

from soar_agent.engine import HFEngine
from soar_agent.rl.advantages import rloo_advantages
from soar_agent.rl.loss import aggregate
from soar_agent.rl.train import (NonFiniteLoss, Rollout, _padded, _reward_stats, new_student, pad_token_id,
                                 policy_step, problem_stream, reward_correct, rollout, rows_per_pass, score_rollout,
                                 sequence_logprobs, summarize_steps)

CORRECTIONS = ("truncated", "retrace", "masked")
IS_STATS = ("is_ess", "is_ess_raw", "is_weight_mean", "log_ratio_mean", "masked_fraction")


# ---------------------------------------------------------------- the behaviour model


def decoder_layers(model) -> tuple[torch.nn.Module, torch.nn.ModuleList]:
    """(the module that holds the decoder layers, its ModuleList of layers), for a Llama-style
    transformers causal LM, peft-wrapped or not. Raises ValueError for anything else."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the HF model
    holder = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", None)
    layers = getattr(holder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"{type(base).__name__}: no ModuleList of decoder layers at .model.layers "
                         "(Nested-ReFT's layer skipping supports Llama-style models)")
    return holder, layers


def choose_skipped(num_layers: int, ratio: float, rng: random.Random) -> tuple[int, ...]:
    """round(ratio * num_layers) layer indices, at most num_layers - 2, drawn uniformly from the middle
    layers 1..num_layers-2 (sorted). The first and last layers are never skipped."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"skip ratio must be in [0, 1), got {ratio}")
    middle = range(1, num_layers - 1)
    count = min(len(middle), math.floor(ratio * num_layers + 0.5))
    return tuple(sorted(rng.sample(middle, count)))


@contextlib.contextmanager
def skipping(model, skipped: tuple[int, ...] | list[int]) -> Iterator:
    """Inside the block, `model` runs without the decoder layers `skipped` (no weights are copied: the
    ModuleList of layers is swapped for one holding the kept layers, and restored on exit, also on error).
    The kept layers keep their own `layer_idx`, so a KV cache built during the block has entries at the kept
    indices only and generation with a cache works."""
    holder, layers = decoder_layers(model)
    skipped = set(skipped)
    if not skipped:
        yield model
        return
    if not skipped <= set(range(1, len(layers) - 1)):
        raise ValueError(f"can only skip middle layers 1..{len(layers) - 2} of {len(layers)}, got {sorted(skipped)}")
    config = getattr(holder, "config", None)
    if len(set(getattr(config, "layer_types", None) or ["one"])) > 1:
        # the mask of layer i is chosen by its position in the loop: it would go to the wrong layer
        raise ValueError("layer skipping needs one attention type for every layer (this model mixes them)")
    for index, layer in enumerate(layers):
        own = getattr(getattr(layer, "self_attn", None), "layer_idx", index)
        if own != index:  # a model indexing its cache by loop position would mix up the cache entries
            raise ValueError(f"decoder layer {index} writes the KV cache at index {own}")
    holder.layers = torch.nn.ModuleList([layer for index, layer in enumerate(layers) if index not in skipped])
    try:
        yield model
    finally:
        holder.layers = layers


def behaviour_logprobs(model, skipped, batch: Rollout, pad_id: int, temperature: float) -> torch.Tensor:
    """Log-probs (B, T) of the batch's completion tokens (EOS included) under `model` with `skipped`
    layers skipped, at the sampling temperature; no graph. 0 off the completion mask. In passes of as many
    rows as fit in memory (rows_per_pass: a batch of every size the config allows)."""
    size, T = rows_per_pass(model, batch), max(1, max(len(c) for c in batch.completion_ids))
    parts = []
    with skipping(model, skipped), torch.no_grad():
        for begin in range(0, len(batch.completion_ids), size):
            part = sequence_logprobs(model, batch.prompt_ids[begin:begin + size],
                                     batch.completion_ids[begin:begin + size], pad_id, temperature)[0]
            parts.append(torch.nn.functional.pad(part, (0, T - part.shape[1])))
    return torch.cat(parts)


# ---------------------------------------------------------------- the corrections


def correction_weights(log_ratio: torch.Tensor, mask: torch.Tensor, correction: str, cap: float = 2.0,
                       trace_lambda: float = 1.0, band: float = 0.5) -> torch.Tensor:
    """Per-token weights (B, T) from log rho = log pi_full - log pi_behaviour (B, T); 0 off the mask.
    truncated: min(rho, cap); retrace: cumulative product of trace_lambda * min(1, rho) along each
    completion; masked: 1 where the completion's mean log rho over its real tokens is in [-band, band],
    else 0 for the whole completion."""
    real = mask.to(log_ratio.dtype)
    rho = torch.exp(log_ratio)
    if correction == "truncated":
        return rho.clamp(max=cap) * real
    if correction == "retrace":
        trace = torch.where(mask.bool(), trace_lambda * rho.clamp(max=1.0), torch.ones_like(rho))  # padding: 1
        return torch.cumprod(trace, dim=-1) * real
    if correction == "masked":
        mean = (log_ratio * real).sum(-1) / real.sum(-1).clamp(min=1)  # (B,)
        return (mean.abs() <= band).to(log_ratio.dtype)[:, None] * real
    raise ValueError(f"unknown Nested-ReFT correction {correction!r} (expected one of {', '.join(CORRECTIONS)})")


def effective_sample_size(log_weights: torch.Tensor, mask: torch.Tensor) -> float:
    """Kish effective sample size of the real tokens' weights exp(log_weights), divided by their count:
    (sum w)^2 / sum w^2 / n in (0, 1], 1 when all are equal; 0 when every weight is 0 or no token is
    real. In log space, so raw ratios that overflow exp do not."""
    values = log_weights[mask.bool()].double()
    if values.numel() == 0 or torch.isneginf(values).all():
        return 0.0
    return math.exp(2 * torch.logsumexp(values, 0).item() - torch.logsumexp(2 * values, 0).item()) / values.numel()


@dataclass
class CorrectedSurrogate:
    """The loss seam of `policy_step`: called with a range of batch rows, it returns a loss function with
    clipped_surrogate's signature and stats whose per-token terms are multiplied by the correction weights.
    `old` (what policy_step passes) is the full student at rollout time; `behaviour` holds each row's
    behaviour log-probs, None when nothing was skipped (then rho is exactly 1). The rows' log-ratios and
    weights are kept for the step's `stats()`, which cover the whole batch however it was micro-batched."""

    behaviour: list[list[float]] | None
    correction: str
    cap: float
    trace_lambda: float
    band: float
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def __call__(self, rows: range):
        def surrogate(new, old, advantages, mask, eps_low, eps_high, aggregation="token"):
            if self.behaviour is None:
                log_ratio = torch.zeros_like(old)
            else:
                log_ratio = old - _padded([self.behaviour[r] for r in rows], old.shape[1], old.device)
            log_ratio = torch.where(mask.bool(), log_ratio, torch.zeros_like(log_ratio))
            weights = correction_weights(log_ratio, mask, self.correction, self.cap, self.trace_lambda, self.band)
            self.seen.append((log_ratio, weights, mask))
            # the same operations as loss.clipped_surrogate, so weights of exactly 1 give exactly its loss
            ratio = torch.exp(new - old)  # (b, T)
            adv = advantages[:, None]
            unclipped = ratio * adv
            clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * adv
            loss = aggregate(-(weights * torch.min(unclipped, clipped)), mask, aggregation)
            with torch.no_grad():
                clipped_tokens = ((ratio > 1 + eps_high) & (adv > 0)) | ((ratio < 1 - eps_low) & (adv < 0))
                real = mask.float()
                n = real.sum().clamp(min=1)
                stats = {"clip_fraction": ((clipped_tokens.float() * real).sum() / n).item(),
                         "ratio_mean": ((ratio * real).sum() / n).item()}
            return loss, stats

        return surrogate

    def stats(self) -> dict:
        """The `is_*` figures over every row seen (module docstring)."""
        flat = lambda tensors: torch.cat([t.flatten() for t in tensors])  # noqa: E731 (rows differ in T)
        log_ratio = flat(t for t, _, _ in self.seen)
        weights = flat(w for _, w, _ in self.seen)
        mask = flat(m for _, _, m in self.seen).bool()
        n = max(1, int(mask.sum()))
        completions = [(w.sum(-1), m.sum(-1)) for _, w, m in self.seen]
        real_rows = sum(int((length > 0).sum()) for _, length in completions)
        dropped = sum(int(((total == 0) & (length > 0)).sum()) for total, length in completions)
        return {"is_ess": effective_sample_size(torch.log(weights), mask),
                "is_ess_raw": effective_sample_size(log_ratio, mask),
                "is_weight_mean": weights[mask].sum().item() / n,
                "log_ratio_mean": log_ratio[mask].sum().item() / n,
                "masked_fraction": dropped / max(1, real_rows) if self.correction == "masked" else 0.0}


# ---------------------------------------------------------------- training


def train_nested(baseline, tokenizer, problems, domain, cfg, steps: int | None = None, reward_fn=None, seed: int = 0,
                 reference=None, log=None, on_rollout=None):
    """Nested-ReFT on `problems`. Same contract as `train_student`: returns (student, StudentMetrics);
    every per-step record also holds `skipped_layers` and the `is_*` figures (module docstring).
    `on_rollout(batch, rewards)` gets each batch with the behaviour model's engine-recorded log-probs."""
    student, optimizer = new_student(baseline, cfg)
    engine = HFEngine(student, tokenizer)
    reward_fn = reward_fn or reward_correct(domain)
    reference = reference if reference is not None else baseline
    stream = problem_stream(problems, random.Random(seed))  # the same stream as train_student's
    layer_rng = random.Random(f"nested-layers-{seed}")  # its own generator: the problem stream stays RLOO's
    num_layers = len(decoder_layers(student)[1])
    pad_id = pad_token_id(tokenizer)
    temperature = cfg.temperature if cfg.temperature > 0 else 1.0  # as policy_step scores
    per_step = []
    for step in range(cfg.steps if steps is None else steps):
        started = time.perf_counter()
        skipped = choose_skipped(num_layers, cfg.nested_skip_ratio, layer_rng)
        with skipping(student, skipped):
            batch = rollout(engine, tokenizer, domain, list(itertools.islice(stream, cfg.batch_prompts)),
                            cfg.group_size, cfg.temperature, cfg.max_new_tokens, seed=seed * 1_000_003 + step)
        _, rewards = score_rollout(batch, reward_fn, on_rollout)  # (G, n)
        advantages = rloo_advantages(rewards).flatten()  # (B,)
        behaviour, step_batch = None, batch
        if skipped:
            # the engine's log-probs are the behaviour model's: policy_step must take the full student's
            # (NaN = "use the current forward", which is the student at rollout time: one step per batch)
            step_batch = replace(batch, old_logprobs=[[math.nan] * len(c) for c in batch.completion_ids])
            if (advantages != 0).any():  # no update, no need for the weights
                scored = behaviour_logprobs(student, skipped, batch, pad_id, temperature)  # (B, T)
                behaviour = [scored[row, :len(c)].tolist() for row, c in enumerate(batch.completion_ids)]
        surrogate = CorrectedSurrogate(behaviour, cfg.nested_correction, cfg.nested_is_cap, cfg.nested_trace_lambda,
                                       cfg.nested_mask_band)
        try:
            stats = policy_step(student, optimizer, step_batch, advantages, cfg, pad_id, reference, surrogate)
        except NonFiniteLoss as error:
            raise NonFiniteLoss(f"step {step}: {error}") from None
        # not measured when skipping on a step with nothing to update (no behaviour pass was made)
        stats.update(dict.fromkeys(IS_STATS, math.nan) if skipped and behaviour is None else surrogate.stats())
        record = {"step": step, **_reward_stats(rewards), **stats, "skipped_layers": list(skipped),
                  "completion_length": batch.sampled_tokens / len(batch.texts),
                  "tokens_per_second": batch.sampled_tokens / batch.seconds if batch.seconds else 0.0,
                  "seconds": time.perf_counter() - started}
        per_step.append(record)
        if log is not None:
            log(record)
    return student, summarize_steps(per_step)
