"""Train one student copy with RLOO or GRPO on a list of problems (the inner loop of SOAR).

One step: draw `batch_prompts` problems -> sample `group_size` completions each from the *current* student
(`rollout`) -> score them (`reward_fn`) -> group advantages -> one AdamW step on the clipped surrogate
(+ kl_coef * k3 KL to the frozen baseline) (`policy_step`). The three seams later backends replace are
plain functions: the rollout source, the reward function and the loss.

Simplifications versus the textbook algorithms (and the SOAR paper):
* One optimizer step per rollout batch, no PPO epochs or minibatches: rollouts always come from the
  weights just updated, so the ratio is 1 up to numerics and the clip only matters for off-policy
  rollouts (a layer-skipping behaviour model, stale weights). The loss still implements it exactly.
* Constant learning rate, AdamW with weight decay 0 (the paper uses a cosine schedule).
* Micro-batching (student.micro_batch rows per forward/backward pass, gradients accumulated) gives the
  same loss and gradient as one pass over the batch; 0 = the whole batch at once (the tiny default).
* Dropout is off (eval mode) while sampling and while computing the loss, so on-policy ratios are 1.
* The loss uses log-probs of the *sampling* distribution, logits / temperature (as TRL does), so the
  update is the policy gradient of the policy that wrote the rollouts. The engine records temperature-1
  log-probs (its contract, as vLLM's default), so at temperature != 1 the old log-probs are the current
  ones, detached (ratio 1: exact while rollouts come from the current weights, which train_student
  guarantees; an off-policy backend must record tempered log-probs itself).
* The engine does not record the EOS it samples. When a completion stopped (no stop strings are used
  here, so that means EOS) we append `eos_token_id` so the student also learns when to stop; its old
  log-prob is the current one, detached (ratio 1: exact while rollouts come from the current weights).
  Skipped when the model has several EOS ids (we cannot tell which one was sampled).
* The KL penalty is in the loss (not the reward), aggregated like the surrogate, and only computed when
  kl_coef > 0. A step whose advantages are all zero is skipped entirely (KL gradient included).
* Unscorable completions (reward None) get advantage 0 and are left out of baselines and reward metrics.
  No dynamic sampling, no over-length masking (SRPO/DAPO backends add those).
"""

from __future__ import annotations

import itertools
import math
import os
import random
import time
from dataclasses import dataclass, field, fields
from typing import Callable, Iterator

import torch

from soar_agent.engine import HFEngine, kv_cache_name
from soar_agent.models import clone_model
from soar_agent.rl.advantages import grpo_advantages, rloo_advantages
from soar_agent.rl.loss import aggregate, clipped_surrogate, k3_kl
from soar_agent.tasks.base import Problem

RewardFn = Callable[[list[Problem], list[str]], list]  # (problems, completions) -> list[float | None]


class NonFiniteLoss(RuntimeError):
    """The loss or gradient norm of a student step is NaN or infinite; no optimizer step was taken."""


@dataclass
class Rollout:
    """One batch of sampled completions, flattened group by group: row g * group_size + i."""

    problems: list[Problem]  # (B,)
    prompt_ids: list[list[int]]  # (B, prompt length)
    completion_ids: list[list[int]]  # (B, completion length): sampled tokens (+ EOS when it stopped)
    old_logprobs: list[list[float]]  # behaviour log-probs of completion_ids; NaN = not recorded (the EOS)
    texts: list[str]  # (B,)
    group_size: int
    sampled_tokens: int
    seconds: float


@dataclass
class StudentMetrics:
    """Means over the steps of a run; `per_step` keeps each step's record."""

    reward_mean: float = 0.0
    reward_std: float = 0.0  # mean over groups of the within-group std
    zero_std_fraction: float = 0.0  # share of groups whose rewards were all equal (no signal)
    completion_length: float = 0.0  # sampled tokens per completion
    clip_fraction: float = 0.0
    kl: float = 0.0  # 0 when kl_coef == 0 (not computed)
    entropy: float = 0.0
    tokens_per_second: float = 0.0  # generation throughput
    loss: float = 0.0
    steps: int = 0
    updates: int = 0  # optimizer steps taken (steps without signal are skipped)
    per_step: list[dict] = field(default_factory=list)


