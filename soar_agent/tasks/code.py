"""The `code` dataset domain: write a Python function that passes the problem's assert-style tests.

Owns loading problems from JSONL (``question``, ``tests`` as a list of assert statements or one string
of test code, optional ``entry_point``), the student prompt, strict extraction of the last ```python
block, and verification: the solution runs in :mod:`soar_agent.sandbox`, and the verdict is reached in
this process by comparing the plain values it returned with the tests' expected values
(:mod:`soar_agent.tasks.code_checks`). So a returned object with a lying ``__eq__`` does not pass, and
neither does a solution that prints something and exits: there is no secret in the sandbox to forge.
Tests that cannot be checked that way (asserts in loops, expected values computed by the test code) are
refused at load time with the reason.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from soar_agent import sandbox
from soar_agent.tasks import code_checks
from soar_agent.tasks.base import Problem, RejectedItem, jsonl_rows

log = logging.getLogger(__name__)

NAME = "code"
TOPICS = "python programming: functions over strings, lists, numbers and dictionaries, with unit tests"

_PROMPT_SUFFIX = (
    "\nWrite the complete solution in Python. Reply with a single ```python fenced code block; "
    "do not read input or print, just define what the tests call.\n"
)
_FENCE_OPEN = "```python"
_FENCE_CLOSE = "```"
_WORKERS = 2
# preflight.check_teacher_items: the modes where students train on the teacher's problems (soar, intrinsic) are
# refused on this domain, whose verify needs each problem's tests
TEACHER_ITEMS_UNSCORABLE = ("the teacher's items carry no tests, and a code solution is scored by its problem's"
                            " tests only")


# ---------------------------------------------------------------------------------------- loading


def load_problems(path: str | os.PathLike) -> list[Problem]:
    """Problems from a JSONL file; any bad row raises RejectedItem("<file>:<line>: <what is wrong>")."""
    path = Path(path)
    return [_problem(row, f"{path}:{number}") for number, row in jsonl_rows(path)]


def _problem(row: object, where: str) -> Problem:
    if not isinstance(row, dict):
        raise RejectedItem(f"{where}: expected a JSON object, got {type(row).__name__}")
    question = _nonempty_text(row, "question", where)
    if "tests" not in row or row["tests"] is None:
        raise RejectedItem(f"{where}: field 'tests': missing")
    tests = row["tests"]
    if isinstance(tests, str):
        tests = [tests]
    if not isinstance(tests, list):
        raise RejectedItem(f"{where}: field 'tests': expected a list of strings or a string, got {type(tests).__name__}")
    for position, test in enumerate(tests):
        if not isinstance(test, str):
            raise RejectedItem(f"{where}: field 'tests'[{position}]: expected a string, got {type(test).__name__}")
    tests = [test for test in tests if test.strip()]
    if not tests:
        raise RejectedItem(f"{where}: field 'tests': empty")
    meta: dict = {"tests": tests, "source": where}
    entry_point = row.get("entry_point")
    if entry_point is not None:
        # it is pasted into the test harness as code, so it must be a bare name
        if not isinstance(entry_point, str) or not entry_point.isidentifier():
            raise RejectedItem(f"{where}: field 'entry_point': expected a Python identifier, got {entry_point!r:.60}")
        meta["entry_point"] = entry_point
    try:
        code_checks.check_loadable(tests, meta.get("entry_point"))
    except code_checks.UncheckableTest as error:
        raise RejectedItem(f"{where}: field 'tests': {error}") from None
    return Problem(question=question, answer="", domain=NAME, meta=meta)


def _nonempty_text(row: dict, key: str, where: str) -> str:
    if key not in row or row[key] is None:
        raise RejectedItem(f"{where}: field '{key}': missing")
    value = row[key]
    if not isinstance(value, str):
        raise RejectedItem(f"{where}: field '{key}': expected a string, got {type(value).__name__}")
    if not value.strip():
        raise RejectedItem(f"{where}: field '{key}': empty")
    return value.strip()


# ---------------------------------------------------------------------------------------- prompt / extraction


def student_prompt(question: str) -> str:
    return question + _PROMPT_SUFFIX


def extract_answer(completion: str) -> str | None:
    """Code of the last complete ```python block; None when there is none, it is empty, or the last
    block is never closed (a truncated solution is no solution)."""
    answer = None
    start = completion.find(_FENCE_OPEN)
    while start != -1:
        body_start = completion.find("\n", start)
        if body_start == -1:
            return None
        # only "```python" or "```python " + newline opens a block; "```python3"/"```pythonic" do not
        if completion[start + len(_FENCE_OPEN):body_start].strip():
            start = completion.find(_FENCE_OPEN, body_start)
            continue
        end = completion.find(_FENCE_CLOSE, body_start + 1)
        if end == -1:
            return None
        body = completion[body_start + 1:end]
        answer = body if body.strip() else None
        start = completion.find(_FENCE_OPEN, end + len(_FENCE_CLOSE))
    return answer


# ---------------------------------------------------------------------------------------- verification


def verify(problem: Problem, code: str | None) -> bool:
    """Whether ``code`` passes the problem's tests: it runs in the sandbox, the values it returns for the
    tests' calls come back as plain data, and the tests' comparisons are evaluated here."""
    if code is None:
        return False
    try:
        plan = code_checks.plan_tests(problem.meta["tests"], problem.meta.get("entry_point"),
                                      code_checks.solution_names(code))
    except code_checks.UncheckableTest as error:  # e.g. a problem stored before tests were checked on load
        log.warning("code problem %s cannot be checked by value (%s); counted as failed",
                    problem.meta.get("source", "?"), error)
        return False
    if plan.probes == 0:  # the tests call a builtin the solution should have defined (def max) and did not
        return False
    result = sandbox.run_python(code_checks.child_program(plan, code))
    values = code_checks.decode_records(result.stdout, plan.probes) if result.ok else None
    return values is not None and code_checks.passes(plan, values)


def verify_batch(problems: list[Problem], codes: list[str | None]) -> list[bool]:
    if len(problems) != len(codes):
        raise ValueError(f"verify_batch: {len(problems)} problems but {len(codes)} solutions")
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        return list(pool.map(verify, problems, codes))
