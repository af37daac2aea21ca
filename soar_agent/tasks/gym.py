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

The completion format is the built-in one (free reasoning lines, then a last line `Answer: <answer>`),
so the shipped model's habits carry over. reasoning-gym is an optional extra (`pip install
'soar-agent[gym]'`), imported only when a gym domain is used.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import lru_cache

from soar_agent.tasks.base import Problem, RejectedItem, builtin_student_prompt, jsonl_rows

PREFIX = "gym:"
MAX_LEVELS = 10  # levels past a curriculum's longest attribute repeat its hardest setting: not worth listing
MAX_ANSWER_CHARS = 2000
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

    def extract_answer(self, completion: str) -> str | None:
        """The text after `Answer:` on the completion's last non-empty line (None otherwise)."""
        lines = [line.strip() for line in completion.strip().splitlines() if line.strip()]
        match = _ANSWER_LINE.match(lines[-1]) if lines else None
        return match.group(1).strip()[:MAX_ANSWER_CHARS] if match else None

    def verify(self, problem: Problem, prediction: str | None) -> bool:
        if prediction is None:
            return False
        record = (problem.meta or {}).get("gym")
        if record is not None:
            entry = _entry(self, *record)
        else:
            entry = {"question": problem.question, "answer": problem.answer, "metadata": {}}
        try:
            return _score(self.dataset, prediction, entry) >= 1.0
        except Exception:  # noqa: BLE001: a scorer that needs metadata this entry lacks
            return prediction.strip() == problem.answer.strip()

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


@lru_cache(maxsize=None)
def _scorer(dataset: str):
    return _reasoning_gym().get_score_answer_fn(dataset)


def _score(dataset: str, prediction: str, entry: dict) -> float:
    return float(_scorer(dataset)(prediction, entry) or 0.0)


def is_gym(name: str) -> bool:
    return name.startswith(PREFIX)


__all__ = ["GymDomain", "MissingExtra", "load", "is_gym", "PREFIX"]
