"""The program domain: grammar parser, tracer vs sandbox ground truth, hostile programs."""

import random
import time

import pytest

from soar_agent.tasks import program
from soar_agent.tasks.base import RejectedItem


def test_generated_programs_agree_with_the_sandbox_at_every_level():
    rng = random.Random(0)
    levels = [level for level in program.LEVELS for _ in range(25)]
    problems = program.generate_many(levels, rng)  # raises if the tracer and the sandbox ever disagree
    assert [p.level for p in problems] == levels
    for problem in problems:
        assert program.parse(problem.question).text() == problem.question
        assert program.extract_answer(program.expert_completion(problem)) == problem.answer
        assert problem.steps[-1].endswith(f"={problem.answer}")


def test_make_problem_runs_model_written_program_in_the_sandbox():
    problem = program.make_problem("a=3\nb=a+2\nfor i in range(2):\n    b=b*2\nprint(b)")
    assert problem.answer == "20"
    assert problem.steps == ("**set** a=3", "**calc** b=a+2=3+2=5", "**loop** b=b*2=5*2=10",
                             "**loop** b=b*2=10*2=20")
    assert program.expert_completion(problem).endswith("\nAnswer: 20")


@pytest.mark.parametrize("hostile, reason", [
    ("import os\nos.system('touch /tmp/soar_pwned')\nprint(a)", "not an assignment"),
    ("a=__import__('os')\nprint(a)", "not an assignment"),
    ("while True:\n    a=1\nprint(a)", "not an assignment"),
    ("a=9**9**9\nprint(a)", "not an assignment"),
    ("a=bytearray(10*1024**3)\nprint(a)", "not an assignment"),
    ("a=1\nfor i in range(9):\n    a=a*a\nprint(a)", "loop count"),
    ("a=b+1\nprint(a)", "before assignment"),
    ("a=1\nprint(b)", "undefined"),
    ("a=1", "at least one assignment"),
    ("a=1\n" * 40 + "print(a)", "longer than"),
    ("a=1\nfor i in range(2):\na=a+1\nprint(a)", "indented body"),
])
def test_hostile_programs_are_rejected_before_anything_runs(hostile, reason):
    started = time.perf_counter()
    with pytest.raises(RejectedItem, match=reason):
        program.make_problem(hostile)
    assert time.perf_counter() - started < 0.1  # rejected by the parser, the sandbox never started


def test_strict_extraction():
    assert program.extract_answer("1. **set** a=1\nAnswer: 1") == "1"
    assert program.extract_answer("print(a)\n1") is None
