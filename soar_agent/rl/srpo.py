"""SRPO, two-Staged history-Resampling Policy Optimisation (arXiv 2504.14286): GRPO with History
Resampling and a two-stage problem schedule, for outcome-reward (RLVR) students.

This file owns what SRPO changes on the shared core (`train.rollout`, `train.policy_step`):
* History Resampling (`resample`, `Resampler`): every problem's rollout correctness is recorded; at each
  boundary the problems whose recorded rollouts were *all correct* are dropped, mixed and all-wrong ones
  are kept (an all-wrong problem may become solvable later; DAPO's dynamic sampling would drop it too).
  A problem without records since the last boundary is kept. A dropped problem stays dropped for the rest
  of the training: only new rollouts could show it unsolved again, and it gets none.
* The history survives a resume: the trainer takes `history` (question -> correctness of earlier
  rollouts) as the records of the boundary before its first step, and the driver fills it from the
  store (`stored_history`), where every student rollout already lives with its correctness.
* Two stages (`stage_problems`, `switch_now`): stage 1 trains on `student.srpo_stage1`'s problems, stage 2
  on `student.srpo_stage2`'s, from the stage-1 weights (one optimizer, no restart).
* GRPO advantages (the paper's), with over-length completions (ran into max_new_tokens without
  finishing) given advantage 0 and left out of their group's mean and std (`srpo_advantages`).
* No KL by default (`student.srpo_kl_coef` = 0; `student.kl_coef` is the other backends' and is not used
  here), token-level loss (`student.loss_aggregation`'s default), clip 0.2 (`eps_low`/`eps_high`'s
  defaults; the paper does not publish its clip range).

Deviations from the paper:
* The resampling boundary: the paper's is the epoch. A student's training is often about one pass over
  its dataset, so the boundary is `student.srpo_resample_every`: 0 = the end of each pass over the
  stage's problems (the paper's epoch; a batch may straddle two passes, and records of the straddling
  batch are judged at the next boundary), N = every N steps. A stage switch is a boundary too.
* Across trainings (`stored_history`): a question's history is the correctness of every student rollout
  of the latest *earlier teacher step* that trained on it (all its students pooled; unscored rollouts
  left out). Earlier steps only, so a unit's history does not depend on which other units of its own
  step finished first (serial, parallel and redone units get the same job). A hard-only run's units
  therefore see history one teacher step late.
* The stages: the paper's stage 1 is hard math and stage 2 math + code; it publishes no switch rule.
  Inside one student's training the defaults are stage 1 = the harder half of the problems (level at or
  above the median-ranked problem's; all of them when some level is unknown or all levels are equal),
  stage 2 = all, switching before step `student.srpo_switch_step` (0 = halfway through the training) or,
  with `student.srpo_plateau_window` W > 0, earlier once stage 1's mean train reward over its last W
  steps is no higher than over the W steps before (a plateau; resampling lowers that reward by itself
  as solved problems leave, which counts as a plateau too).
* "Correct" is reward > 0, as stored rollouts record it (`student_job.rollout_rows`). If resampling
  would drop every problem of the stage, none is dropped (nothing is informative either way).
* The paper's constant LR 1e-6, 256 prompts x 32 rollouts and AdamW betas (0.9, 0.95) are for a 32B
  model on a cluster; the student's own lr, batch_prompts, group_size and the core's AdamW are used, so
  srpo and rloo differ by the algorithm only. No format or language-mixing reward: the domain's
  verifier is the reward, as for every backend.
"""

from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass, field, replace

import torch

from soar_agent.engine import HFEngine
from soar_agent.rl.advantages import grpo_advantages
from soar_agent.rl.train import (NonFiniteLoss, _reward_stats, new_student, pad_token_id, policy_step, reward_correct,
                                 rollout, score_rollout, summarize_steps)
from soar_agent.tasks.base import Problem

_STEP_REF = re.compile(r"^step-(\d+)/")  # a student rollout's ref: step-N/student-I-J (students.student_job)


def is_correct(score: float) -> float:
    """A rollout's correctness as history records it: 1.0 when rewarded (> 0), as stored rollouts are."""
    return 1.0 if score > 0 else 0.0


def all_correct(records: list[float] | None) -> bool:
    return bool(records) and all(r >= 1.0 for r in records)


def resample(problems: list[Problem], records: dict[str, list[float]]) -> list[Problem]:
    """History Resampling at a boundary: `problems` without those whose recorded rollouts (question ->
    correctness since the last boundary) were all correct. Mixed, all-wrong and unrecorded ones stay."""
    return [p for p in problems if not all_correct(records.get(p.question))]


