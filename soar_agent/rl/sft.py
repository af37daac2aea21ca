"""`sft-rlvr`: supervised steps on the problems' expert solutions, then outcome-reward RL from those weights.

Why a student needs it (measured on the shipped model, bench/README.md): outcome RL can only reinforce
answers the student already samples. On the arith level-4 problems greedy decoding gets wrong the shipped
model samples the right answer 3.7% of the time, so RLOO leaves level 4 flat at every setting tried, while
supervised steps on the domain's expert solutions of the same levels lift it by +29 points. The built-in
domains (arith, program) compute an expert solution for every problem they verify, teacher-written ones
included (teacher.reward_target = verified), so a student can first learn the skill from those and then
sharpen it with RL on its own samples. Under teacher.reward_target = teacher the steps are the teacher's own
worked solutions instead (teacher.py). The teacher's datasets never hold a hard-set question (the agent's
contract); hard-train's worked solutions are trained on only by the final training and hard-only students
under reward_target = verified (Agent.hard_train_for_students); hard-val and hard-test never are.

One SFT step trains batch_prompts x group_size expert completions (as many rows as one RL step's policy
update, at about a fifth of its cost: nothing is sampled), each the domain's `expert_completion` + EOS,
through the core's `policy_step` with its loss seam set to the negative log-likelihood (`nll_loss`,
aggregated like the surrogate), so grad-norm clipping, micro-batching and the non-finite guard are the
core's. No KL in this phase (it is supervised, not a policy update).

Choices (measured: bench/README.md, "Student learning: expert solutions, then RL"):
* Learning rate student.sft_lr (3e-4) with a linear warmup over the first SFT_WARMUP_SHARE of the SFT
  steps, then constant: the recipe `bench/sft_ceiling.py` found (lr 1e-4 left the model flat; 1e-3 knocks
  it down before it recovers). The RL phase keeps student.lr with a fresh optimizer.
* The RL phase's KL reference is the SFT weights, not the baseline, as RL after SFT is usually done: a
  penalty towards the baseline would pull the student back from what the SFT phase taught it.
* The supervised phase makes at most one pass over the expert solutions: a step takes batch_prompts x
  group_size of them (fewer when there are fewer), and the steps a smaller curriculum cannot fill go to the
  RL phase. Measured (bench/student_learns.py, arith L3-5 greedy, 100 problems/level): 8 steps (7
  supervised) on 16 problems, each seen 28 times, -14.3 points (rloo on the same: -3.0); 50 steps on 512
  problems (5.6 passes) -4.3; 50 steps on fresh problems -0.7; 500 steps on fresh problems +25.4. A teacher
  dataset of 16 items is one small supervised step, then RL.
* Problems without expert steps, and expert completions longer than student.max_new_tokens (the student
  could never write them), are left out of the SFT phase; RL still sees every problem. A curriculum with no
  writable expert solution at all (a domain without a solver, teacher.reward_target = teacher) trains with
  RL for all its steps: sft-rlvr is the default backend, and a run on such a domain should still run (the
  agent says so once when the run starts). `train_sft` alone refuses it (ValueError).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time

import torch

from soar_agent.rl.loss import aggregate
from soar_agent.rl.train import (NonFiniteLoss, Rollout, first_phase_steps, new_student, pad_token_id, policy_step,
                                 problem_stream, select_rows, summarize_steps, train_student)
from soar_agent.tasks.base import Problem

SFT_WARMUP_SHARE = 0.1  # of the SFT steps; bench/sft_ceiling.py's measured recipe warms up over 8-10%


def nll_loss(new_logprobs, old_logprobs, advantages, mask, eps_low, eps_high, aggregation="token"):
    """Negative log-likelihood of the target tokens, aggregated, with clipped_surrogate's signature and stats:
    the loss `policy_step` uses for the SFT phase. (clipped_surrogate with advantage 1 and ratio 1 has the same
    gradient, but its value is always -1: this one's value is the figure worth logging.)"""
    return aggregate(-new_logprobs, mask, aggregation), {"clip_fraction": 0.0, "ratio_mean": 1.0}


def expert_rows(tokenizer, domain, problems: list[Problem]) -> Rollout:
    """The problems' expert completions (+ EOS) as a batch for `policy_step` (behaviour log-probs: not
    recorded, NaN; the SFT loss does not read them)."""
    prompts = [tokenizer(domain.student_prompt(p.question), add_special_tokens=True)["input_ids"] for p in problems]
    completions = [tokenizer(domain.expert_completion(p), add_special_tokens=False)["input_ids"]
                   + [tokenizer.eos_token_id] for p in problems]
    return Rollout(list(problems), prompts, completions, [[math.nan] * len(c) for c in completions],
                   [""] * len(problems), 1, 0, 0.0)


def writable_experts(tokenizer, domain, problems: list[Problem], max_new_tokens: int) -> Rollout:
    """The expert rows (`expert_rows`, tokenized once) of the problems that have expert steps and whose
    expert completion the student can write within its token budget (none on a domain without
    `expert_completion`, whatever steps its problems carry)."""
    rows = expert_rows(tokenizer, domain, [p for p in problems if p.steps and hasattr(domain, "expert_completion")])
    return select_rows(rows, [i for i, c in enumerate(rows.completion_ids) if len(c) <= max_new_tokens])


def train_sft(baseline, tokenizer, problems: list[Problem], domain, cfg, steps: int, seed: int = 0, log=None,
              experts: Rollout | None = None):
    """`steps` supervised steps of batch_prompts x group_size expert completions on a copy of `baseline`
    (`experts`: the problems' `writable_experts`, when the caller has them). Returns (student, per-step
    records); a record's "loss" is the mean per-token negative log-likelihood."""
    if experts is None:
        experts = writable_experts(tokenizer, domain, problems, cfg.max_new_tokens)
    if not experts.problems:
        raise ValueError("sft-rlvr needs problems with expert steps that fit student.max_new_tokens "
                         f"(none of the {len(problems)} given problems has one)")
    student, optimizer = new_student(baseline, cfg)
    supervised = dataclasses.replace(cfg, kl_coef=0.0)
    stream = problem_stream(list(range(len(experts.problems))), random.Random(seed))  # row indices
    rows, warmup = sft_rows(cfg, len(experts.problems)), max(1, round(SFT_WARMUP_SHARE * steps))
    pad_id = pad_token_id(tokenizer)
    per_step = []
    for step in range(steps):
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = cfg.sft_lr * min(1.0, (step + 1) / warmup)
        batch = select_rows(experts, [next(stream) for _ in range(rows)])
        try:
            stats = policy_step(student, optimizer, batch, torch.ones(rows), supervised, pad_id,
                                surrogate=lambda chunk: nll_loss)
        except NonFiniteLoss as error:
            raise NonFiniteLoss(f"sft step {step}: {error}") from None
        # no rollouts in this phase: reward figures are NaN, so the run's reward means cover the RL steps only
        record = {"step": step, "phase": "sft", "reward_mean": math.nan, "reward_std": math.nan,
                  "zero_std_fraction": math.nan, "completion_length": sum(map(len, batch.completion_ids)) / rows,
                  "tokens_per_second": 0.0, **stats, "seconds": time.perf_counter() - started}
        per_step.append(record)
        if log is not None:
            log(record)
    return student, per_step


def sft_rows(cfg, experts: int) -> int:
    """Expert solutions per supervised step: batch_prompts x group_size, or all of them when there are fewer
    (a step never repeats one)."""
    return min(cfg.batch_prompts * cfg.group_size, experts)


def sft_steps_of(cfg, steps: int, experts: int | None = None) -> int:
    """How many of a sft-rlvr training's `steps` are supervised: sft_share of them, capped at one pass over
    `experts` expert solutions when given (see the module docstring)."""
    wanted = first_phase_steps(cfg.sft_share, steps)
    return wanted if experts is None else min(wanted, math.ceil(experts / max(1, sft_rows(cfg, experts))))


def problems_drawn(cfg, steps: int) -> int:
    """Problems `steps` training steps draw from their stream: batch_prompts per RL step, and for sft-rlvr
    batch_prompts x group_size expert solutions per supervised step. A curriculum this long (curated mode,
    bench/student_learns.py) trains on every problem once: recycling a small pool lifts the training
    figures, not held-out accuracy (measured, bench/README.md)."""
    if cfg.backend != "sft-rlvr":
        return steps * cfg.batch_prompts
    sft_steps = sft_steps_of(cfg, steps)
    return sft_steps * cfg.batch_prompts * cfg.group_size + (steps - sft_steps) * cfg.batch_prompts


def train_sft_then_rlvr(baseline, tokenizer, problems, domain, cfg, steps: int | None = None, seed: int = 0,
                        reference=None, log=None, on_rollout=None, engine=None, experts: Rollout | None = None):
    """round(sft_share * steps) SFT steps on the problems' expert solutions (at most one pass over them), then
    outcome-reward RL (`train_student`, RLOO) from the SFT weights on the same problems, with the SFT weights
    as KL reference. Same contract as `train_student`; its StudentMetrics means cover the RL steps, per_step
    every step. Without a writable expert solution every step is RL (see the module docstring). `reference`
    is accepted for the common signature and unused. `experts`: the problems' `writable_experts`, when the
    caller has them (a chain of trainings on one pool tokenizes its solutions once: pq.evaluate_pq)."""
    total = cfg.steps if steps is None else steps
    if experts is None:
        experts = writable_experts(tokenizer, domain, problems, cfg.max_new_tokens)
    if not experts.problems:
        return train_student(baseline, tokenizer, problems, domain, cfg, steps=total, seed=seed,
                             reference=None, log=log, on_rollout=on_rollout, engine=engine)
    sft_steps = sft_steps_of(cfg, total, len(experts.problems))
    student, sft_records = train_sft(baseline, tokenizer, problems, domain, cfg, sft_steps, seed=seed, log=log,
                                     experts=experts)
    rl_records = []
    if total > sft_steps:
        rl_log = None if log is None else (lambda record: log({**record, "step": sft_steps + record["step"]}))
        student, metrics = train_student(student, tokenizer, problems, domain, cfg, steps=total - sft_steps,
                                         seed=seed + 1, reference=student, log=rl_log, on_rollout=on_rollout,
                                         engine=engine)
        rl_records = [{**r, "step": sft_steps + r["step"]} for r in metrics.per_step]
    # the summary figures are the RL phase's (the supervised steps sample nothing); with no RL phase, the loss
    # is the supervised NLL
    metrics = summarize_steps(rl_records)
    if not rl_records:
        metrics.loss = sum(r["loss"] for r in sft_records) / len(sft_records)
    metrics.per_step, metrics.steps = sft_records + rl_records, total
    metrics.updates = sum(r["updated"] for r in metrics.per_step)
    return student, metrics
