"""The grounded teacher reward: how much a student improved over the baseline on the reward questions Q_R
(drawn from hard-train), with its paired standard error.

Three metrics (`reward.metric`), each a score per reward question, so every reward is a paired difference
(student minus baseline on the same questions) and its standard error is std(per-question differences) /
sqrt(|Q_R|):
* greedy: 1/0 greedy correctness (the paper's). On fail@128 questions it moves in steps of 1/|Q_R|.
* sampled: fraction correct of `reward.samples` sampled completions, with the same sampling seed for the
  baseline and the student, so identical policies give identical scores and the difference is paired.
* expert-logprob: mean per-token log-likelihood (nats) of the domain's expert solution (steps + answer +
  EOS, the sequence the model was pretrained on); dense, deterministic, needs problems with expert steps.

Pure functions of (model, questions): the agent, `bench/reward_noise.py` and the tests call them directly.
"""

from __future__ import annotations

import math
from statistics import fmean, stdev

METRICS = ("greedy", "sampled", "expert-logprob")


def expert_logprob_unusable(domain, problems) -> str | None:
    """Why expert-logprob cannot score these reward questions (None when it can): it needs a domain that
    writes expert solutions and expert steps on every question."""
    if not hasattr(domain, "expert_completion"):
        return f"the {domain.NAME} domain has no expert solutions"
    missing = sum(not p.steps for p in problems)
    if missing:
        return f"{missing} of {len(problems)} hard-train questions have no expert steps"
    return None


def expert_logprobs(model, tokenizer, domain, problems, batch_size: int = 16, tick=None) -> list[float]:
    """Mean per-token log-prob of each problem's expert completion under the model (teacher forcing);
    `tick()` (the agent's heartbeat and commands) before each batch."""
    import torch

    from soar_agent.rl.train import sequence_logprobs

    scores: list[float] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(problems), batch_size):
            if tick is not None:
                tick()
            chunk = problems[start:start + batch_size]
            # prompt tokenized as the rollouts and the engine do; the completion as pretraining saw it
            prompts = [tokenizer(domain.student_prompt(p.question), add_special_tokens=True)["input_ids"]
                       for p in chunk]
            targets = [tokenizer(domain.expert_completion(p), add_special_tokens=False)["input_ids"] +
                       [tokenizer.eos_token_id] for p in chunk]
            logprobs, mask, _ = sequence_logprobs(model, prompts, targets, tokenizer.pad_token_id)
            scores.extend((logprobs.sum(-1) / mask.sum(-1)).tolist())
    model.train(was_training)
    return scores


def question_scores(model, tokenizer, domain, problems, metric: str, *, samples: int = 8, seed: int = 0,
                    temperature: float = 1.0, max_new_tokens: int = 384, tick=None) -> list[float]:
    """One score per reward question under `metric` (see the module docstring). `tick()` is called as the
    scoring goes (HFEngine.tick: the agent's heartbeat and commands inside the unit)."""
    from soar_agent.engine import HFEngine
    from soar_agent.evaluation import evaluate_problems

    if metric == "expert-logprob":
        return expert_logprobs(model, tokenizer, domain, problems, tick=tick)
    engine = HFEngine(model, tokenizer, tick=tick)
    if metric == "greedy":
        results = evaluate_problems(engine, domain, problems, samples=0, greedy=True, max_new_tokens=max_new_tokens)
        return [float(bool(r.greedy_correct)) for r in results]
    if metric == "sampled":
        results = evaluate_problems(engine, domain, problems, samples=samples, greedy=False, temperature=temperature,
                                    max_new_tokens=max_new_tokens, seed=seed)
        return [r.correct / r.samples for r in results]
    raise ValueError(f"unknown reward metric {metric!r} (expected one of {', '.join(METRICS)})")


def paired_reward(before: list[float], after: list[float]) -> tuple[float, float | None]:
    """(mean of after - before, its standard error std(differences) / sqrt(n)); stderr None below 2 questions."""
    if len(before) != len(after) or not before:
        raise ValueError(f"paired_reward needs equal, non-empty score lists (got {len(before)} and {len(after)})")
    return mean_with_stderr([a - b for a, b in zip(after, before)])


def mean_with_stderr(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (sample std / sqrt(n)); stderr None below 2 values."""
    mean = fmean(values)
    return mean, (stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None)


def pooled_reward(differences: list[list[float]]) -> tuple[float | None, float | None]:
    """Mean reward of several students measured on the same questions, with its paired standard error:
    average the students' per-question differences question by question, then mean and stderr over
    questions (the students share the baseline's scores, so their errors are not independent)."""
    per_question = question_means(differences)
    return mean_with_stderr(per_question) if per_question else (None, None)


def question_means(differences: list[list[float]]) -> list[float]:
    """Question-by-question mean of several students' difference vectors (empty vectors are skipped)."""
    differences = [d for d in differences if d]
    return [fmean(column) for column in zip(*differences)] if differences else []
