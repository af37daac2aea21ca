"""The `math` dataset domain: competition-style problems with a final answer checked by math-verify.

Owns loading problems from JSONL or Parquet (``question``/``problem`` + ``answer``, optional ``level``),
the student prompt, strict ``\\boxed{}`` answer extraction, and answer checking. math-verify parses
untrusted model text with sympy (whose ``parse_expr`` evaluates Python), so it never runs in this
process: :mod:`soar_agent.scoring_sandbox` does it (the same mechanism as the gym domains), in a
confined helper that forks a fresh child per answer and kills it at a hard timeout, which also covers a
hang in C code math-verify's own ``signal.alarm`` cannot interrupt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from soar_agent.tasks.base import MAX_LINE_BYTES, Problem, RejectedItem, check_level, jsonl_rows, split_solution

NAME = "math"
TOPICS = "competition mathematics: algebra, number theory, counting and probability, geometry, precalculus"

# SRL's expert steps from a user's `steps` / `solution` field: a step this long cannot be a target within
# any sensible student token budget (checked again against the real budget when SRL builds its prompts)
MAX_STEP_CHARS = 4000
_PROMPT_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}.\n"
_BOXED = "\\boxed{"


# ---------------------------------------------------------------------------------------- loading


def load_problems(path: str | os.PathLike) -> list[Problem]:
    """Problems from a ``.parquet`` file (needs pyarrow) or a JSONL file (anything else).

    Every row needs ``question`` (alias ``problem``) and ``answer``; ``level`` is an optional int.
    Any bad row raises RejectedItem("<file>:<row>: <what is wrong>")."""
    path = Path(path)
    rows = _parquet_rows(path) if path.suffix == ".parquet" else jsonl_rows(path)
    problems, rejected = [], 0
    for number, row in rows:
        try:
            problems.append(_problem(row, f"{path}:{number}"))
        except UnusableSteps as reason:  # the item is dropped, the rest of the file is used
            rejected += 1
            print(f"note: {reason}", file=sys.stderr)
    if rejected:
        print(f"note: {path}: {rejected} item(s) rejected for unusable expert steps; {len(problems)} loaded",
              file=sys.stderr)
    return problems


class UnusableSteps(RejectedItem):
    """A row whose `steps` / `solution` cannot give SRL expert steps: that item is skipped, not the file."""


def _expert_steps(row: dict, where: str) -> tuple[str, ...]:
    """Expert steps from `steps` (a list of strings) or `solution` (text split into numbered steps)."""
    if "steps" in row:
        steps = row["steps"]
        if not isinstance(steps, list) or not all(isinstance(step, str) for step in steps):
            raise UnusableSteps(f"{where}: field 'steps': expected a list of strings")
        if not steps or any(not step.strip() for step in steps):
            raise UnusableSteps(f"{where}: field 'steps': empty step")
        steps = tuple(step.strip() for step in steps)
    elif isinstance(row.get("solution"), str):
        try:
            steps = split_solution(row["solution"])
        except ValueError as reason:
            raise UnusableSteps(f"{where}: field 'solution': {reason}") from None
    else:
        return ()
    if any(len(step) > MAX_STEP_CHARS for step in steps):
        raise UnusableSteps(f"{where}: a solution step is longer than {MAX_STEP_CHARS} characters")
    return steps


def _parquet_rows(path: Path):
    """(row number, row) of a Parquet file, read in batches of rows (not the whole table at once); a text
    field longer than MAX_LINE_BYTES characters or a file of more than MAX_FILE_ROWS rows is refused like a JSONL line."""
    from soar_agent.tasks.base import MAX_FILE_ROWS

    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise ImportError(f"{path}: reading Parquet needs pyarrow (pip install 'soar-agent[parquet]')") from None
    number = 0
    try:
        source = parquet.ParquetFile(path)
        if source.metadata.num_rows > MAX_FILE_ROWS:
            raise RejectedItem(f"{path}: {source.metadata.num_rows} rows, more than {MAX_FILE_ROWS} (the limit for"
                               " one file)")
        for batch in source.iter_batches(batch_size=256):
            for row in batch.to_pylist():
                number += 1
                for key, value in row.items():
                    if isinstance(value, (str, bytes)) and len(value) > MAX_LINE_BYTES:
                        raise RejectedItem(f"{path}:{number}: field {key!r} longer than {MAX_LINE_BYTES} characters"
                                           " (the limit for one problem)")
                yield number, row
    except OSError as exc:  # pyarrow's ArrowInvalid / ArrowIOError are OSError/ValueError subclasses
        raise RejectedItem(f"{path}: unreadable Parquet ({_first_line(exc)})") from None
    except ValueError as exc:
        if isinstance(exc, RejectedItem):
            raise
        raise RejectedItem(f"{path}: unreadable Parquet ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _problem(row: object, where: str) -> Problem:
    if not isinstance(row, dict):
        raise RejectedItem(f"{where}: expected a JSON object, got {type(row).__name__}")
    key = "question" if "question" in row else "problem"
    question = _text_field(row, key, where, missing_name="question")
    if "answer" not in row and "solution" in row:
        raise RejectedItem(f"{where}: field 'answer': missing ('solution' is a worked solution, not an answer)")
    answer = _text_field(row, "answer", where, numbers_ok=True)
    level = check_level(row.get("level"), where)
    return Problem(question=question, answer=answer, domain=NAME, level=level, steps=_expert_steps(row, where),
                   meta={"source": where})


def _text_field(row: dict, key: str, where: str, missing_name: str | None = None, numbers_ok: bool = False) -> str:
    if key not in row or row[key] is None:
        raise RejectedItem(f"{where}: field '{missing_name or key}': missing")
    value = row[key]
    # numeric answers are common in datasets (GSM8K-style); booleans are not answers
    if numbers_ok and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise RejectedItem(f"{where}: field '{key}': expected a string, got {type(value).__name__}")
    value = value.strip()
    if not value:
        raise RejectedItem(f"{where}: field '{key}': empty")
    return value


# ---------------------------------------------------------------------------------------- prompt / extraction


def student_prompt(question: str) -> str:
    return question + _PROMPT_SUFFIX


def extract_answer(completion: str) -> str | None:
    """Content of the last complete top-level ``\\boxed{...}``; None when there is none, it is empty, or
    the last one is never closed (a truncated answer is no answer: the text is never scored whole)."""
    answer = None
    start = completion.find(_BOXED)
    while start != -1:
        end = _closing_brace(completion, start + len(_BOXED))
        if end is None:
            return None
        answer = completion[start + len(_BOXED):end].strip() or None
        start = completion.find(_BOXED, end + 1)
    return answer


def _closing_brace(text: str, index: int) -> int | None:
    """Index of the brace closing the one opened just before ``index``; escaped braces don't count."""
    depth = 1
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    return None


