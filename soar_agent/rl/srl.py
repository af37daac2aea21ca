"""SRL, Supervised Reinforcement Learning (arXiv 2510.25992): RL on step-wise expert similarity, for
problems the model fails outright (fail@128) but whose expert solutions exist.

An expert solution of N lines (the numbered steps, then the `Answer: N` line) becomes N step prompts:
problem + lines 1..k-1 -> line k. The student writes an optional `<think>...</think>` monologue and then
the next line only; the reward is `difflib.SequenceMatcher(None, action, expert_line).ratio()` in [0, 1],
-1 when the format is violated. GRPO advantages per group (the paper's), dynamic sampling (a prompt is
kept only when its rollout rewards have std > epsilon; the batch is refilled from the stream), then the
core's clipped-surrogate step (`policy_step`). `srl-rlvr` runs SRL for a share of the steps, then the
core's outcome-reward RL (`train_student`) from the SRL weights on the same problems.

Choices and differences from the paper:
* The final `Answer: N` line is a step target too (so N lines give N prompts, where the paper's N steps
  give N-1 examples): for the built-in domains the answer line is the action the outcome reward checks.
* Without `<think>` (student.srl_think = false, the default: the shipped tiny model never writes one) a
  completion is the action itself, ended by a newline; with it, text before `</think>` is free and only
  the first line after it is scored; a missing `</think>` is a format violation (-1).
* An empty action, or one that runs into the token budget without ending its line, is a violation (-1).
* epsilon (student.srl_epsilon, default 0.01) is not published in the paper; 0.01 is what a community
  reimplementation uses. Refills are bounded (MAX_REFILL_ROUNDS): a batch with fewer kept prompts still
  trains, and a batch with none is skipped (no optimizer step), as the core does for all-zero advantages.
* The paper's LR (5e-7 on 7B) and batch (512) do not transfer to the tiny model; the student's own
  [student] lr, batch_prompts, group_size and KL are used.
"""

from __future__ import annotations

import difflib
import itertools
import math
import random
import re
import time
from dataclasses import dataclass

import torch

from soar_agent.engine import HFEngine
from soar_agent.rl.advantages import grpo_advantages
from soar_agent.rl.train import (NonFiniteLoss, Rollout, _reward_stats, first_phase_steps, new_student, pad_token_id,
                                 policy_step, summarize_steps, train_student)
from soar_agent.tasks.base import Problem, render_steps, split_solution  # noqa: F401 (re-exported)

MAX_REFILL_ROUNDS = 4  # extra sampling rounds per step to replace prompts dynamic sampling dropped
_THINK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)


@dataclass(frozen=True)
class StepPrompt:
    """One SRL example: the problem, the expert lines before this one, and the line to write."""

    problem: Problem
    prompt: str
    expert_step: str
    index: int  # which line of the expert solution (0-based): rollouts store it so the TUI can show the step


def expert_lines(problem: Problem) -> list[str]:
    """The expert solution as lines: numbered steps, then `Answer: <answer>`."""
    return render_steps(problem.steps).splitlines() + [f"Answer: {problem.answer}"]


def step_prompts(domain, problem: Problem) -> list[StepPrompt]:
    """Problem + lines 1..k-1 -> line k, for every line of the expert solution (none without steps)."""
    if not problem.steps:
        return []
    lines = expert_lines(problem)
    head = domain.student_prompt(problem.question)
    return [StepPrompt(problem, head + "".join(line + "\n" for line in lines[:k]), lines[k], k)
            for k in range(len(lines))]


def action_of(completion: str, think: bool) -> str | None:
    """The scored action: the first line (after `</think>` when think is on); None = format violation."""
    if think:
        match = _THINK.match(completion)
        if not match:
            return None
        completion = completion[match.end():].lstrip("\n")
    action = completion.split("\n", 1)[0].strip()
    return action or None


def step_reward(completion: str, expert_step: str, think: bool, finished: bool = True) -> float:
    """SequenceMatcher similarity of the action to the expert step; -1 on a format violation."""
    action = action_of(completion, think)
    if action is None or not finished:
        return -1.0
    return difflib.SequenceMatcher(None, action, expert_step).ratio()


