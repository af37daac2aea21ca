"""`soar mine-hard`: build fail@k hard sets (the SOAR paper's fail@128) from a pool of problems.

Sampling runs in rounds (16, 16, 32, 64 = 128 by default) and a problem leaves the pool at its first
correct sample, so the full k samples are spent only on the problems that end up in the hard set: the
result is the same as sampling k at once, for a fraction of the compute.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from soar_agent.evaluation import evaluate_problems
from soar_agent.tasks.base import Problem


SPLITS = ("train", "val", "test")  # hard-train: the teacher's reward; hard-val: choosing settings; hard-test: reported


@dataclass
class MiningReport:
    pool: dict[int | None, int] = field(default_factory=dict)  # level -> problems tried
    kept: dict[int | None, int] = field(default_factory=dict)  # level -> fail@k problems
    train: list[Problem] = field(default_factory=list)
    val: list[Problem] = field(default_factory=list)
    test: list[Problem] = field(default_factory=list)


def sampling_rounds(k: int) -> list[int]:
    rounds, total, size = [], 0, 16
    while total < k:
        step = min(size, k - total)
        rounds.append(step)
        total += step
        size = max(size, total)  # double the spend each round once past the first two
    return rounds


def fail_at_k(engine, domain, problems: list[Problem], k: int = 128, temperature: float = 1.0,
              max_new_tokens: int = 160, seed: int = 0, log=print) -> list[Problem]:
    """The problems with 0 correct out of k samples at the given temperature."""
    remaining = list(problems)
    for round_index, size in enumerate(sampling_rounds(k)):
        if not remaining:
            break
        results = evaluate_problems(engine, domain, remaining, samples=size, greedy=False,
                                    temperature=temperature, max_new_tokens=max_new_tokens,
                                    seed=seed + round_index)
        remaining = [r.problem for r in results if r.correct == 0]
        log(f"round {round_index + 1}: {size} samples/problem -> {len(remaining)} still unsolved")
    return remaining


def split_hard(problems: list[Problem], test_fraction: float, val_fraction: float, seed: int) -> tuple[list, list, list]:
    """(train, val, test): a seeded split, stratified by level so the three have the same difficulty mix."""
    rng = random.Random(seed)
    train, val, test = [], [], []
    for level in sorted({p.level or 0 for p in problems}):
        group = [p for p in problems if (p.level or 0) == level]
        rng.shuffle(group)
        test_cut = round(len(group) * test_fraction)
        val_cut = test_cut + round(len(group) * val_fraction)
        test += group[:test_cut]
        val += group[test_cut:val_cut]
        train += group[val_cut:]
    return train, val, test


def write_jsonl(problems: list[Problem], path: Path) -> None:
    """Atomic write of problems as JSONL (question, answer, domain, level, steps, meta when set)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    with open(temporary, "w") as handle:
        for p in problems:
            row = {"question": p.question, "answer": p.answer, "domain": p.domain, "level": p.level,
                   "steps": list(p.steps)}
            if p.meta:  # e.g. how a gym problem was generated, which its scorer needs
                row["meta"] = p.meta
            handle.write(json.dumps(row) + "\n")
    temporary.replace(path)


def merge_into_jsonl(problems: list[Problem], path: Path) -> int:
    """Add problems to an existing JSONL set (skipping questions already there); returns the new size."""
    existing = read_jsonl(path, problems[0].domain if problems else "") if path.is_file() else []
    seen = {p.question for p in existing}
    merged = existing + [p for p in problems if p.question not in seen]
    write_jsonl(merged, path)
    return len(merged)


def read_jsonl(path: Path, domain_name: str, check=None) -> list[Problem]:
    """Problems of a built-in domain from JSONL; one-line errors name the file, line and field. `check(question,
    answer)` (the domain's check_row), when given, raises RejectedItem for a row the domain cannot score."""
    from soar_agent.tasks.base import RejectedItem, check_level, jsonl_rows

    problems = []
    for number, row in jsonl_rows(path):
        where = f"{path}:{number}"
        if not isinstance(row, dict):
            raise RejectedItem(f"{where}: expected a JSON object")
        for key in ("question", "answer"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise RejectedItem(f"{where}: field {key!r}: missing or not a non-empty string")
        level = check_level(row.get("level"), where)
        steps = row.get("steps")
        if steps is not None and not (isinstance(steps, list) and all(isinstance(step, str) for step in steps)):
            raise RejectedItem(f"{where}: field 'steps': expected a list of strings")
        domain = row.get("domain", domain_name)
        if domain_name and domain != domain_name:
            raise RejectedItem(f"{where}: field 'domain': expected {domain_name!r}, got {str(domain)[:40]!r}")
        if check is not None:
            try:
                check(row["question"], row["answer"])
            except RejectedItem as error:
                raise RejectedItem(f"{where}: {error}") from None
        problems.append(Problem(row["question"], row["answer"], domain_name or str(domain), level, tuple(steps or ())))
    return problems


def mine_hard(engine, domain, pool: list[Problem], k: int, test_fraction: float, val_fraction: float, seed: int,
              temperature: float = 1.0, max_new_tokens: int = 160, log=print, only: str | None = None,
              exclude: set[str] = frozenset()) -> MiningReport:
    """fail@k problems of `pool` (questions in `exclude` left out: those of the sets already there), split into
    train/val/test, or all into the split `only` (adding a split to existing sets)."""
    report = MiningReport()
    unique = [p for p in {p.question: p for p in pool}.values() if p.question not in exclude]
    for p in unique:
        report.pool[p.level] = report.pool.get(p.level, 0) + 1
    hard = fail_at_k(engine, domain, unique, k, temperature, max_new_tokens, seed, log)
    for p in hard:
        report.kept[p.level] = report.kept.get(p.level, 0) + 1
    if only:
        setattr(report, only, hard)
    else:
        report.train, report.val, report.test = split_hard(hard, test_fraction, val_fraction, seed)
    return report