# ---------------------------------------------------------------------------------------- verification


def verify(problem: Problem, prediction: str | None) -> bool:
    return verify_batch([problem.answer], [prediction])[0]


def verify_batch(golds: list[str], predictions: list[str | None], timeout_s: float = 5.0,
                 workers: int | None = None) -> list[bool]:
    """math-verify equivalence of each prediction with its gold answer, in the scoring sandbox.

    An item running longer than ``timeout_s``, or crashing its child, counts as False. None predictions
    are False without a call."""
    from soar_agent import scoring_sandbox

    if len(golds) != len(predictions):
        raise ValueError(f"verify_batch: {len(golds)} golds but {len(predictions)} predictions")
    results = [False] * len(golds)
    asked = [i for i, prediction in enumerate(predictions) if prediction is not None]
    if not asked:
        return results
    # math-verify's own (graceful, alarm-based) limits: three phases must fit inside our hard limit
    inner_s = max(1, int(timeout_s / 3))
    outcomes = scoring_sandbox.sandbox_for("math").score(
        [(golds[i], predictions[i], inner_s) for i in asked], timeout_s=timeout_s,
        workers=workers or scoring_sandbox.default_workers())
    for i, outcome in zip(asked, outcomes):
        results[i] = outcome.score == 1.0
    return results


def shutdown_verifier() -> None:
    """Stop the verification helper (a later call starts a new one)."""
    from soar_agent import scoring_sandbox

    scoring_sandbox.sandbox_for("math").stop()