def srpo_advantages(rewards: torch.Tensor, overlong: torch.Tensor, mask_overlong: bool = True) -> torch.Tensor:
    """GRPO advantages (G, n) -> (G, n); an over-length completion (`overlong` (G, n) True) gets 0 and
    is left out of its group's mean and std, as an unscorable one is: a cut-off answer says nothing
    about whether the reasoning was right."""
    if mask_overlong:
        rewards = rewards.masked_fill(overlong, math.nan)
    return grpo_advantages(rewards)


def harder_half(problems: list[Problem]) -> list[Problem]:
    """The problems at or above the level of the median-ranked one (ties included); all of them when a
    level is unknown or every level is the same (no ranking to split by)."""
    levels = sorted(p.level for p in problems if p.level is not None)
    if len(levels) < len(problems) or not levels or levels[0] == levels[-1]:
        return list(problems)
    threshold = levels[len(levels) // 2]
    return [p for p in problems if p.level >= threshold]


def stage_problems(problems: list[Problem], source: str) -> list[Problem]:
    """A stage's problems for `student.srpo_stage1` / `srpo_stage2`: harder-half or all."""
    if source == "all":
        return list(problems)
    if source == "harder-half":
        return harder_half(problems)
    raise ValueError(f"unknown SRPO stage source {source!r} (expected harder-half or all)")


def switch_step(cfg, total: int) -> int:
    """The step before which stage 2 starts by the step rule (0 in config = halfway)."""
    return cfg.srpo_switch_step if cfg.srpo_switch_step > 0 else total // 2


def plateaued(rewards: list[float], window: int) -> bool:
    """Stage 1's mean train reward over its last `window` steps is no higher than over the ones before."""
    if window <= 0 or len(rewards) < 2 * window:
        return False
    recent, before = rewards[-window:], rewards[-2 * window:-window]
    return sum(recent) / window <= sum(before) / window


def switch_now(cfg, step: int, total: int, stage1_rewards: list[float]) -> bool:
    """Whether step `step` (still in stage 1) starts stage 2: the step rule, or a plateau first."""
    return step >= switch_step(cfg, total) or plateaued(stage1_rewards, cfg.srpo_plateau_window)


@dataclass
class Resampler:
    """The problem stream of one SRPO training: shuffled passes over the active pool, pruned at boundaries.

    `records` holds correctness per question since the last boundary (seeded with the stored history, so
    the first boundary, before step 0, applies it); `dropped` the questions resampling removed."""

    rng: random.Random
    pool: list[Problem] = field(default_factory=list)
    order: list[Problem] = field(default_factory=list)
    position: int = 0
    records: dict[str, list[float]] = field(default_factory=dict)
    dropped: set[str] = field(default_factory=set)
    per_pass: bool = True  # boundary at the end of each pass (else the caller calls boundary() every N steps)

    def boundary(self) -> None:
        """Drop the pool's all-correct problems (unless that would drop them all) and forget the records."""
        kept = resample(self.pool, self.records)
        if kept:
            keep = {p.question for p in kept}
            self.dropped |= {p.question for p in self.pool} - keep
            self.pool = kept
            self.order = self.order[:self.position] + [p for p in self.order[self.position:] if p.question in keep]
        self.records = {}

    def start_stage(self, problems: list[Problem]) -> None:
        """A new stage: its problems without those already dropped, after a boundary, in a fresh pass."""
        self.pool = [p for p in problems if p.question not in self.dropped] or list(problems)
        self.boundary()
        self.new_pass()

    def new_pass(self) -> None:
        self.order = self.rng.sample(self.pool, len(self.pool))
        self.position = 0

    def draw(self, count: int) -> list[Problem]:
        batch = []
        while len(batch) < count:
            if self.position >= len(self.order):  # a pass is over: the paper's epoch boundary
                if self.per_pass:
                    self.boundary()
                self.new_pass()
            batch.append(self.order[self.position])
            self.position += 1
        return batch

    def record(self, problems: list[Problem], scores: list[float]) -> None:
        for problem, score in zip(problems, scores):
            if not math.isnan(score):  # unscored rollouts say nothing about the problem
                self.records.setdefault(problem.question, []).append(is_correct(score))


@dataclass
class _FinishRecordingEngine(HFEngine):
    """The core's engine, keeping the finish reasons of its last call (the core's Rollout does not hold
    them, and SRPO needs to know which completions ran into max_new_tokens)."""

    finish_reasons: list[str] = field(default_factory=list)

    def generate(self, prompts, n=1, **kwargs):
        outputs = super().generate(prompts, n=n, **kwargs)
        self.finish_reasons = [c.finish_reason for row in outputs for c in row]  # the Rollout's row order
        return outputs


def train_srpo(baseline, tokenizer, problems: list[Problem], domain, cfg, steps: int | None = None,
               reward_fn=None, seed: int = 0, reference=None, log=None, on_rollout=None,
               history: dict[str, list[float]] | None = None):
    """SRPO on `problems` for `steps` (default cfg.steps). Same contract as `train_student`: returns
    (student, StudentMetrics), `on_rollout(batch, rewards)` gets every sampled batch. `history`
    (question -> correctness of earlier rollouts, e.g. `stored_history`) seeds History Resampling.
    Each step's record adds stage, pool (active problems), dropped (so far) and overlong_fraction."""
    total = cfg.steps if steps is None else steps
    student, optimizer = new_student(baseline, cfg)
    engine = _FinishRecordingEngine(student, tokenizer)
    reward_fn = reward_fn or reward_correct(domain)
    reference = reference if reference is not None else baseline
    step_cfg = replace(cfg, kl_coef=cfg.srpo_kl_coef)  # policy_step reads kl_coef: SRPO's own, 0 by default
    pad_id = pad_token_id(tokenizer)
    if not problems:
        raise ValueError("train_srpo needs at least one problem")
    known = {p.question for p in problems}
    stream = Resampler(random.Random(seed), per_pass=cfg.srpo_resample_every == 0,
                       records={q: list(r) for q, r in (history or {}).items() if q in known and r})
    stream.start_stage(stage_problems(problems, cfg.srpo_stage1))
    stage, stage1_rewards, per_step = 1, [], []
    for step in range(total):
        started = time.perf_counter()
        if stage == 1 and switch_now(cfg, step, total, stage1_rewards):
            stage = 2
            stream.start_stage(stage_problems(problems, cfg.srpo_stage2))
        elif cfg.srpo_resample_every and step and step % cfg.srpo_resample_every == 0:
            stream.boundary()
        batch = rollout(engine, tokenizer, domain, stream.draw(cfg.batch_prompts), cfg.group_size,
                        cfg.temperature, cfg.max_new_tokens, seed=seed * 1_000_003 + step)
        overlong = torch.tensor([reason == "length" for reason in engine.finish_reasons]).view(-1, cfg.group_size)
        scores, rewards = score_rollout(batch, reward_fn, on_rollout)  # rewards (G, n)
        stream.record(batch.problems, scores)
        advantages = srpo_advantages(rewards, overlong, cfg.srpo_mask_overlong).flatten()  # (B,)
        try:
            stats = policy_step(student, optimizer, batch, advantages, step_cfg, pad_id, reference)
        except NonFiniteLoss as error:
            raise NonFiniteLoss(f"SRPO step {step}: {error}") from None
        record = {"step": step, **_reward_stats(rewards), **stats, "stage": stage, "pool": len(stream.pool),
                  "dropped": len(stream.dropped), "overlong_fraction": overlong.float().mean().item(),
                  "completion_length": batch.sampled_tokens / len(batch.texts),
                  "tokens_per_second": batch.sampled_tokens / batch.seconds if batch.seconds else 0.0,
                  "seconds": time.perf_counter() - started}
        if stage == 1:
            stage1_rewards.append(record["reward_mean"])
        per_step.append(record)
        if log is not None:
            log(record)
    return student, summarize_steps(per_step)


def stored_history(store, run_id: int, problem_ids: dict[str, int | None], step: int,
                   page: int = 1000) -> dict[str, list[float]]:
    """The driver's side of the resume: per question (-> its problem id in the store), the correctness of
    the student rollouts of the latest teacher step before `step` that trained on it (see the module
    docstring). Questions without such rollouts are left out. Reads the store; writes nothing."""
    history = {}
    for question, problem_id in problem_ids.items():
        if problem_id is None:
            continue
        by_step: dict[int, list[float]] = {}
        after = 0
        while True:
            rows = store.rollouts(run_id, problem_id=problem_id, phase="student", after_id=after, limit=page)
            for row in rows:
                match = _STEP_REF.match(row["ref"] or "")
                if match and int(match.group(1)) < step and row["correct"] is not None:
                    by_step.setdefault(int(match.group(1)), []).append(float(row["correct"]))
            if len(rows) < page:
                break
            after = rows[-1]["id"]
        if by_step:
            history[question] = by_step[max(by_step)]
    return history
