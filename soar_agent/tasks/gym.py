"""`gym:<dataset>` domains: reasoning-gym's procedural tasks (https://github.com/open-thought/reasoning-gym).

Problems come from the dataset's own generator and are scored with its own `score_answer` (a completion
counts as correct only at score 1.0: several scorers give partial credit for a near miss). Levels map to
the dataset's curriculum, where it has one: level L sets every curriculum attribute to its (L-1)-th
setting, clamped at the attribute's last (`UPPER_BOUND`: level L draws from that setting only, so levels
are distinct difficulties); a dataset without a curriculum has one level.

A problem remembers how it was made (`meta["gym"] = [level, seed]`), so its entry, with the metadata some
scorers need, is regenerated when it is scored, from the store or from a JSONL written by `soar mine-hard`.
Questions without that record (a teacher's, a user's file) are scored against their answer with a
metadata-free entry, falling back to an exact match where the scorer needs metadata. Teacher-written
questions cannot be checked by a solver here, so `teacher.reward_target = "verified"` keeps the teacher's
answers, as the paper does.

Scoring runs out of process, always: several scorers `eval` or sympy-`parse_expr` the answer text
(countdown, puzzle24, simple/intermediate_integration, polynomial_multiplication, string_insertion,
spiral_matrix, binary_matrix, n_queens in reasoning-gym 0.1.19), and rather than trust a list that a new
release can outgrow, no dataset's scorer is ever called in this process: every answer of every dataset in
`reasoning_gym.factory.DATASETS` is scored in `soar_agent.scoring_sandbox` (a confined helper that forks a
fresh child per answer), and tests/test_gym.py runs each shipped dataset through it. An answer the scorer
chokes on, or that takes more than `SCORE_TIMEOUT_S`, is wrong.

The completion format is the built-in one (free reasoning lines, then a last line `Answer: <answer>`),
so the shipped model's habits carry over. reasoning-gym is an optional extra (`pip install
'soar-agent[gym]'`), imported only when a gym domain is used.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import lru_cache

from soar_agent.tasks.base import (Problem, RejectedItem, builtin_expert_completion, builtin_student_prompt,
                                   jsonl_rows)

PREFIX = "gym:"
MAX_LEVELS = 10  # levels past a curriculum's longest attribute repeat its hardest setting: not worth listing
MAX_ANSWER_CHARS = 2000
# per answer, wall clock; the slowest level-1 gold answer (intermediate_integration) scores in 0.4 s
SCORE_TIMEOUT_S = 5.0
_ANSWER_LINE = re.compile(r"^Answer:[ \t]*(\S.*)$")


class MissingExtra(ValueError):
    """reasoning-gym is not installed: the message is the one-line fix."""


def _reasoning_gym():
    try:
        import reasoning_gym
        import reasoning_gym.factory
    except ImportError:
        raise MissingExtra("gym domains need reasoning-gym: pip install 'soar-agent[gym]'") from None
    return reasoning_gym


@dataclass(frozen=True)
class GymDomain:
    """One reasoning-gym dataset with the functions every domain exposes (see soar_agent.tasks)."""

    dataset: str
    LEVELS: tuple[int, ...]
    TOPICS: str
    _configs: dict = field(repr=False, compare=False, hash=False)  # level -> dataset config kwargs

    @property
    def NAME(self) -> str:  # noqa: N802 (the domain interface's constant)
        return PREFIX + self.dataset

    @property
    def EDGE_LEVELS(self) -> tuple[int, ...]:  # noqa: N802: where `soar mine-hard` looks by default
        return self.LEVELS[len(self.LEVELS) // 2:]

    def generate(self, level: int, rng: random.Random) -> Problem:
        seed = rng.randrange(2**31)
        entry = _entry(self, level, seed)
        return Problem(question=entry["question"], answer=str(entry["answer"]), domain=self.NAME, level=level,
                       meta={"gym": [level, seed]})

    def student_prompt(self, question: str) -> str:
        return builtin_student_prompt(question)

    def expert_completion(self, problem: Problem) -> str:
        """A worked solution in the student format (its steps as lines, then `Answer: ...`), for sft-rlvr's
        supervised phase. A gym problem carries steps when the teacher solved its own question (its datasets
        train on that solution, teacher.writes_solutions); generated and mined problems carry none."""
        return builtin_expert_completion(problem)

    def extract_answer(self, completion: str) -> str | None:
        """The text after `Answer:` on the completion's last non-empty line (None otherwise)."""
        lines = [line.strip() for line in completion.strip().splitlines() if line.strip()]
        match = _ANSWER_LINE.match(lines[-1]) if lines else None
        return match.group(1).strip()[:MAX_ANSWER_CHARS] if match else None

    def verify(self, problem: Problem, prediction: str | None) -> bool:
        return self.verify_batch([problem], [prediction])[0]

    def verify_batch(self, problems: list[Problem], predictions: list[str | None]) -> list[bool]:
        """Whether each prediction scores 1.0 with the dataset's scorer, in the scoring sandbox (one
        forked child per answer). A scorer that raises on a metadata-free entry (a question without the
        [level, seed] record) falls back to an exact match with the stored answer."""
        from soar_agent import scoring_sandbox

        if len(problems) != len(predictions):
            raise ValueError(f"verify_batch: {len(problems)} problems but {len(predictions)} predictions")
        results = [False] * len(problems)
        asked = [i for i, prediction in enumerate(predictions) if prediction is not None]
        if not asked:
            return results
        calls = [(self.dataset, predictions[i], self._entry_for(problems[i])) for i in asked]
        outcomes = scoring_sandbox.sandbox_for("gym").score(calls, timeout_s=SCORE_TIMEOUT_S,
                                                            workers=scoring_sandbox.default_workers())
        for i, outcome in zip(asked, outcomes):
            if outcome.failure == "exception":
                results[i] = predictions[i].strip() == problems[i].answer.strip()
            else:
                results[i] = outcome.score is not None and outcome.score >= 1.0
        return results

    def _entry_for(self, problem: Problem) -> dict:
        record = (problem.meta or {}).get("gym")
        if record is not None:
            return _entry(self, *record)
        return {"question": problem.question, "answer": problem.answer, "metadata": {}}

    def load_problems(self, path) -> list[Problem]:
        """Problems from JSONL rows {question, answer, level?, meta?: {gym: [level, seed]}}; one-line
        errors name the file, line and field."""
        problems = []
        for number, row in jsonl_rows(path):
            where = f"{path}:{number}"
            if not isinstance(row, dict):
                raise RejectedItem(f"{where}: expected a JSON object")
            for key in ("question", "answer"):
                if not isinstance(row.get(key), str) or not row[key].strip():
                    raise RejectedItem(f"{where}: field {key!r}: missing or not a non-empty string")
            level = row.get("level")
            if level is not None and (type(level) is not int or level not in self.LEVELS):
                raise RejectedItem(f"{where}: field 'level': expected one of {list(self.LEVELS)}")
            record = (row.get("meta") or {}).get("gym") if isinstance(row.get("meta"), dict) else None
            if record is not None and not (isinstance(record, list) and len(record) == 2
                                           and all(type(x) is int for x in record) and record[0] in self.LEVELS):
                raise RejectedItem(f"{where}: field 'meta.gym': expected [level, seed]")
            problems.append(Problem(row["question"], row["answer"], self.NAME, level,
                                    meta={"gym": record} if record else {}))
        return problems


