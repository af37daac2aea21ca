"""The code dataset domain: loading, fenced-block extraction, and sandboxed test runs that cannot be gamed."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest

import soar_agent.tasks.code as code_domain
from soar_agent.tasks.base import Problem, RejectedItem

ADD = Problem("Write add(a, b).", "", "code", meta={"tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]})
GOOD = "def add(a, b):\n    return a + b\n"


def write_jsonl(path, rows) -> str:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


# -------------------------------------------------------------------------------------- loading


def test_load_list_and_string_tests(tmp_path):
    path = write_jsonl(tmp_path / "code.jsonl", [
        {"question": "Write add(a, b).", "tests": ["assert add(1, 2) == 3"]},
        {"question": "Write inc(x).", "tests": "def check(candidate):\n    assert candidate(1) == 2\n",
         "entry_point": "inc"},
    ])
    first, second = code_domain.load_problems(path)
    assert (first.domain, first.answer, first.meta["tests"]) == ("code", "", ["assert add(1, 2) == 3"])
    assert second.meta["entry_point"] == "inc" and len(second.meta["tests"]) == 1


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"question": "q", "tests": [', "code.jsonl:2: invalid JSON (Expecting"),
        ('{"question": "q"}', "code.jsonl:2: field 'tests': missing"),
        ('{"tests": ["assert 1"]}', "code.jsonl:2: field 'question': missing"),
        ('{"question": "q", "tests": []}', "code.jsonl:2: field 'tests': empty"),
        ('{"question": "q", "tests": ["assert 1", 2]}', "code.jsonl:2: field 'tests'[1]: expected a string, got int"),
        ('{"question": "q", "tests": {"a": 1}}', "code.jsonl:2: field 'tests': expected a list of strings or a string"),
        ('{"question": "q", "tests": ["assert 1"], "entry_point": "f; import os"}',
         "code.jsonl:2: field 'entry_point': expected a Python identifier"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, bad_line, message):
    path = write_jsonl(tmp_path / "code.jsonl", [{"question": "ok", "tests": ["assert True"]}, bad_line])
    with pytest.raises(RejectedItem) as error:
        code_domain.load_problems(path)
    assert str(error.value).startswith(str(tmp_path / "code.jsonl:2:")) and message in str(error.value)


# -------------------------------------------------------------------------------------- prompt / extraction


def test_student_prompt_asks_for_one_python_block():
    prompt = code_domain.student_prompt("Write add(a, b).")
    assert prompt.startswith("Write add(a, b).\n") and "```python" in prompt


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("Here:\n```python\ndef f():\n    return 1\n```\nDone.", "def f():\n    return 1\n"),
        ("```python\nx = 1\n```\nbetter:\n```python\nx = 2\n```", "x = 2\n"),
        ("def f(): return 1", None),
        ("```\nx = 1\n```", None),  # not marked as python
        ("```python\nx = 1\n```\n```python\nx = 2\n", None),  # truncated final block
        ("```python\n\n```", None),
    ],
)
def test_extract_answer(completion, expected):
    assert code_domain.extract_answer(completion) == expected


# -------------------------------------------------------------------------------------- verification


def test_correct_solution_passes_and_wrong_one_fails():
    assert code_domain.verify(ADD, GOOD) is True
    assert code_domain.verify(ADD, "def add(a, b):\n    return a - b\n") is False
    assert code_domain.verify(ADD, None) is False
    assert code_domain.verify(ADD, "def add(a, b) return") is False


def test_future_imports_in_a_solution_still_work():
    code = '"""Adds."""\nfrom __future__ import annotations\n\ndef add(a: int, b: int) -> int:\n    return a + b\n'
    assert code_domain.verify(ADD, code) is True


def test_humaneval_style_check_with_entry_point():
    problem = Problem("Write inc(x).", "", "code", meta={
        "tests": ["def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(-1) == 0\n"],
        "entry_point": "inc"})
    assert code_domain.verify(problem, "def inc(x):\n    return x + 1\n") is True
    assert code_domain.verify(problem, "def inc(x):\n    return x\n") is False


@pytest.mark.parametrize("hack", ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n",
                                  "import sys\nprint(sys.stdin.read())\nsys.exit(0)\n"])
def test_exiting_before_the_tests_does_not_pass(hack):
    assert code_domain.verify(ADD, GOOD + hack) is False


def test_infinite_loop_fails_quickly():
    start = time.monotonic()
    assert code_domain.verify(ADD, "def add(a, b):\n    while True:\n        pass\n") is False
    assert time.monotonic() - start < 4.5


def test_malicious_code_does_not_escape():
    marker = f"/tmp/pwned_soar_code_{uuid.uuid4().hex}"
    attacks = [
        GOOD + f"__import__('os').system('touch {marker}')\n",
        GOOD + f"open('{marker}', 'w').write('x')\n",
        GOOD + "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)\n",
    ]
    assert code_domain.verify_batch([ADD] * len(attacks), attacks) == [False, False, False]
    assert not os.path.exists(marker)


def test_verify_batch_keeps_order():
    codes = [GOOD, "def add(a, b):\n    return 0\n", None, GOOD]
    assert code_domain.verify_batch([ADD] * 4, codes) == [True, False, False, True]
    with pytest.raises(ValueError):
        code_domain.verify_batch([ADD], [])