def reward_correct(domain) -> RewardFn:
    """1.0 when the domain's extractor + verifier accept the completion, else 0.0 (the same `score` that
    evaluation uses, so reward and evaluation cannot drift apart)."""
    from soar_agent.evaluation import score

    def reward(problems: list[Problem], completions: list[str]) -> list[float | None]:
        return [1.0 if ok else 0.0 for ok in score(domain, problems, completions)]

    return reward


def problem_stream(problems: list[Problem], rng: random.Random) -> Iterator[Problem]:
    """Endless problems: a shuffled pass over the list, then another shuffled pass, and so on."""
    if not problems:
        raise ValueError("train_student needs at least one problem")
    while True:
        order = list(problems)
        rng.shuffle(order)
        yield from order


def _stop_id(engine: HFEngine) -> int | None:
    ids = engine._eos_ids()
    return next(iter(ids)) if len(ids) == 1 else None


def rollout(engine: HFEngine, tokenizer, domain, problems: list[Problem], group_size: int, temperature: float,
            max_new_tokens: int, seed: int) -> Rollout:
    """The rollout source: `group_size` completions per problem from the engine's (current) model."""
    prompts = [domain.student_prompt(problem.question) for problem in problems]
    started = time.perf_counter()
    outputs = engine.generate(prompts, n=group_size, temperature=temperature, max_new_tokens=max_new_tokens,
                              seed=seed)
    seconds = time.perf_counter() - started
    encoded = [tokenizer(prompt, add_special_tokens=True)["input_ids"] for prompt in prompts]  # as the engine
    eos = _stop_id(engine)
    batch = Rollout([], [], [], [], [], group_size, 0, seconds)
    for problem, prompt_ids, row in zip(problems, encoded, outputs):
        for completion in row:
            stopped = completion.finish_reason == "stop" and eos is not None
            batch.problems.append(problem)
            batch.prompt_ids.append(prompt_ids)
            batch.completion_ids.append(completion.token_ids + ([eos] if stopped else []))
            batch.old_logprobs.append(completion.logprobs + ([math.nan] if stopped else []))
            batch.texts.append(completion.text)
            batch.sampled_tokens += len(completion.token_ids)
    return batch


