"""bench/teacher_data.py's question swaps, which its measurements of the teacher's questions rest on: each
must change only what its name says (operands, or expressions) and keep the count, levels and range; and
bench/question_stats.py's counts, which say what the teacher's questions lack."""

import random
import re
import sys
from pathlib import Path

import pytest

from soar_agent.tasks import arith

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import question_stats  # noqa: E402
import teacher_data  # noqa: E402


def operands(question: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", question)]


def shape(question: str) -> str:
    return re.sub(r"\d+", "n", question)


@pytest.fixture
def problems():
    rng = random.Random(3)
    return [arith.generate(level, rng) for level in (2, 4, 5, 6, 7) for _ in range(40)]


def test_generator_small_keeps_levels_and_draws_only_pretraining_operands(problems):
    small = teacher_data.generator_small_like(problems)
    assert [p.level for p in small] == [p.level for p in problems]
    assert max(n for p in small for n in operands(p.question)) <= arith.operand_max(4) == 13
    assert all(arith.in_generator_range(p.question) and p.answer == arith.solve(p.question) for p in small)
    # the generator itself reaches past 13 at these levels, so the cap is what differs
    assert max(n for p in problems for n in operands(p.question)) > 13


def test_generator_operands_keeps_each_expression_and_redraws_its_numbers(problems):
    kept = []
    for before in problems:  # one at a time: an expression with no draw inside the range is left out
        for after in teacher_data.generator_operands_like([before]):
            assert shape(after.question) == shape(before.question) and after.level == before.level
            assert max(operands(after.question)) <= arith.operand_max(after.level)
            assert arith.in_generator_range(after.question) and after.answer == arith.solve(after.question)
            kept.append(after.question != before.question)
    assert len(kept) >= 0.95 * len(problems) and sum(kept) > 0.9 * len(kept)


def test_generator_operands_leaves_out_an_expression_with_no_draw_in_range():
    # ten factors drawn from 1..operand_max(9) = 23 almost never multiply to 999 or less
    hopeless = arith.make_problem("1*1*1*1*1*1*1*1*1*1", level=9)
    assert teacher_data.generator_operands_like([hopeless], tries=20) == []


def test_source_form_names_the_new_swaps():
    assert teacher_data.parse_source("a=runs/x:rewarded@generator-small")[3] == "generator-small"
    assert teacher_data.parse_source("a=runs/x:1-3@generator-operands")[2:] == ((1, 3), "generator-operands")
    with pytest.raises(ValueError, match="expected NAME=RUN_DIR"):
        teacher_data.parse_source("a=runs/x@generator-big")


def test_question_stats_counts_large_operands_compound_subtractions_and_shapes():
    stats = question_stats.question_stats(["3-(2+1)", "4*5", "14+(2-1)", "9-(8+1)"], [2, 1, 2, 2])
    assert stats["operands > 13"] == 1 / 11  # only the 14 of eleven operands
    assert stats["a-(..)"] == 2 / 7  # 3-(2+1) and 9-(8+1); 2-1 subtracts a number
    assert stats["shapes"] == 3 / 4  # n-(n+n) twice, n*n, n+(n-n)
    assert stats["largest operand"] == (3 + 5 + 14 + 9) / 4
