"""bench/teacher_learns.py's comparison: trained minus frozen over the steps after the first, paired by step."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import teacher_learns  # noqa: E402


def step(number, reward, stderr=0.01):
    return {"step": number, "reward": reward, "stderr": stderr}


def test_the_difference_leaves_out_step_one_and_pairs_steps_by_number():
    trained = [step(1, 0.5), step(2, 0.03), step(3, 0.05), step(4, 0.9)]
    frozen = [step(1, -0.5), step(2, 0.01), step(3, 0.02)]  # a step short: step 4 has no partner
    mean, error, n = teacher_learns.difference(trained, frozen)
    assert n == 2 and mean == pytest.approx((0.02 + 0.03) / 2)
    assert error == pytest.approx((4 * 0.01 ** 2) ** 0.5 / 2)
    assert teacher_learns.difference([step(1, 0.1)], [step(1, 0.2)])[2] == 0  # step 1 alone: nothing to compare
