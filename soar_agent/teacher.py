"""The SOAR teacher: rejection-sample well-formed items, have the teacher write a worked solution to each
of its own questions when students learn from its answers, check both against the domain's exact solver
(where it has one: it records whether the teacher was right, and under reward_target = verified replaces
its answer), and update the teacher with RLOO over datasets (every item of dataset k, question and
solution, gets advantage R_k - mean_{j!=k} R_j).

Why the teacher solves its own question in the students' format instead of writing the answer inside its
item: asked for `<answer>` the shipped model writes a number without working, right for 0.8% of its items
(256 arith items, seed 1); asked to solve the same questions as a student would, it is right for 49% at
T=1 (59% greedy: L1 100%, L2 72%, L3 39%, L4 9%), and the solution carries the steps a supervised student
phase needs. A real model writes in its own solution format the same way, and a domain without a solver
(gym, math with a user's hard set) needs nothing more. The solution is sampled at the teacher's
temperature, so it is on-policy and the teacher's update covers it: a teacher whose right solutions help
students learns to write right ones.

Simplifications versus the paper: one policy-gradient step per teacher step; no KL to the initial
teacher. The update is REINFORCE on the item: each item's log-prob is the sum over the tokens the teacher
sampled (its stop string, and EOS only when it sampled one; nothing appended for parsing), averaged over
items, with the RLOO baseline (ratio 1 because the update is on-policy). Items written before sampled ids
were kept are re-tokenized from their text.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

import torch

from soar_agent.tasks import parse_item, teacher_prompt
from soar_agent.tasks.base import Problem, RejectedItem, split_solution


class TeacherGarbage(RuntimeError):
    """The teacher produced too few well-formed items within its rejection-sampling budget."""


@dataclass
class TeacherItem:
    text: str  # the raw completion the teacher wrote
    problem: Problem  # what students train on (answer chosen by reward_target)
    teacher_answer: str
    verified: bool | None  # teacher's answer matches the exact solver (None: no solver for the domain)
    token_ids: list[int] | None = None  # exactly what the teacher sampled (+ EOS when it sampled EOS)
    solution: str | None = None  # the teacher's worked solution in the students' format (writes_solutions)
    solution_token_ids: list[int] | None = None  # its sampled tokens (+ EOS), for the teacher update


def writes_solutions(domain, reward_target: str) -> bool:
    """Whether students learn from the teacher's own answers, so the teacher writes a worked solution to each
    of its questions: always but under reward_target = verified on a domain with an exact solver."""
    return reward_target != "verified" or not hasattr(domain, "make_problem")


def solution_parts(domain, solution: str) -> tuple[str, tuple[str, ...]]:
    """(answer, steps) of a worked solution in the students' format: the domain's answer line, and the
    lines above it as steps (numbering stripped; `domain.expert_completion` renders them back). RejectedItem
    when it has no answer a student could be scored against."""
    answer = domain.extract_answer(solution)
    if answer is None:
        raise RejectedItem("the teacher's worked solution has no final answer line")
    lines = [line for line in solution.strip().splitlines() if line.strip()][:-1]
    try:
        steps = split_solution("\n".join(lines)) if lines else ()
    except ValueError:  # an empty numbered step: the answer alone still trains RL
        steps = ()
    return answer, steps


def check_item(domain, text: str, reward_target: str, solution: str | None = None) -> TeacherItem:
    """Parse one teacher completion (and the teacher's worked solution to its question, when it wrote one)
    into an item, or RejectedItem with the reason. With a solution, the teacher's answer is the solution's,
    and students train on its steps unless reward_target = verified puts the solver's in their place."""
    question, inline_answer = parse_item(text)
    answer, steps = solution_parts(domain, solution) if solution is not None else (inline_answer, ())
    if hasattr(domain, "make_problem"):
        exact = domain.make_problem(question)  # RejectedItem when the question is not a valid problem
        verified = (answer if solution is not None else domain.extract_answer(f"Answer: {answer}")) == exact.answer
        if reward_target == "drop-unverified" and not verified:
            raise RejectedItem("teacher's answer is wrong (reward_target = drop-unverified)")
        level = domain.difficulty(exact.question) if hasattr(domain, "difficulty") else None  # as the generator counts
        if reward_target == "verified" or (solution is None and reward_target == "drop-unverified"):
            target, steps = exact.answer, exact.steps
        elif solution is None:  # a dataset stored before teachers wrote solutions: the solver's steps end at
            # the solver's answer, so a wrong teacher answer keeps none (they would contradict it)
            target, steps = answer, exact.steps if verified else ()
        else:  # the teacher's own solution, right or wrong: the solver only recorded which
            target = answer
        problem = Problem(exact.question, target, domain.NAME, level, steps)
        return TeacherItem(text, problem, answer, verified, solution=solution)
    return TeacherItem(text, Problem(question, answer, domain.NAME, None, steps), answer, None, solution=solution)


def sampled_ids(engine, completion) -> list[int]:
    """The tokens a completion sampled, with EOS when it ended on EOS (what the teacher update trains)."""
    eos = completion.finish_reason == "stop" and completion.stop_text is None
    return list(completion.token_ids) + (
        [engine.tokenizer.eos_token_id] if eos and hasattr(engine, "tokenizer") and
        completion.token_ids[-1:] != [engine.tokenizer.eos_token_id] else [])


def sample_items(engine, domain, count: int, cfg, seed: int, progress=None, fits=None,
                 solution_tokens: int | None = None) -> tuple[list[TeacherItem], dict]:
    """Rejection sampling until `count` items parse (RLOO's advantages sum to zero over datasets, so
    dropping malformed items leaves the teacher gradient unbiased). `fits(problem)`, when given, rejects an
    item whose student prompt does not fit the students' context (counted with the other rejections).
    With `solution_tokens` the teacher also solves each well-formed question in the students' format within
    that many tokens (writes_solutions); an item whose solution has no answer is rejected.
    Raises TeacherGarbage."""
    prompt = teacher_prompt(domain)
    items: list[TeacherItem] = []
    rejected: list[list[int]] = []  # the sampled tokens of rejected completions, for the update's penalty
    reasons: dict[str, int] = {}
    sampled = 0
    for round_index in range(cfg.max_sampling_rounds):
        need = count - len(items)
        if need <= 0:
            break
        (row,) = engine.generate([prompt], n=round_size(need, count, len(items), sampled),
                                 temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, stop=["</answer>"],
                                 seed=seed * 7919 + round_index)
        sampled += len(row)
        candidates = _well_formed(engine, domain, row, fits, reasons, rejected, count)
        solutions = [None] * len(candidates)
        if solution_tokens and candidates:
            solved = engine.generate([domain.student_prompt(question) for _, _, question in candidates], n=1,
                                     temperature=cfg.temperature, max_new_tokens=solution_tokens,
                                     seed=seed * 7919 + round_index + 104729)
            solutions = [completions[0] for completions in solved]
        items += _checked_items(engine, domain, cfg, candidates, solutions, reasons, rejected, count)
        if progress is not None:
            progress(min(len(items), count))
        rounds_left = cfg.max_sampling_rounds - round_index - 1
        if not sampled or len(items) / sampled * rounds_left * MAX_ROUND_FACTOR * count < count - len(items):
            break  # the rounds left cannot fill the datasets at this rate: garbage now, not after all of them
    # the rejected completions' tokens (the first `count`, a seeded sample) ride along for the teacher update
    # (teacher_update's `rejected`); the caller takes them out before logging the stats
    stats = {"sampled": sampled, "accepted": min(len(items), count), "rejected": reasons,
             "rejected_token_ids": rejected}
    if len(items) < count:
        raise TeacherGarbage(f"teacher wrote {len(items)} well-formed items of {count} needed in {round_index + 1}"
                             f" of {cfg.max_sampling_rounds} rounds ({sampled} samples; rejections: {reasons})")
    return items[:count], stats


def _well_formed(engine, domain, row: list, fits, reasons: dict, rejected: list, count: int) -> list[tuple]:
    """(text, token_ids, question) of a round's completions whose question parses (and fits, with `fits`);
    the others are counted as rejections."""
    candidates = []
    for completion in row:
        eos = completion.finish_reason == "stop" and completion.stop_text is None
        # an item the teacher ended with EOS before closing </answer> still parses; the closing tag
        # is added for parsing only, never trained on (token_ids)
        text = completion.text + (completion.stop_text or "") + ("</answer>" if eos and "</answer>" not in
                                                                 completion.text else "")
        token_ids = sampled_ids(engine, completion)
        try:
            item = check_item(domain, text, "verified")  # the question alone: is it one, does it fit
            if fits is not None and not fits(item.problem):
                raise RejectedItem("question too long for the students' context")
            candidates.append((text, token_ids, item.problem.question))
        except RejectedItem as error:
            _reject(error, token_ids, reasons, rejected, count)
    return candidates


def _checked_items(engine, domain, cfg, candidates: list[tuple], solutions: list, reasons: dict, rejected: list,
                   count: int) -> list[TeacherItem]:
    """The round's items, each checked with the teacher's solution to it (None when it wrote none)."""
    items = []
    for (text, token_ids, _), solution in zip(candidates, solutions):
        try:
            item = check_item(domain, text, cfg.reward_target, None if solution is None else solution.text)
        except RejectedItem as error:  # the question parsed: only an item without a solution is penalized
            _reject(error, token_ids if solution is None else None, reasons, rejected, count)
            continue
        item.token_ids = token_ids
        if solution is not None:
            item.solution_token_ids = sampled_ids(engine, solution)
        items.append(item)
    return items


def _reject(error: RejectedItem, token_ids: list[int] | None, reasons: dict, rejected: list, count: int) -> None:
    reason = rejection_kind(error)
    reasons[reason] = reasons.get(reason, 0) + 1
    if token_ids is not None and len(rejected) < count:
        rejected.append(token_ids)


MAX_ROUND_FACTOR = 4  # a round asks for at most this many times a step's items


def round_size(need: int, count: int, accepted: int, sampled: int) -> int:
    """How many completions a sampling round asks for: the first assumes two in three parse; later ones
    follow the share accepted so far, with a tenth more. A teacher that learned to write longer questions
    has more of them rejected (a default run's fell to 37% by its seventh step), and a fixed 1.5x left that
    step 9 items short of 5,760 after 8 rounds, three times, which stopped the run as garbage. At most
    MAX_ROUND_FACTOR x count a round, so that a teacher writing garbage still ends in its rounds."""
    if not sampled:
        return need + need // 2 + 2
    # (none accepted after a round ends the sampling in sample_items before another is sized)
    return min(math.ceil(need * sampled / max(accepted, 1) * 1.1) + 2, MAX_ROUND_FACTOR * count)


def rejection_kind(error: RejectedItem) -> str:
    """The reason an item was rejected, without the text-specific parts (the offending character, a
    position, a number), so a step's rejection counts group by kind: a drifting teacher wrote hundreds of
    distinct "unexpected character 'a' at position 5" reasons a step."""
    reason = re.sub(r" at position \d+", "", str(error).split(":")[0])
    return re.sub(r"'[^']*'", "'…'", reason)[:60]


def split_items(items: list[TeacherItem], datasets: int, split: str) -> list[list[TeacherItem]]:
    """The step's items as `datasets` equal datasets (teacher.split). random: in sampling order, so the
    datasets are i.i.d. draws of the teacher (the paper's). length: sorted by question length (stable), the
    shortest first. With thousands of items per dataset, i.i.d. datasets are near copies and the teacher's
    RLOO advantages are student noise; strata of its own output by length (a domain-free difficulty proxy)
    differ in what they teach, and each stratum's advantage goes to its items. That is a credit-assignment
    heuristic, not the paper's unbiased estimator: the reward of a stratum depends on where the cut falls."""
    if split == "length":
        items = sorted(items, key=lambda item: len(item.problem.question))
    size = len(items) // datasets
    return [items[k * size:(k + 1) * size] for k in range(datasets)]


def rloo_dataset_advantages(rewards: list[float]) -> list[float]:
    """A_k = R_k - mean_{j != k} R_j over the g datasets of one teacher step."""
    g = len(rewards)
    if g < 2:
        return [0.0] * g
    total = sum(rewards)
    return [r - (total - r) / (g - 1) for r in rewards]


# Items per forward/backward pass of the teacher update (the student core's micro-batching, gradients
# accumulated into the one step): the whole step's items in one pass need memory in proportion to g x n.
# Measured (bench/teacher_memory.py, shipped model, one thread, 2 x 512 items): peak RSS 9.18 GB in one pass,
# 1.34 GB (and 2.2x faster: rows of similar length share a pass) in passes of 64; a step of 2 x 2,880 items
# in one pass was OOM-killed at 23 GB on the 24 GiB development machine (all measured when every row still
# ran the 135-token prompt; a pass now runs it once for its rows: rl.train.shared_prompt).
TEACHER_MICRO_BATCH = 64


def reinforce_loss(new_logprobs, old_logprobs, advantages, mask, eps_low, eps_high, aggregation="sequence"):
    """REINFORCE on the item, with clipped_surrogate's signature (the `policy_step` loss seam): -mean over
    rows of A * (sum of the row's sampled-token log-probs), not a per-token mean; no ratio, no clipping."""
    return -(advantages * (new_logprobs * mask).sum(-1)).mean(), {"clip_fraction": 0.0, "ratio_mean": 1.0}


def teacher_update(teacher, optimizer, tokenizer, domain, datasets: list[list[TeacherItem]],
                   rewards: list[float], grad_clip: float = 1.0, micro_batch: int = TEACHER_MICRO_BATCH,
                   rejected: list[list[int]] = (), reject_penalty: float = 0.0, progress=None) -> dict:
    """One policy-gradient step of the teacher on its datasets' RLOO advantages: loss = -mean over items of
    A_k * (sum of the item's sampled-token log-probs), through the student core's `policy_step` (`micro_batch`
    items per pass, rows of similar length together; sequence aggregation makes the passes' sum that mean).
    An item's worked solution (TeacherItem.solution_token_ids, after the students' prompt of its question)
    is a row of its own with the item's advantage: the teacher wrote it, and students trained on it.
    `rejected` (sampled tokens of completions that did not parse or were out of the domain's range) join
    the step with advantage -reject_penalty x mean |A_k| (teacher.reject_penalty; 0 leaves them out).
    Raises FloatingPointError, without stepping, when the loss or the gradient norm is not finite.
    `progress(done, rows)` after each micro-batch (policy_step's on_rows): the step takes minutes."""
    from soar_agent.config import StudentSection
    from soar_agent.rl.train import NonFiniteLoss, Rollout, pad_token_id, policy_step

    started = time.time()
    advantages = rloo_dataset_advantages(rewards)
    prompt_ids = tokenizer(teacher_prompt(domain))["input_ids"]
    completion_ids, item_advantages, row_prompts = [], [], []
    for items, advantage in zip(datasets, advantages):
        for item in items:
            completion_ids.append(item.token_ids or tokenizer(item.text, add_special_tokens=False)["input_ids"])
            item_advantages.append(advantage)
            row_prompts.append(prompt_ids)
            if item.solution is not None:
                completion_ids.append(item.solution_token_ids or
                                      tokenizer(item.solution, add_special_tokens=False)["input_ids"])
                item_advantages.append(advantage)
                row_prompts.append(tokenizer(domain.student_prompt(item.problem.question))["input_ids"])
    solution_rows = len(completion_ids) - sum(len(items) for items in datasets)
    # Why: RLOO over the kept items only is unbiased for the reward (the paper's rejection sampling), but it
    # says nothing about the items dropped, and a teacher pushed toward longer questions (teacher.split =
    # length: the longer half won every step of the default runs) writes more that do not parse: 67% of its
    # items were kept at step 1, 36% at step 7, falling ~5 points a step (bench/teacher_format.py)
    penalty = reject_penalty * sum(abs(a) for a in advantages) / max(1, len(advantages))
    if penalty and rejected:
        completion_ids += [list(ids) for ids in rejected if ids]
        item_advantages += [-penalty] * (len(completion_ids) - len(item_advantages))
        row_prompts += [prompt_ids] * (len(completion_ids) - len(row_prompts))
    stats = {"advantages": advantages, "items": len(completion_ids), "updated": False, "loss": 0.0,
             "tokens": sum(len(ids) for ids in completion_ids), "solution_rows": solution_rows,
             "rejected_items": len(completion_ids) - sum(len(items) for items in datasets) - solution_rows}
    if not any(item_advantages):
        return stats | {"seconds": time.time() - started}
    teacher.eval()  # dropout off, as the students
    batch = Rollout([None] * len(completion_ids), row_prompts, completion_ids,
                    [[math.nan] * len(ids) for ids in completion_ids], [""] * len(completion_ids), 1, 0, 0.0)
    # temperature 1: the item's log-probs under the teacher itself; no KL, no clipping (reinforce_loss)
    cfg = StudentSection(micro_batch=micro_batch, kl_coef=0.0, loss_aggregation="sequence", temperature=1.0,
                         grad_clip=grad_clip)
    try:
        step = policy_step(teacher, optimizer, batch, torch.tensor(item_advantages, dtype=torch.float32), cfg,
                           pad_token_id(tokenizer), surrogate=lambda rows: reinforce_loss, on_rows=progress)
    except NonFiniteLoss as error:
        raise FloatingPointError(f"teacher: {error}") from None
    stats.update(updated=step["updated"], loss=step["loss"], grad_norm=step["grad_norm"],
                 seconds=time.time() - started)  # soar status --profile
    return stats


def intrinsic_rewards(success_rates: list[list[float]]) -> list[float]:
    """The paper's Intrinsic-T baseline: item reward 0 if the student never solves it, else 1 - s,
    averaged over each dataset."""
    return [sum(0.0 if s == 0 else 1.0 - s for s in rates) / len(rates) if rates else 0.0
            for rates in success_rates]