@lru_cache(maxsize=None)
def load(name: str) -> GymDomain:
    """The domain for `gym:<dataset>`; ValueError with the reason for an unknown dataset."""
    dataset = name[len(PREFIX):]
    rg = _reasoning_gym()
    if dataset not in rg.factory.DATASETS:
        close = [n for n in sorted(rg.factory.DATASETS) if dataset[:4] in n][:5]
        raise ValueError(f"unknown reasoning-gym dataset {dataset!r}"
                         + (f" (did you mean {', '.join(close)}?)" if close else ""))
    configs = {1: {}}
    if rg.factory.has_curriculum(dataset):
        from reasoning_gym.coaching.base_curriculum import DefaultCurriculumContext, RangeAttributeMode

        curriculum = rg.factory.create_curriculum(dataset)
        context = DefaultCurriculumContext(mode=RangeAttributeMode.UPPER_BOUND)
        depth = min(MAX_LEVELS, max(len(a.levels) for a in curriculum.attributes.values()))
        configs = {}
        for level in range(1, depth + 1):
            for attribute in curriculum.attributes.values():
                curriculum.set_attr_level(attribute.name, min(level - 1, len(attribute.levels) - 1))
            config = curriculum.generate_configuration(context=context)
            configs[level] = {k: v for k, v in vars(config).items() if k not in ("seed", "size")}
    topics = dataset.replace("_", " ")
    return GymDomain(dataset, tuple(configs), f"reasoning-gym {topics}", configs)


@lru_cache(maxsize=4096)
def _entry(domain: GymDomain, level: int, seed: int) -> dict:
    rg = _reasoning_gym()
    return rg.create_dataset(domain.dataset, **domain._configs[level], seed=seed, size=1)[0]


def is_gym(name: str) -> bool:
    return name.startswith(PREFIX)


__all__ = ["GymDomain", "MissingExtra", "load", "is_gym", "PREFIX"]
