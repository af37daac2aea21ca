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


def prompt_room(context: int | None, max_new_tokens: int) -> int | None:
    """The most prompt tokens a problem may have: the model's context minus the completion budget, so that
    prompt and completion fit together. A budget that alone fills the context cannot be honoured for any
    prompt; then the prompt only has to be shorter than the context. None when the context is unknown."""
    if context is None:
        return None
    return context - max_new_tokens if max_new_tokens < context else context - 1


_TOKENIZE_CHARS = 1 << 18  # characters tokenized per call: memory stays bounded whatever the file holds


def prompt_lengths(domain, tokenizer, problems: list[Problem]) -> list[int]:
    """Tokens of each problem's student prompt, as the engines tokenize it (with special tokens), counted in
    batches of at most _TOKENIZE_CHARS characters (or one prompt), never the whole set at once."""
    lengths: list[int] = []
    batch: list[str] = []
    size = 0

    def flush() -> None:
        nonlocal size
        if batch:
            lengths.extend(len(ids) for ids in tokenizer(batch, add_special_tokens=True)["input_ids"])
            batch.clear()
            size = 0

    for problem in problems:
        prompt = domain.student_prompt(problem.question)
        if size + len(prompt) > _TOKENIZE_CHARS:
            flush()
        batch.append(prompt)
        size += len(prompt)
    flush()
    return lengths


def too_long(domain, tokenizer, problems: list[Problem], context: int | None, max_new_tokens: int) -> list[tuple[int, int]]:
    """(index, prompt tokens) of the problems whose prompt leaves no room for the completion budget in the
    model's context (prompt_room); a question of a million characters is never sampled, it is refused."""
    room = prompt_room(context, max_new_tokens)
    if room is None:
        return []
    return [(index, length) for index, length in enumerate(prompt_lengths(domain, tokenizer, problems))
            if length > room]


def too_long_reason(tokens: int, context: int, max_new_tokens: int, budget_name: str) -> str:
    """Why a prompt was refused, in one line."""
    if max_new_tokens < context:
        return (f"question too long for the model: its prompt is {tokens} tokens, and the model's context of"
                f" {context} tokens keeps {max_new_tokens} for the completion ({budget_name}), leaving"
                f" {context - max_new_tokens}")
    return f"question too long for the model: its prompt is {tokens} tokens, the model's context {context}"


def problem_line(path, problems: list[Problem], index: int) -> str:
    """`<file>:<line>` of the index-th problem loaded from `path` (its meta source when the loader keeps
    one; the built-in and gym loaders keep every non-blank row in order, so the index-th row's line)."""
    from soar_agent.tasks.base import jsonl_rows

    where = (problems[index].meta or {}).get("source")
    if where:
        return where
    return next((f"{path}:{number}" for position, (number, _) in enumerate(jsonl_rows(path)) if position == index),
                str(path))


def refuse_long_prompts(path, problems: list[Problem], domain, tokenizer, context: int | None, max_new_tokens: int,
                        budget_name: str) -> None:
    """User data: the first problem of `path` whose prompt does not fit (too_long) is a RejectedItem naming
    the file and line, before any model work starts."""
    from soar_agent.tasks.base import RejectedItem

    refused = too_long(domain, tokenizer, problems, context, max_new_tokens)
    if not refused:
        return
    index, tokens = refused[0]
    more = f" ({len(refused) - 1} more in the file)" if len(refused) > 1 else ""
    raise RejectedItem(f"{problem_line(path, problems, index)}: "
                       f"{too_long_reason(tokens, context, max_new_tokens, budget_name)}{more}")


def score(domain, problems: list[Problem], completions: list[str]) -> list[bool]:
    """Correctness of one completion per problem, batched where the domain verifies in a pool."""
    predictions = [domain.extract_answer(text) for text in completions]
    if hasattr(domain, "verify_batch") and domain.NAME == "math":
        return domain.verify_batch([p.answer for p in problems], predictions)
    if hasattr(domain, "verify_batch"):
        return domain.verify_batch(problems, predictions)
    return [domain.verify(problem, prediction) for problem, prediction in zip(problems, predictions)]


# Completions generated (and held) per engine call: evaluations larger than this run in chunks of problems,
# so memory does not grow with --per-level x --samples (smaller ones are one call, as they always were).
MAX_ROWS_PER_CALL = 65_536


def evaluate_problems(engine, domain, problems: list[Problem], samples: int = 0, greedy: bool = True,
                      temperature: float = 1.0, max_new_tokens: int = 160, seed: int | None = None,
                      keep_completions: bool = False) -> list[ProblemResult]:
    """Greedy accuracy (one temperature-0 completion) and/or `samples` sampled completions per problem.
    Chunks of at most MAX_ROWS_PER_CALL completions; chunk i samples with seed + i."""
    chunk = max(1, MAX_ROWS_PER_CALL // max(1, samples))
    results = []
    for number, begin in enumerate(range(0, len(problems), chunk)):
        results += _evaluate_chunk(engine, domain, problems[begin:begin + chunk], samples, greedy, temperature,
                                   max_new_tokens, None if seed is None else seed + number, keep_completions)
    return results


def _evaluate_chunk(engine, domain, problems: list[Problem], samples: int, greedy: bool, temperature: float,
                    max_new_tokens: int, seed: int | None, keep_completions: bool) -> list[ProblemResult]:
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
