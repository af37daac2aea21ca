"""The `code` dataset domain: write a Python function that passes the problem's assert-style tests.

Owns loading problems from JSONL (``question``, ``tests`` as a list of assert statements or one string
of test code, optional ``entry_point``), the student prompt, strict extraction of the last ```python
block, and verification by running solution + tests in :mod:`soar_agent.sandbox`.

A pass needs more than exit code 0: the harness reads a per-run nonce from stdin before the solution
runs (it is not in the program text) and prints it after the tests, and it must be the last line of
output. So a solution that calls ``sys.exit(0)`` / ``os._exit(0)`` before the tests does not pass, nor
one that echoes its stdin. (Code that digs the nonce out of the harness's frames still could: this
stops the cheap, discoverable hacks, not a determined adversary.)
"""

from __future__ import annotations

import os
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from soar_agent import sandbox
from soar_agent.tasks.base import Problem, RejectedItem, jsonl_rows

NAME = "code"
TOPICS = "python programming: functions over strings, lists, numbers and dictionaries, with unit tests"

_PROMPT_SUFFIX = (
    "\nWrite the complete solution in Python. Reply with a single ```python fenced code block; "
    "do not read input or print, just define what the tests call.\n"
)
_FENCE_OPEN = "```python"
_FENCE_CLOSE = "```"
_WORKERS = 2


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


# Read before the solution runs, so the solution cannot simply echo stdin; printed only after the tests.
_FUTURE_IMPORT = re.compile(r"^from __future__ import [^\n]*$", re.MULTILINE)
_PRELUDE = "def _soar_finish(nonce=__import__('sys').stdin.read()):\n    print('\\n' + nonce)\n\n"


def _harness(problem: Problem, code: str) -> str:
    tests = "\n".join(problem.meta["tests"])
    entry_point = problem.meta.get("entry_point")
    # HumanEval-style test code defines check(candidate) and expects the caller to run it
    call = f"check({entry_point})\n" if entry_point and "def check(" in tests else ""
    # `from __future__` must stay the first statement, ahead of the prelude
    futures = "".join(line + "\n" for line in _FUTURE_IMPORT.findall(code))
    body = _FUTURE_IMPORT.sub("", code)
    return f"{futures}{_PRELUDE}{body}\n\n# --- tests ---\n{tests}\n{call}_soar_finish()\n"


def verify(problem: Problem, code: str | None) -> bool:
    """Whether ``code`` passes the problem's tests in the sandbox (default limits)."""
    if code is None:
        return False
    nonce = secrets.token_hex(16)
    result = sandbox.run_python(_harness(problem, code), stdin=nonce)
    lines = result.stdout.splitlines()
    return result.ok and bool(lines) and lines[-1] == nonce


def verify_batch(problems: list[Problem], codes: list[str | None]) -> list[bool]:
    if len(problems) != len(codes):
        raise ValueError(f"verify_batch: {len(problems)} problems but {len(codes)} solutions")
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        return list(pool.map(verify, problems, codes))
