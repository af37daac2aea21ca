"""The arith domain: generator, safe parser, expert steps, strict extraction."""

import random
import re
import time

import pytest

from soar_agent.tasks import arith, parse_item, teacher_item
from soar_agent.tasks.base import RejectedItem


@pytest.mark.parametrize("level", arith.LEVELS)
def test_generated_problems_have_level_many_steps_and_exact_answers(level):
    rng = random.Random(level)
    for _ in range(30):
        problem = arith.generate(level, rng)
        assert len(problem.steps) == level
        assert arith.difficulty(problem.question) == level
        assert problem.answer == arith.solve(problem.question)
        assert arith.extract_answer(arith.expert_completion(problem)) == problem.answer
        # every step's final expression leads to the next: the last step ends in the answer
        assert problem.steps[-1].endswith(f"={problem.answer}")


def test_reduction_order_and_format():
    problem = arith.make_problem("(3+4)*5-6")
    assert problem.answer == "29"
    assert problem.steps == ("**add** 3+4=7, 7*5-6", "**mul** 7*5=35, 35-6", "**sub** 35-6=29")
    assert arith.expert_completion(problem) == (
        "1. **add** 3+4=7, 7*5-6\n2. **mul** 7*5=35, 35-6\n3. **sub** 35-6=29\nAnswer: 29")


@pytest.mark.parametrize("text, value", [("2+3*4", 14), ("(2+3)*4", 20), ("10-4-3", 3), ("10-(4-3)", 9),
                                         (" 7 * ( 1 + 2 ) ", 21), ("2*3*4-5", 19)])
def test_precedence_and_associativity(text, value):
    assert arith.solve(text) == str(value)
    # printing the tree and reparsing gives the same value (minimal parentheses are still correct)
    assert arith.solve(arith.to_text(arith.parse(text))) == str(value)


@pytest.mark.parametrize("hostile", [
    "__import__('os').system('touch /tmp/soar_pwned')",
    "9**9**9",
    "2**10",
    "(" * 5000 + "1" + ")" * 5000,
    "((((((((((((((1))))))))))))))",
    "1" * 50,
    "999999*999999*999999",
    "1+",
    "",
    "3/4",
    "-3+4",
    "1+1" * 100,
])
def test_hostile_or_invalid_text_is_rejected_quickly(hostile):
    started = time.perf_counter()
    with pytest.raises(RejectedItem) as error:
        arith.make_problem(hostile)
    assert time.perf_counter() - started < 0.1
    assert "\n" not in str(error.value) and str(error.value)


def test_strict_answer_extraction():
    assert arith.extract_answer("1. **add** 1+1=2\nAnswer: 2") == "2"
    assert arith.extract_answer("Answer: -07\n") == "-7"
    assert arith.extract_answer("Answer: 3\nAnswer: 4") == "4"
    for lax in ["The answer is 4", "4", "Answer: 4 or 5", "Answer: 4\nmore text", "", "Answer: four",
                "Answer: 1e9"]:
        assert arith.extract_answer(lax) is None, lax
    problem = arith.make_problem("2+2")
    assert not arith.verify(problem, None)
    assert arith.verify(problem, "4")


def test_teacher_item_round_trip():
    problem = arith.make_problem("(1+2)*3")
    question, answer = parse_item("noise " + teacher_item(problem) + " trailing")
    assert (question, answer) == ("(1+2)*3", "9")
    for bad in ["<question>1+1</question>", "<question></question><answer>2</answer>",
                "<question>1+1</question><answer> </answer>", "nothing"]:
        with pytest.raises(RejectedItem):
            parse_item(bad)


@pytest.mark.parametrize("question, reason", [
    ("8-(10+5-6+3)+11", "intermediate result outside 0..999: -4"),
    ("4*12*(8-4)*9", "intermediate result outside 0..999: 1728"),
    ("7*(15-3+1)*(12+7)", "multi-digit times multi-digit product: 91*19"),
    ("1000-1", "number outside 0..999: 1000"),
    ("3-5+9", "intermediate result outside 0..999: -2"),
])
def test_questions_outside_the_domains_range_are_rejected_with_the_reason(question, reason):
    """A teacher's question must be a problem of the domain: the space the generator, the hard sets and their
    expert steps live in (the teacher's other questions lowered what a long training reached, bench/README.md)."""
    from soar_agent import teacher

    with pytest.raises(RejectedItem, match=f"^{re.escape(reason)}$"):
        arith.make_problem(question)
    with pytest.raises(RejectedItem, match=re.escape(reason)) as error:
        teacher.check_item(arith, f"<question>{question}</question><answer>0</answer>", "verified")
    # a step's rejections count by kind, not by the number that left the range
    assert teacher.rejection_kind(error.value) == reason.split(":")[0]
    assert not arith.in_generator_range(question)
    # at the edges of the range: 0, 999 and a single-digit factor of a multi-digit number are inside
    for inside in ("5-5+3", "999-0", "9*111", "111*9", "(2+3)*(1+1)"):
        assert arith.in_generator_range(inside) and arith.make_problem(inside).answer == arith.solve(inside)


def test_every_generated_problem_is_inside_the_range():
    rng = random.Random(3)
    for level in arith.LEVELS:
        for _ in range(50):
            assert arith.in_generator_range(arith.generate(level, rng).question)
