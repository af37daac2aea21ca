"""Grounded evaluation: unbiased pass@k, greedy accuracy, per-problem sampling results.

`evaluate_problems` is the one place that samples a model on a list of problems and scores them with
the domain's own extractor and verifier (so reward and evaluation can never drift apart).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import comb

from soar_agent.store import content_hash
from soar_agent.tasks.base import Problem


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimator 1 - C(n-c, k) / C(n, k) from n samples with c correct (Chen et al. 2021)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def default_ks(samples: int) -> list[int]:
    """1, 2, 4, ... up to the number of samples."""
    ks, k = [], 1
    while k <= samples:
        ks.append(k)
        k *= 2
    return ks


@dataclass
class ProblemResult:
    problem: Problem
    samples: int
    correct: int
    greedy_correct: bool | None = None
    completions: list[str] = field(default_factory=list, repr=False)

    def pass_at(self, ks: list[int]) -> dict[int, float]:
        return {k: pass_at_k(self.samples, self.correct, k) for k in ks if k <= self.samples}


def unique_problems(problems: list[Problem]) -> tuple[list[Problem], int]:
    """The problems without repeats (first kept, order preserved) and how many repeats were dropped.

    Repeats are judged by the store's key (domain + whitespace-normalised question): two repeats would
    map to one stored problem, so one evaluation cannot hold a result for each of them.
    """
    seen: set[str] = set()
    unique = []
    for problem in problems:
        key = content_hash(problem.domain, problem.question)
        if key not in seen:
            seen.add(key)
            unique.append(problem)
    return unique, len(problems) - len(unique)


def score(domain, problems: list[Problem], completions: list[str]) -> list[bool]:
    """Correctness of one completion per problem, batched where the domain verifies in a pool."""
    predictions = [domain.extract_answer(text) for text in completions]
    if hasattr(domain, "verify_batch") and domain.NAME == "math":
        return domain.verify_batch([p.answer for p in problems], predictions)
    if hasattr(domain, "verify_batch"):
        return domain.verify_batch(problems, predictions)
    return [domain.verify(problem, prediction) for problem, prediction in zip(problems, predictions)]


def evaluate_problems(engine, domain, problems: list[Problem], samples: int = 0, greedy: bool = True,
                      temperature: float = 1.0, max_new_tokens: int = 160, seed: int | None = None,
                      keep_completions: bool = False) -> list[ProblemResult]:
    """Greedy accuracy (one temperature-0 completion) and/or `samples` sampled completions per problem."""
    prompts = [domain.student_prompt(problem.question) for problem in problems]
    results = [ProblemResult(problem, samples, 0) for problem in problems]
    if greedy:
        outputs = engine.generate(prompts, n=1, temperature=0.0, max_new_tokens=max_new_tokens)
        for result, correct in zip(results, score(domain, problems, [row[0].text for row in outputs])):
            result.greedy_correct = correct
    if samples:
        outputs = engine.generate(prompts, n=samples, temperature=temperature, max_new_tokens=max_new_tokens,
                                  seed=seed)
        flat_problems = [problem for problem in problems for _ in range(samples)]
        flat_texts = [completion.text for row in outputs for completion in row]
        flat_correct = score(domain, flat_problems, flat_texts)
        for index, result in enumerate(results):
            result.correct = sum(flat_correct[index * samples:(index + 1) * samples])
            if keep_completions:
                result.completions = flat_texts[index * samples:(index + 1) * samples]
    return results


def summarize(results: list[ProblemResult], ks: list[int] | None = None) -> dict:
    """Set-level figures: greedy accuracy, mean pass@k, and the same per level when levels are known."""

    def figures(group: list[ProblemResult]) -> dict:
        out: dict = {"problems": len(group)}
        greedy = [r.greedy_correct for r in group if r.greedy_correct is not None]
        if greedy:
            out["greedy_acc"] = sum(greedy) / len(greedy)
        samples = min((r.samples for r in group), default=0)
        for k in ks if ks is not None else default_ks(samples):
            if samples and k <= samples:
                out[f"pass@{k}"] = sum(pass_at_k(r.samples, r.correct, k) for r in group) / len(group)
        return out

    summary = figures(results)
    levels = sorted({r.problem.level for r in results if r.problem.level is not None})
    if levels:
        summary["levels"] = {str(level): figures([r for r in results if r.problem.level == level])
                             for level in levels}
    return summary