def sequence_logprobs(model, prompt_ids: list[list[int]], completion_ids: list[list[int]],
                      pad_id: int, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probs (under logits / temperature) of the completion tokens, their mask and the policy entropy at each, from one forward
    pass over right-padded prompt+completion rows (or, when the rows share one prompt, one pass over the
    prompt and one over the completions on its cache). Returns three (B, T) tensors, T = longest completion;
    logprobs and entropy are 0 off the mask; entropy carries no gradient."""
    device = next(model.parameters()).device
    T = max(1, max(len(c) for c in completion_ids))
    steps = torch.arange(T, device=device)
    lengths = torch.tensor([len(c) for c in completion_ids], device=device)
    mask = steps[None, :] < lengths[:, None]  # (B, T)
    prompt = shared_prompt(prompt_ids)
    if prompt is not None:
        picked = _shared_prompt_logits(model, prompt, completion_ids, mask, pad_id)
    else:
        rows = [p + c for p, c in zip(prompt_ids, completion_ids)]
        width = max(len(row) for row in rows)
        input_ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows], device=device)  # (B, L)
        attention = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=device)
        logits = model(input_ids=input_ids, attention_mask=attention).logits  # (B, L, V)
        # completion token t of row b sits at len(prompt_b) + t and is predicted one position earlier
        starts = torch.tensor([len(p) - 1 for p in prompt_ids], device=device)  # (B,)
        positions = (starts[:, None] + steps[None, :]).clamp(max=width - 1)  # (B, T)
        picked = logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1]))  # (B, T, V)
    log_probs = torch.log_softmax(picked.float() / temperature, dim=-1)
    targets = torch.tensor([c + [pad_id] * (T - len(c)) for c in completion_ids], device=device)  # (B, T)
    token_logprobs = log_probs.gather(-1, targets[..., None]).squeeze(-1)  # (B, T)
    token_logprobs = torch.where(mask, token_logprobs, torch.zeros_like(token_logprobs))
    with torch.no_grad():
        entropy = -(log_probs.exp() * log_probs).sum(-1) * mask  # (B, T)
    return token_logprobs, mask, entropy


def shared_prompt(prompt_ids: list[list[int]]) -> list[int] | None:
    """The prompt every row has, when there are several rows and one prompt (the teacher update's): it then
    runs once (bench/teacher_step.py measures the two ways)."""
    first = prompt_ids[0]
    return first if len(prompt_ids) > 1 and first and all(p == first for p in prompt_ids[1:]) else None


def _shared_prompt_logits(model, prompt: list[int], completion_ids: list[list[int]], mask: torch.Tensor,
                          pad_id: int) -> torch.Tensor:
    """The logits that predict each completion token, (B, T, V), when every row has the same prompt: the prompt
    runs once and its KV cache (with its gradient) is copied to every row, the completions run on top. The
    teacher update's rows are one 135-token prompt and a ~17-token item each: a forward over prompt + item
    per row spent ~90% of its tokens on the same prompt."""
    device = mask.device
    rows, T = mask.shape
    prompt_out = model(input_ids=torch.tensor([prompt], device=device), use_cache=True)
    kv = kv_cache_name()
    cache = getattr(prompt_out, kv)
    cache.batch_select_indices(torch.zeros(rows, dtype=torch.long, device=device))
    completions = torch.tensor([c + [pad_id] * (T - len(c)) for c in completion_ids], device=device)  # (B, T)
    attention = torch.cat([mask.new_ones(rows, len(prompt)), mask], dim=1).long()
    positions = (len(prompt) + torch.arange(T, device=device)).expand(rows, -1)
    logits = model(input_ids=completions, attention_mask=attention, position_ids=positions, use_cache=True,
                   **{kv: cache}).logits  # (B, T, V): position t predicts completion token t + 1
    # completion token 0 is predicted by the prompt's last position
    return torch.cat([prompt_out.logits[:, -1:, :].expand(rows, -1, -1), logits[:, :-1, :]], dim=1)


def _padded(values: list[list[float]], T: int, device) -> torch.Tensor:
    return torch.tensor([v + [0.0] * (T - len(v)) for v in values], dtype=torch.float32, device=device)  # (B, T)


# Bytes per logit element of one pass of the loss at its peak: the logits in the model's dtype, the gathered
# completion positions, their float32 copy divided by the temperature, the log-softmax, the entropy's
# temporaries and, in the backward, their gradients (sequence_logprobs).
LOGIT_BYTES = 24
# Bytes per token, layer and unit of (4 x hidden size + MLP size) that a decoder layer keeps for the backward:
# its norms, projections and MLP activations in float32. With LOGIT_BYTES an upper bound of the peak memory per
# token of a policy step measured (RSS) on the random tiny Llama of tests/conftest.py (6.6 KB; estimated 8.7 KB)
# and on the shipped model (50 KB; estimated 60 KB).
ACTIVATION_BYTES = 16
MEMORY_SHARE = 4  # a pass takes at most 1 / MEMORY_SHARE of the device's memory


def device_memory(device) -> int:
    """Bytes of memory of `device`: a GPU's total, else the machine's RAM or a cgroup or ulimit -v limit below it. Its
    total, not what is free at the moment: the micro-batch it sets is the same on every step and retry of a
    job on the machine (the same rows, the same sums, the same result)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    sizes = []
    try:
        sizes.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX
        pass
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(limit).read().strip()
        except OSError:
            continue
        if text.isdigit():
            sizes.append(int(text))
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]  # ulimit -v
        if soft != resource.RLIM_INFINITY:
            sizes.append(soft)
    except (ImportError, ValueError, OSError):
        pass
    return min(sizes) if sizes else 8 * 2**30


def rows_per_pass(model, batch: Rollout, requested: int = 0) -> int:
    """Rows of `batch` per forward/backward pass of the loss: student.micro_batch (0 = the whole batch), at
    most as many as keep one pass's memory (rows x longest row x token_bytes) within
    1 / MEMORY_SHARE of the device's memory, and at least one. Every size the config allows (up to 1,024
    prompts x 256 completions, 0 = all of them at once) then fits: 262,144 rows of the shipped model's
    vocabulary were one 6.7 GB tensor, and a big vocabulary needs few rows per pass. Micro-batches give the
    loss and gradient of one pass over the batch (policy_step), so only the time changes."""
    rows = len(batch.completion_ids)
    width = max((len(p) + len(c) for p, c in zip(batch.prompt_ids, batch.completion_ids)), default=1)
    fitting = device_memory(next(model.parameters()).device) // MEMORY_SHARE // (max(1, width) * token_bytes(model))
    return max(1, min(requested or rows, rows, fitting))


def token_bytes(model) -> int:
    """Peak bytes one token of a row takes in a pass of the loss: its logits (LOGIT_BYTES per vocabulary entry)
    and the activations its decoder layers keep for the backward (ACTIVATION_BYTES)."""
    config = model.config
    head = model.get_output_embeddings()
    vocabulary = head.weight.shape[0] if head is not None else config.vocab_size
    hidden = getattr(config, "hidden_size", 0) or 0
    inner = getattr(config, "intermediate_size", 0) or 4 * hidden
    layers = getattr(config, "num_hidden_layers", 0) or 0
    return LOGIT_BYTES * vocabulary + ACTIVATION_BYTES * layers * (4 * hidden + inner)


def policy_step(student, optimizer, batch: Rollout, advantages: torch.Tensor, cfg, pad_id: int,
                reference=None, surrogate=None, on_rows=None) -> dict:
    """The loss and one optimizer step: clipped surrogate (+ kl_coef * k3 KL to `reference`) with grad-norm
    clipping. `advantages` is (B,). No step (and no graph) when every advantage is zero. Raises
    NonFiniteLoss, without stepping, when the loss or the gradient norm is not finite. `surrogate(rows)` (the
    loss seam for off-policy backends; default: clipped_surrogate for every row) returns the loss function
    for the batch rows `rows` (a list of row indices), with clipped_surrogate's signature and stats.

    With cfg.micro_batch = m > 0 the rows go through the model m at a time (fewer when m rows would not fit
    in memory, and so with 0, the whole batch: rows_per_pass) and their gradients accumulate:
    each micro-batch's loss is scaled by its share of the batch's tokens (token aggregation) or rows
    (sequence aggregation), so the summed loss and gradient equal one pass over the whole batch, while the
    logits (B x T x vocabulary) are never all in memory at once. Rows are grouped by length, so a
    micro-batch pads only to its own longest row (less padding: faster even where memory is no concern).
    `on_rows(done, rows)`, when given, is told the rows done after each micro-batch (the teacher update's
    progress: minutes in one step)."""
    has_signal = bool((advantages != 0).any())
    rows = len(batch.completion_ids)
    size = rows_per_pass(student, batch, cfg.micro_batch)  # never more rows than fit in memory
    total_tokens = max(1, sum(len(c) for c in batch.completion_ids))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if has_signal:
        optimizer.zero_grad(set_to_none=True)
    totals = {"loss": 0.0, "kl": 0.0, "entropy": 0.0, "clip_fraction": 0.0, "ratio_mean": 0.0}
    order = list(range(rows))
    if size < rows:  # rows of similar length share a micro-batch: each pads only to its own longest row
        order.sort(key=lambda i: len(batch.prompt_ids[i]) + len(batch.completion_ids[i]))
    for begin in range(0, rows, size):
        chunk = order[begin:begin + size]
        part = select_rows(batch, chunk)
        tokens = sum(len(c) for c in part.completion_ids) / total_tokens  # this micro-batch's share of tokens
        share = tokens if cfg.loss_aggregation == "token" else len(chunk) / rows
        loss_fn = clipped_surrogate if surrogate is None else surrogate(chunk)
        with torch.set_grad_enabled(has_signal):
            loss, kl, entropy, stats = _micro_batch_loss(student, part, advantages[chunk], cfg, pad_id,
                                                         reference, loss_fn)
        if not torch.isfinite(loss):
            optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(f"student loss is {loss.item()} (advantages: {advantages.tolist()[:8]}...)")
        if has_signal:
            (loss * share).backward()
        totals["loss"] += loss.item() * share
        totals["kl"] += kl.item() * share
        for key, value in (("entropy", entropy), *stats.items()):
            totals[key] += value * tokens
        if on_rows is not None:
            on_rows(min(rows, begin + size), rows)
    stats = dict(totals, grad_norm=0.0, updated=False)
    if has_signal:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        if not torch.isfinite(grad_norm):
            optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(f"student gradient norm is {grad_norm.item()} (loss {stats['loss']})")
        optimizer.step()
        stats.update(grad_norm=grad_norm.item(), updated=True)
    return stats


def select_rows(batch: Rollout, rows: list[int]) -> Rollout:
    """The rows of a batch as a batch of their own (a micro-batch; sft's steps from its tokenized pool)."""
    return Rollout([batch.problems[i] for i in rows], [batch.prompt_ids[i] for i in rows],
                   [batch.completion_ids[i] for i in rows], [batch.old_logprobs[i] for i in rows],
                   [batch.texts[i] for i in rows], batch.group_size, 0, 0.0)


def _micro_batch_loss(student, batch: Rollout, advantages: torch.Tensor, cfg, pad_id: int, reference,
                      loss_fn=clipped_surrogate):
    """(loss, kl, entropy, clip stats) of some rows, each aggregated over those rows only."""
    temperature = cfg.temperature if cfg.temperature > 0 else 1.0
    new, mask, entropy = sequence_logprobs(student, batch.prompt_ids, batch.completion_ids, pad_id,
                                           temperature)  # (b, T)
    old = _padded(batch.old_logprobs, new.shape[1], new.device)
    if temperature != 1.0:  # the engine's log-probs are temperature-1 ones: see the module docstring
        old = new.detach()
    old = torch.where(torch.isnan(old), new.detach(), old)  # unrecorded (EOS): on-policy, ratio 1
    loss, stats = loss_fn(new, old, advantages.to(new.device), mask, cfg.eps_low, cfg.eps_high, cfg.loss_aggregation)
    kl = torch.zeros((), device=new.device)
    if cfg.kl_coef > 0:
        kl = aggregate(k3_kl(new, _reference_logprobs(reference, batch, pad_id, temperature), mask), mask,
                       cfg.loss_aggregation)
        loss = loss + cfg.kl_coef * kl
    return loss, kl, aggregate(entropy, mask).item(), stats


def _reference_logprobs(reference, batch: Rollout, pad_id: int, temperature: float = 1.0) -> torch.Tensor:
    was_training = reference.training
    reference.eval()
    try:
        with torch.no_grad():
            return sequence_logprobs(reference, batch.prompt_ids, batch.completion_ids, pad_id,
                                     temperature)[0]  # (B, T)
    finally:
        reference.train(was_training)


def _reward_stats(rewards: torch.Tensor) -> dict:
    """rewards (G, n), NaN = unscorable."""
    valid = ~torch.isnan(rewards)
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    count = valid.sum(-1)  # (G,)
    mean = r.sum(-1) / count.clamp(min=1)
    std = (torch.where(valid, r - mean[:, None], 0.0).pow(2).sum(-1) / count.clamp(min=1)).sqrt()  # population
    return {"reward_mean": (r.sum() / valid.sum().clamp(min=1)).item(), "reward_std": std.mean().item(),
            "zero_std_fraction": (std == 0).float().mean().item()}


def new_student(baseline, cfg):
    """A trainable copy of `baseline` (never mutated; dropout off: see the module docstring) and its AdamW
    optimizer: the start of every backend's training."""
    student = clone_model(baseline)
    student.eval()
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the student has no trainable parameters")
    return student, torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def score_rollout(batch: Rollout, reward_fn: RewardFn, on_rollout=None) -> tuple[list[float], torch.Tensor]:
    """The batch's rewards (NaN = unscorable), handed to `on_rollout` with the batch: (scores, (G, n) tensor)."""
    scores = [math.nan if s is None else float(s) for s in reward_fn(batch.problems, batch.texts)]
    if len(scores) != len(batch.texts):
        raise ValueError(f"reward_fn returned {len(scores)} rewards for {len(batch.texts)} completions")
    if on_rollout is not None:
        on_rollout(batch, scores)
    return scores, torch.tensor(scores, dtype=torch.float32).view(-1, batch.group_size)


def train_student(baseline, tokenizer, problems: list[Problem], domain, cfg, steps: int | None = None,
                  reward_fn: RewardFn | None = None, seed: int = 0, reference=None,
                  log: Callable[[dict], None] | None = None,
                  on_rollout: Callable[[Rollout, list[float]], None] | None = None, engine=None):
    """Train a copy of `baseline` (never mutated) for `steps` (default cfg.steps) RL steps on `problems`.

    cfg is a StudentSection. `reward_fn(problems, completions) -> list[float | None]` defaults to
    `reward_correct(domain)`. `reference` (default: the baseline) is the frozen policy of the KL penalty.
    `log` receives each step's record and `on_rollout` each step's batch with its rewards (for storage).
    `engine` (default: an HFEngine on the student itself) samples the rollouts; one holding its own copy of
    the weights (vLLM) gets the student's weights before the first rollout and after every optimizer step.
    Returns (student, StudentMetrics). Raises NonFiniteLoss."""
    student, optimizer = new_student(baseline, cfg)
    engine = engine or HFEngine(student, tokenizer)  # on the student itself, rollouts see every update
    engine.load_weights(student)
    reward_fn = reward_fn or reward_correct(domain)
    reference = reference if reference is not None else baseline
    advantage_fn = grpo_advantages if cfg.backend == "grpo" else rloo_advantages  # srl-rlvr's RLVR half: RLOO
    stream = problem_stream(problems, random.Random(seed))
    pad_id = pad_token_id(tokenizer)
    per_step = []
    for step in range(cfg.steps if steps is None else steps):
        started = time.perf_counter()
        batch = rollout(engine, tokenizer, domain, list(itertools.islice(stream, cfg.batch_prompts)),
                        cfg.group_size, cfg.temperature, cfg.max_new_tokens, seed=seed * 1_000_003 + step)
        _, rewards = score_rollout(batch, reward_fn, on_rollout)  # (G, n)
        advantages = advantage_fn(rewards).flatten()  # (B,)
        try:
            stats = policy_step(student, optimizer, batch, advantages, cfg, pad_id, reference)
        except NonFiniteLoss as error:
            raise NonFiniteLoss(f"step {step}: {error}") from None
        if stats["updated"]:
            engine.load_weights(student)
        record = {"step": step, **_reward_stats(rewards), **stats,
                  "completion_length": batch.sampled_tokens / len(batch.texts),
                  "tokens_per_second": batch.sampled_tokens / batch.seconds if batch.seconds else 0.0,
                  "seconds": time.perf_counter() - started}
        per_step.append(record)
        if log is not None:
            log(record)
    return student, summarize_steps(per_step)


def first_phase_steps(share: float, total: int) -> int:
    """Steps of the first phase of a two-phase backend (srl-rlvr, sft-rlvr): round(share * total), at least
    1 and at most total."""
    return min(total, max(1, round(share * total)))


def summarize_steps(per_step: list[dict]) -> StudentMetrics:
    """Means of the per-step records."""
    names = [f.name for f in fields(StudentMetrics) if f.name not in ("steps", "updates", "per_step")]
    means = {name: sum(r[name] for r in per_step) / len(per_step) if per_step else 0.0 for name in names}
    return StudentMetrics(**means, steps=len(per_step), updates=sum(r["updated"] for r in per_step),
                          per_step=per_step)
