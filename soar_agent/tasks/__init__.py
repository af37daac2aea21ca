"""Task domains and the teacher's item format.

A built-in domain (`arith`, `program`) is a module with: NAME, LEVELS, TOPICS, generate(level, rng),
make_problem(question) (validate + exact answer, RejectedItem otherwise), student_prompt(question),
expert_completion(problem), extract_answer(completion), verify(problem, prediction).
Dataset domains (`math`, `code`) load problems from files instead of generating them.
`gym:<dataset>` domains are reasoning-gym datasets (`soar_agent.tasks.gym`), objects with the same names.
"""

from __future__ import annotations

import importlib
import os
import random
import re
from pathlib import Path

from soar_agent.tasks.base import Problem, RejectedItem

BUILTIN_DOMAINS = ("arith", "program")
DATASET_DOMAINS = ("math", "code")


def get_domain(name: str):
    """The domain module for a name (imported on demand: `math` pulls in math-verify)."""
    if name.startswith("gym:"):
        from soar_agent.tasks import gym

        return gym.load(name)
    if name not in BUILTIN_DOMAINS + DATASET_DOMAINS:
        raise ValueError(f"unknown domain {name!r} (expected one of {', '.join(BUILTIN_DOMAINS + DATASET_DOMAINS)}"
                         " or gym:<reasoning-gym dataset>)")
    return importlib.import_module(f"soar_agent.tasks.{name}")


def generate_problems(domain, levels: list[int], rng: random.Random) -> list[Problem]:
    """Problems for a list of levels (one each); uses the domain's batched generator where it has one."""
    if hasattr(domain, "generate_many"):
        return domain.generate_many(levels, rng)
    return [domain.generate(level, rng) for level in levels]


def load_problem_file(path: str | os.PathLike, domain) -> list[Problem]:
    """The problems of a user's data file (JSONL, or Parquet for `math`), through the domain's own loader.
    RejectedItem naming the file when it does not exist, is not a regular file (a directory, a FIFO that
    would block), or holds no problems; the loaders name the line of a bad row (tasks.base limits, and for a
    built-in domain its check_row: a question it parses, an answer as its students write one)."""
    from soar_agent.mining import read_jsonl

    path = Path(path)
    if not path.exists():
        raise RejectedItem(f"{path}: no such data file")
    if not path.is_file():
        raise RejectedItem(f"{path}: not a regular file")
    problems = (domain.load_problems(path) if hasattr(domain, "load_problems")
                else read_jsonl(path, domain.NAME, getattr(domain, "check_row", None)))
    if not problems:
        raise RejectedItem(f"{path}: holds no problems" + ("" if path.stat().st_size else " (the file is empty)"))
    return problems


# ---------------------------------------------------------------- teacher item format

_ITEM = re.compile(r"<question>(.*?)</question>\s*<answer>(.*?)</answer>", re.DOTALL)


def teacher_prompt(domain) -> str:
    """Topic list and the item format only: no example questions (the SOAR paper found the teacher then
    copies them)."""
    text = f"Topics: {domain.TOPICS}\nWrite a new problem as <question>...</question><answer>...</answer>\n"
    wrap = getattr(domain, "wrap_prompt", None)  # an instruct model's chat template (tasks.chat)
    return wrap(text) if wrap else text


def teacher_item(problem: Problem) -> str:
    return f"<question>{problem.question}</question><answer>{problem.answer}</answer>"


def parse_item(text: str) -> tuple[str, str]:
    """(question, answer) of the first well-formed item, or RejectedItem with the reason."""
    match = _ITEM.search(text)
    if not match:
        raise RejectedItem("no <question>...</question><answer>...</answer> item")
    question, answer = match.group(1).strip(), match.group(2).strip()
    if not question:
        raise RejectedItem("empty question")
    if not answer:
        raise RejectedItem("empty answer")
    return question, answer


__all__ = ["Problem", "RejectedItem", "get_domain", "generate_problems", "load_problem_file", "teacher_prompt", "teacher_item",
           "parse_item", "BUILTIN_DOMAINS", "DATASET_DOMAINS"]
