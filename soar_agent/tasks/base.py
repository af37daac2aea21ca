"""The shape every task domain shares: a Problem record, the student prompt and strict answer extraction.

A domain is a plain module exposing the same few functions (see ``soar_agent.tasks.DOMAINS``); there is
no base class to inherit from.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field


class RejectedItem(ValueError):
    """A problem or answer that cannot be accepted; the message is the one-line reason."""


@dataclass(frozen=True)
class Problem:
    """One task instance. ``answer`` is the ground truth as text; ``steps`` the expert solution steps
    (each ``"**title** action"``, numbered when rendered); ``meta`` holds domain extras (e.g. code tests)."""

    question: str
    answer: str
    domain: str
    level: int | None = None
    steps: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict, compare=False, hash=False)


def render_steps(steps: tuple[str, ...] | list[str]) -> str:
    """Numbered-step format used by SRL: ``1. **title** action`` one per line."""
    return "".join(f"{i}. {step}\n" for i, step in enumerate(steps, 1))


def split_solution(text: str) -> tuple[str, ...]:
    """Steps of a user-written solution: numbered lines (`1. ...`, `2) ...`) when it has them, else its
    non-empty lines. Raises ValueError (the one-line reason) when nothing usable is left."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    numbered = re.compile(r"^(\d+)[.)]\s*(.*)$")
    if lines and any(numbered.match(line) for line in lines):
        steps, current = [], None
        for line in lines:
            match = numbered.match(line)
            if match:
                if current is not None:
                    steps.append(current)
                current = match.group(2).strip()
            elif current is not None:  # a continuation line belongs to the step above
                current += " " + line
        if current is not None:
            steps.append(current)
    else:
        steps = lines
    if not steps:
        raise ValueError("solution has no steps")
    if any(not step for step in steps):
        raise ValueError("solution has an empty step")
    return tuple(steps)


ANSWER_LINE = re.compile(r"^Answer: (-?[0-9]{1,12})$")  # [0-9], not \d: int() also reads "٧" as 7


def extract_integer_answer(completion: str) -> str | None:
    """Strict extraction for the built-in domains: the completion's last non-empty line must be exactly
    ``Answer: <integer>``. Anything else is a format violation (None), so a completion cannot win by
    spraying numbers (the lax-extraction reward hack peers suffer from)."""
    lines = [line for line in completion.strip().splitlines() if line.strip()]
    if not lines:
        return None
    match = ANSWER_LINE.match(lines[-1].strip())
    return str(int(match.group(1))) if match else None


def check_integer_answer(answer: str) -> None:
    """RejectedItem unless `answer` is an integer exactly as extract_integer_answer returns one (at most 12
    ASCII digits, no sign but a minus, no leading zero, no "-0"): the only answers a built-in domain's
    completion can match."""
    match = ANSWER_LINE.match(f"Answer: {answer}")
    if match is None or str(int(match.group(1))) != answer:
        raise RejectedItem(f"field 'answer': expected an integer as an answer line gives it (e.g. 7, -12; at most"
                           f" 12 digits, no leading zero), got {answer[:40]!r}")


def builtin_student_prompt(question: str) -> str:
    """The built-in domains' student prompt (the completion is numbered steps, then `Answer: N`)."""
    return f"Problem: {question}\nSolution:\n"


def builtin_expert_completion(problem: Problem) -> str:
    return f"{render_steps(problem.steps)}Answer: {problem.answer}"


def verify_exact(problem: Problem, prediction: str | None) -> bool:
    return prediction is not None and prediction == problem.answer


# Limits on data files (JSONL and Parquet), so no file can make a loader read an unbounded line or row into
# memory: a line (or a Parquet text field) longer than MAX_LINE_BYTES, a file of more than MAX_FILE_ROWS rows
# and a level outside [0, MAX_LEVEL] are refused with a one-line error naming the file and line.
MAX_LINE_BYTES = 1 << 20  # 1 MiB
MAX_FILE_ROWS = 1_000_000
MAX_LEVEL = 1_000_000


def _not_json(name: str):
    raise ValueError(f"{name} is not valid JSON")


def check_level(level, where: str, levels=None) -> int | None:
    """A row's optional `level`: an integer in [0, MAX_LEVEL] (or in `levels` when given); RejectedItem
    naming `where` otherwise."""
    if level is None:
        return None
    if type(level) is not int or not 0 <= level <= MAX_LEVEL or (levels is not None and level not in levels):
        allowed = f"one of {list(levels)}" if levels is not None else f"an integer in [0, {MAX_LEVEL}]"
        raise RejectedItem(f"{where}: field 'level': expected {allowed}, got {str(level)[:40]}")
    return level


def jsonl_rows(path):
    """(line number, decoded row) of a JSONL file, skipping blank lines. The file is read one bounded line
    at a time (never more than MAX_LINE_BYTES + 1 bytes at once); a line that is too long, not UTF-8, not
    JSON (NaN and Infinity are not JSON) or nested too deeply, and a file of more than MAX_FILE_ROWS rows,
    raise RejectedItem("<file>:<line>: <reason>")."""
    rows = 0
    with open(path, "rb") as handle:
        number = 0
        while True:
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            number += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise RejectedItem(f"{path}:{number}: line longer than {MAX_LINE_BYTES} bytes (the limit for one"
                                   " problem)")
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise RejectedItem(f"{path}:{number}: not UTF-8 text (byte {exc.start + 1} of the line);"
                                   " expected JSON Lines") from None
            if not line.strip():
                continue
            rows += 1
            if rows > MAX_FILE_ROWS:
                raise RejectedItem(f"{path}:{number}: more than {MAX_FILE_ROWS} rows (the limit for one file)")
            try:
                row = json.loads(line, parse_constant=_not_json)
            except RecursionError:
                raise RejectedItem(f"{path}:{number}: invalid JSON (nested too deeply)") from None
            except ValueError as exc:  # JSONDecodeError, NaN/Infinity, an integer of thousands of digits
                raise RejectedItem(f"{path}:{number}: invalid JSON ({' '.join(str(exc).split())})") from None
            yield number, row
