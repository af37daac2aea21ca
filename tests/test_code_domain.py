"""The code dataset domain: loading, fenced-block extraction, and sandboxed test runs that cannot be gamed."""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import pytest

import soar_agent.tasks.code as code_domain
from soar_agent.tasks.base import Problem, RejectedItem
from tests.test_sandbox import ESCAPES, attack, sentinel, snapshot  # noqa: F401 (sentinel is a fixture)

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
    path = write_jsonl(tmp_path / "code.jsonl", [{"question": "ok", "tests": ["assert f() == 1"]}, bad_line])
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


# -------------------------------------------------------------------------------------- reward hacks (issue)


LYING_EQ = """
class Anything:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __bool__(self): return True
    def __hash__(self): return 0
    def __lt__(self, other): return True
    def __gt__(self, other): return True
    def __sub__(self, other): return self
    def __abs__(self): return 0
"""


@pytest.mark.parametrize("returned", [
    "Anything()",
    "type('I', (int,), {'__eq__': lambda s, o: True, '__hash__': int.__hash__})(0)",  # a lying int subclass
    "type('S', (str,), {'__eq__': lambda s, o: True, '__hash__': str.__hash__})('')",
    "[Anything()]",  # hidden inside plain containers
    "{Anything(): 1}",
    "(x for x in [3])",  # not data at all
])
def test_a_lying_eq_does_not_pass(returned):
    code = LYING_EQ + f"def add(a, b):\n    return {returned}\n"
    problem = Problem("Write add(a, b).", "", "code", meta={"tests": [
        "assert add(1, 2) == 3", "assert [add(1, 2)] == [3]", "assert add(-1, 1) == 0"]})
    assert code_domain.verify(problem, code) is False
    for test in ("assert add(1, 2)", "assert not add(1, 2) != 3", "assert abs(add(1, 2) - 3) < 1e-9",
                 "assert sorted([add(1, 2)]) == [3]", "assert math.isclose(add(1, 2), 3)"):
        assert code_domain.verify(Problem("q", "", "code", meta={"tests": [test]}), code) is False, test


# a value no solution can know without computing it; it must never be visible inside the sandbox
SECRET = 918273645
MYSTERY = Problem("Write mystery(n).", "", "code", meta={"tests": [f"assert mystery(17) == {SECRET}"]})
MYSTERY_SOLUTION = "def mystery(n):\n    return n * 54016097 - 4\n"

FORGERS = [
    # the old completion signal: echo what stdin holds, print a marker, exit 0 before the tests
    "import sys\nprint(sys.stdin.read())\nsys.exit(0)\n",
    "import os\nos.write(1, b'0\\tTrue\\n')\nos._exit(0)\n",
    # scrape everything the process can see (its program, argv, environment, stdin, the harness's frames
    # and the defaults of functions in them) and present each as the result, in the old protocol (last
    # line of stdout) and in the new one (records on every descriptor); then leave before the tests run
    """
import os, re, sys
texts = [open('prog.py').read(), ' '.join(sys.argv), repr(dict(os.environ)), sys.stdin.read()]
defaults = []
frame = sys._getframe()
while frame is not None:
    for scope in (frame.f_locals, frame.f_globals):
        texts.append(repr(scope))
        defaults += [repr(v.__defaults__) for v in list(scope.values()) if callable(v) and getattr(v, '__defaults__', None)]
    frame = frame.f_back
found = []
for text in texts + defaults:  # defaults last: a secret kept there would end up on the last line
    found += re.findall(r'[0-9a-f]{8,}|\\d+', text)
for fd in range(1, 64):
    for token in found:
        try:
            os.write(fd, ('0\\t%s\\n' % token).encode())
        except OSError:
            break
print('\\n'.join(found))
sys.stdout.flush()
os._exit(0)
""",
]


def test_the_expected_values_never_enter_the_sandbox():
    from soar_agent.tasks import code_checks

    plan = code_checks.plan_tests(MYSTERY.meta["tests"], None)
    assert str(SECRET) not in code_checks.child_program(plan, MYSTERY_SOLUTION)
    assert code_domain.verify(MYSTERY, MYSTERY_SOLUTION) is True


@pytest.mark.parametrize("forger", FORGERS)
def test_a_forged_completion_does_not_pass(forger):
    assert code_domain.verify(MYSTERY, "def mystery(n):\n    return 0\n" + forger) is False
    assert code_domain.verify(ADD, forger) is False


def test_values_compare_as_plain_python_data():
    cases = [
        ("return [1, (2, 3), {'a': {4}}, None, b'x', 1.5, float('inf')]",
         "assert f() == [1, (2, 3), {'a': {4}}, None, b'x', 1.5, float('inf')]", True),
        ("return [1, 2]", "assert f() == (1, 2)", False),  # a list is no tuple, as in Python
        ("return 0.1 + 0.2", "assert math.isclose(f(), 0.3)", True),
        ("return 0.1 + 0.2", "assert f() == 0.3", False),
        ("return 'abc'", "assert f().upper() == 'ABC'", True),
        ("return frozenset({1})", "assert f() == {1}", True),
        ("return 10 ** 50", "assert f() == 10 ** 50", True),
    ]
    for body, test, expected in cases:
        assert code_domain.verify(Problem("q", "", "code", meta={"tests": [test]}), f"def f():\n    {body}\n") is expected, test


