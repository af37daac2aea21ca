"""The hard sets a run stores (hard-train for the reward, hard-val for choosing settings, hard-test for
reporting) and what fits the model's context: the questions no student may train on with their answers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from soar_agent.store import content_hash
from soar_agent.tasks.base import Problem

if TYPE_CHECKING:
    from soar_agent.agent import Agent


def shipped_hard_set(domain_name: str, split: str) -> Path:
    return Path(__file__).resolve().parent.parent / "curricula" / "hard" / f"{domain_name}-hard-{split}.jsonl"


def load_problem_file(path: Path, domain) -> list[Problem]:
    """A data file's problems (tasks.load_problem_file: one-line errors naming the file and line)."""
    from soar_agent.tasks import load_problem_file as load

    return load(path, domain)


def store_hard_sets(agent: Agent) -> None:
    """A new run's hard-train, hard-val (when there is one) and hard-test, each a dataset of the store: the
    configured files, else the shipped ones; repeated questions and prompts too long for the model are skipped
    with a note."""
    domain, cfg = agent.domain, agent.config.domain
    for split, configured in (("train", cfg.hard_train), ("val", cfg.hard_val), ("test", cfg.hard_test)):
        path = Path(configured) if configured else shipped_hard_set(domain.NAME, split)
        if split == "val" and not configured and not path.is_file():
            continue  # optional: hard-val is for choosing settings (benchmarks), a run needs none
        if not path.is_file():
            raise FileNotFoundError(f"{path}: hard-{split} set not found (domain.hard_{split})")
        from soar_agent.evaluation import unique_problems

        s, e = agent.config.student.max_new_tokens, agent.config.eval.max_new_tokens
        budget = ((s, "student.max_new_tokens") if s > e else (e, "eval.max_new_tokens")) if split == "train" \
            else (e, "eval.max_new_tokens")
        problems, repeats = unique_problems(without_long_prompts(agent, path, load_problem_file(path, domain),
                                                                 budget[0], f"domain.hard_{split}", budget[1]))
        if repeats:
            note = f"{path}: {repeats} repeated question(s) skipped (domain.hard_{split})"
            agent.log(f"note: {note}")
            agent.store.log_event(run_id=agent.run_id, level="warning", kind="hard-set-repeats", message=note)
        ids = agent.store.add_problems(run_id=agent.run_id, problems=problems, source="hard", split=split,
                                       provenance={"file": str(path)})
        agent.store.create_dataset(run_id=agent.run_id, name=f"hard-{split}", kind=f"hard-{split}",
                                   problem_ids=ids)


def without_long_prompts(agent: Agent, path: Path, problems: list[Problem], max_new_tokens: int, field: str,
                         budget_name: str) -> list[Problem]:
    """The problems whose prompt leaves `max_new_tokens` in the model's context; the others are skipped
    with a note (log and event) naming the file, the first one's line and the reason."""
    from soar_agent.evaluation import problem_line, too_long, too_long_reason
    from soar_agent.models import context_length, load_tokenizer

    tokenizer = agent._models.get("tokenizer") or load_tokenizer(agent.config.model.path)
    context = context_length(agent.config.model.path, tokenizer)
    refused = too_long(agent.domain, tokenizer, problems, context, max_new_tokens)
    if not refused:
        return problems
    index, tokens = refused[0]
    note = (f"{path}: {len(refused)} of {len(problems)} question(s) skipped ({field}), too long for the model;"
            f" the first, {problem_line(path, problems, index)}: "
            f"{too_long_reason(tokens, context, max_new_tokens, budget_name)}")
    agent.log(f"note: {note}")
    agent.store.log_event(run_id=agent.run_id, level="warning", kind="hard-set-too-long", message=note)
    skipped = {i for i, _ in refused}
    return [problem for i, problem in enumerate(problems) if i not in skipped]


def hard_questions(agent: Agent) -> set[str]:
    """Content hashes of the hard sets (train, val when stored, test): curated data must hold none of them."""
    splits = ("train", "val", "test") if agent.store.datasets(agent.run_id, kind="hard-val") else ("train", "test")
    return {content_hash(p.domain, p.question) for split in splits for p in agent.hard_set(split)}


def room_for_prompts(agent: Agent, max_new_tokens: int) -> int | None:
    """The most prompt tokens that leave `max_new_tokens` in the model's context (evaluation.prompt_room);
    None when the context is unknown."""
    from soar_agent.evaluation import prompt_room
    from soar_agent.models import context_length, load_tokenizer

    tokenizer = agent._models.get("tokenizer") or load_tokenizer(agent.config.model.path)
    return prompt_room(context_length(agent.config.model.path, tokenizer), max_new_tokens)