def keep_informative(rewards: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Dynamic sampling: which groups (rows of rewards (G, n)) have a reward std above epsilon."""
    return rewards.std(dim=-1, unbiased=False) > epsilon  # (G,)


def sample_steps(engine: HFEngine, tokenizer, examples: list[StepPrompt], cfg, seed: int) -> tuple[Rollout, list[float]]:
    """group_size completions per step prompt, scored. Without think, a completion ends at its newline."""
    started = time.perf_counter()
    outputs = engine.generate([e.prompt for e in examples], n=cfg.group_size, temperature=cfg.temperature,
                              max_new_tokens=cfg.max_new_tokens, stop=None if cfg.srl_think else ["\n"], seed=seed)
    batch = Rollout([], [], [], [], [], cfg.group_size, 0, time.perf_counter() - started)
    rewards = []
    for example, row in zip(examples, outputs):
        prompt_ids = tokenizer(example.prompt, add_special_tokens=True)["input_ids"]  # as the engine encodes
        for completion in row:
            finished = completion.finish_reason == "stop"
            batch.problems.append(example)
            batch.prompt_ids.append(prompt_ids)
            batch.completion_ids.append(list(completion.token_ids))
            batch.old_logprobs.append(list(completion.logprobs))
            batch.texts.append(completion.text)
            batch.sampled_tokens += len(completion.token_ids)
            rewards.append(step_reward(completion.text, example.expert_step, cfg.srl_think, finished))
    return batch, rewards


def _select(batch: Rollout, keep: list[int]) -> Rollout:
    rows = [g * batch.group_size + i for g in keep for i in range(batch.group_size)]
    pick = lambda values: [values[r] for r in rows]  # noqa: E731
    return Rollout(pick(batch.problems), pick(batch.prompt_ids), pick(batch.completion_ids),
                   pick(batch.old_logprobs), pick(batch.texts), batch.group_size, batch.sampled_tokens, batch.seconds)


def train_srl(baseline, tokenizer, problems: list[Problem], domain, cfg, steps: int | None = None, seed: int = 0,
              reference=None, log=None, on_rollout=None):
    """SRL on the step prompts of `problems` (those without expert steps are skipped). Same contract as
    `train_student`: returns (student, StudentMetrics); `on_rollout(batch, rewards)` gets every sampled
    batch, dropped groups included (batch.problems holds StepPrompts: problem, prompt, expert_step)."""
    examples, too_long = _examples_that_fit(tokenizer, problems, domain, cfg)
    student, optimizer = new_student(baseline, cfg)
    engine = HFEngine(student, tokenizer)
    reference = reference if reference is not None else baseline
    rng = random.Random(seed)
    stream = itertools.chain.from_iterable(rng.sample(examples, len(examples)) for _ in itertools.count())
    pad_id = pad_token_id(tokenizer)
    per_step = []
    for step in range(cfg.steps if steps is None else steps):
        started = time.perf_counter()
        kept, kept_rewards, sampled, dropped = _sample_informative(engine, tokenizer, stream, cfg, seed, step,
                                                                   on_rollout)
        record = {"step": step, "sampled_prompts": sampled, "dropped_prompts": dropped,
                  "steps_over_budget": too_long, "seconds": 0.0}
        if kept:
            merged = _merged(kept, cfg.group_size)
            rewards = torch.cat(kept_rewards)  # (G', n)
            try:
                stats = policy_step(student, optimizer, merged, grpo_advantages(rewards).flatten(), cfg, pad_id,
                                    reference)
            except NonFiniteLoss as error:
                raise NonFiniteLoss(f"SRL step {step}: {error}") from None
            record.update(_reward_stats(rewards), **stats,
                          completion_length=merged.sampled_tokens / max(1, len(merged.texts)),
                          tokens_per_second=merged.sampled_tokens / merged.seconds if merged.seconds else 0.0)
        else:  # every sampled group was uninformative: nothing to learn from this step
            record.update(reward_mean=math.nan, reward_std=0.0, zero_std_fraction=1.0, clip_fraction=0.0, kl=0.0,
                          entropy=0.0, loss=0.0, updated=False, completion_length=0.0, tokens_per_second=0.0)
        record["seconds"] = time.perf_counter() - started
        per_step.append(record)
        if log is not None:
            log(record)
    valid = [r for r in per_step if not math.isnan(r["reward_mean"])]
    metrics = summarize_steps(valid)
    metrics.steps, metrics.per_step = len(per_step), per_step
    return student, metrics


def _examples_that_fit(tokenizer, problems: list[Problem], domain, cfg) -> tuple[list[StepPrompt], int]:
    """(the step prompts of `problems` whose expert step fits student.max_new_tokens, how many do not)."""
    examples = [e for p in problems for e in step_prompts(domain, p)]
    # a target the student cannot write within its token budget can only ever score -1: leave it out
    fits = [e for e in examples if len(tokenizer(e.expert_step, add_special_tokens=False)["input_ids"]) < cfg.max_new_tokens]
    too_long = len(examples) - len(fits)
    if not fits:
        raise ValueError("SRL needs problems with expert steps that fit student.max_new_tokens "
                         f"(none of the given problems has any; {too_long} steps too long)")
    return fits, too_long


def _sample_informative(engine, tokenizer, stream, cfg, seed: int, step: int, on_rollout):
    """Dynamic sampling for one step: batches from `stream` until cfg.batch_prompts informative groups are kept
    or MAX_REFILL_ROUNDS refills are spent. Returns (kept batches, their rewards, prompts sampled, dropped)."""
    kept: list[Rollout] = []
    kept_rewards: list[torch.Tensor] = []
    sampled, dropped = 0, 0
    for round_index in range(1 + MAX_REFILL_ROUNDS):
        need = cfg.batch_prompts - sum(len(b.texts) // b.group_size for b in kept)
        if need <= 0:
            break
        batch, scores = sample_steps(engine, tokenizer, list(itertools.islice(stream, need)), cfg,
                                     seed=seed * 1_000_003 + step * 101 + round_index)
        if on_rollout is not None:
            on_rollout(batch, scores)
        rewards = torch.tensor(scores, dtype=torch.float32).view(-1, cfg.group_size)  # (G, n)
        informative = keep_informative(rewards, cfg.srl_epsilon)
        sampled += rewards.shape[0]
        dropped += int((~informative).sum())
        groups = [g for g in range(rewards.shape[0]) if informative[g]]
        if groups:
            kept.append(_select(batch, groups))
            kept_rewards.append(rewards[groups])
    return kept, kept_rewards, sampled, dropped


def _merged(batches: list[Rollout], group_size: int) -> Rollout:
    merged = Rollout([], [], [], [], [], group_size, 0, 0.0)
    for b in batches:
        for name in ("problems", "prompt_ids", "completion_ids", "old_logprobs", "texts"):
            getattr(merged, name).extend(getattr(b, name))
        merged.sampled_tokens += b.sampled_tokens
        merged.seconds += b.seconds
    return merged


def train_srl_then_rlvr(baseline, tokenizer, problems, domain, cfg, steps: int | None = None, seed: int = 0,
                        reference=None, log=None, on_rollout=None):
    """SRL for round(srl_share * steps) steps, then outcome-reward RL from the SRL weights on the same
    problems (the paper's SRL -> RLVR; it publishes no schedule, so the share is config)."""
    total = cfg.steps if steps is None else steps
    srl_steps = first_phase_steps(cfg.srl_share, total)
    reference = reference if reference is not None else baseline
    srl_student, srl_metrics = train_srl(baseline, tokenizer, problems, domain, cfg, steps=srl_steps, seed=seed,
                                         reference=reference, log=log, on_rollout=on_rollout)
    if total - srl_steps <= 0:
        return srl_student, srl_metrics
    rlvr_log = None if log is None else (lambda record: log({**record, "step": srl_steps + record["step"]}))
    student, metrics = train_student(srl_student, tokenizer, problems, domain, cfg, steps=total - srl_steps,
                                     seed=seed + 1, reference=reference, log=rlvr_log, on_rollout=on_rollout)
    metrics.per_step = srl_metrics.per_step + metrics.per_step
    metrics.steps = len(metrics.per_step)
    metrics.updates += srl_metrics.updates
    return student, metrics