def test_solutions_cannot_patch_what_the_tests_use():
    patches = [
        "import builtins\nbuiltins.sorted = lambda *a, **k: [1, 2]\n",
        "def sorted(*a, **k):\n    return [1, 2]\n",
        "import math\nmath.isclose = lambda *a, **k: True\n",
    ]
    problem = Problem("q", "", "code", meta={"tests": ["assert sorted(f()) == [1, 2]", "assert math.isclose(min(f()), 1.0)"]})
    for patch in patches:
        assert code_domain.verify(problem, "def f():\n    return [9, 9]\n" + patch) is False, patch
    assert code_domain.verify(problem, "def f():\n    return [2, 1]\n") is True


@pytest.mark.parametrize(("tests", "message"), [
    (["for x in range(3):\n    assert f(x) == x"], "assert inside for (line 2) cannot be checked by value"),
    (["y = 3\nassert f(1) == y"], "one side must be a constant"),
    (["assert True"], "the tests never call the solution"),
    (["def check(candidate):\n    assert candidate(1) == 2\n"], "no entry_point"),
])
def test_tests_that_cannot_be_checked_by_value_are_refused_on_load(tmp_path, tests, message):
    path = write_jsonl(tmp_path / "code.jsonl", [{"question": "q", "tests": tests}])
    with pytest.raises(RejectedItem) as error:
        code_domain.load_problems(path)
    assert str(error.value).startswith(f"{path}:1: field 'tests': ") and message in str(error.value)


def test_a_solution_named_like_a_builtin_is_called():
    problem = code_domain.load_problems(write_jsonl(Path(tempfile.mkdtemp()) / "c.jsonl", [
        {"question": "Write max(a, b).", "tests": ["assert max(1, 2) == 2", "assert max(5, 3) == 5"]}]))[0]
    assert code_domain.verify(problem, "def max(a, b):\n    return a if a > b else b\n") is True
    assert code_domain.verify(problem, "def max(a, b):\n    return a\n") is False
    assert code_domain.verify(problem, "x = 1\n") is False  # the builtin max does not count


def test_setup_statements_and_in_place_changes():
    problem = Problem("q", "", "code", meta={"tests": ["values = [3, 1, 2]\nsort_in_place(values)\nassert values == [1, 2, 3]"]})
    assert code_domain.verify(problem, "def sort_in_place(v):\n    v.sort()\n") is True
    assert code_domain.verify(problem, "def sort_in_place(v):\n    pass\n") is False


@pytest.mark.parametrize("route", sorted(ESCAPES))
def test_escape_routes_from_a_solution_change_nothing_outside(route, sentinel):
    before = snapshot(sentinel)
    assert code_domain.verify(ADD, GOOD + attack(ESCAPES[route], sentinel) + "\n") is False
    assert snapshot(sentinel) == before


# ----------------------------------------------------------------------- second round (issue)


def test_a_solution_that_leaves_a_process_behind_does_not_pass(monkeypatch):
    """A correct solution that disarms the hook and leaves sleeping grandchildren in a session of their own:
    verify must not pass it, and nothing of it may be alive afterwards."""
    from soar_agent import isolation
    from tests.test_sandbox import DISARM, LEAVE_BEHIND, kill_leftovers, needs_root_kernel_layers, sandboxed_processes

    needs_root_kernel_layers()
    quiet = {"print(os.getcwd(), flush=True)\n": "", "    print('left', count, flush=True)\n": ""}  # stdout is the protocol
    solution = DISARM + LEAVE_BEHIND + "_soar_leave(4, 30)\n" + GOOD
    for loud, silent in quiet.items():
        assert loud in solution
        solution = solution.replace(loud, silent)
    workdirs = []  # the run's temp dir: its processes have it as HOME
    real_make_workdir = isolation.make_workdir
    monkeypatch.setattr(isolation, "make_workdir", lambda plan: workdirs.append(real_make_workdir(plan)) or workdirs[-1])
    try:
        assert code_domain.verify(ADD, solution) is False
        assert len(workdirs) == 1 and sandboxed_processes(workdirs[0]) == []
    finally:
        for workdir in workdirs:
            kill_leftovers(workdir)


def test_a_solution_cannot_read_the_tests_file():
    """The tests file is an ordinary 0644 file the sandbox's uid may read; a solution that finds it (from
    the parent's command line, say) and returns the asserted constant must not pass, and must read nothing."""
    from tests.test_sandbox import needs_layer

    needs_layer("landlock", "landlock reads")
    folder = tempfile.mkdtemp(prefix="soar-code-tests-")
    try:
        os.chmod(folder, 0o755)
        path = Path(folder) / "problems.jsonl"
        write_jsonl(path, [{"question": "Return the secret.", "tests": ["assert secret() == 73125"]}])
        os.chmod(path, 0o644)
        [problem] = code_domain.load_problems(path)
        cheat = (
            "import re\n"
            "def secret():\n"
            "    try:\n"
            f"        text = open({str(path)!r}).read()\n"
            "    except OSError:\n"
            "        return None\n"
            "    return int(re.search(r'== (\\d+)', text).group(1))\n"
        )
        assert code_domain.verify(problem, cheat) is False
        assert code_domain.verify(problem, "def secret():\n    return 73125\n") is True
        parent = (
            "import os\n"
            "def secret():\n"
            "    try:\n"
            "        return len(open('/proc/%d/cmdline' % os.getppid(), 'rb').read())\n"
            "    except OSError:\n"
            "        return 0\n"
        )
        assert code_domain.verify(Problem("q", "", "code", meta={"tests": ["assert secret() == 0"]}), parent) is True
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
