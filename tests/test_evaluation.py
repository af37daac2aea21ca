"""pass@k, summaries and fail@k mining."""

import random
from math import comb

import pytest

from soar_agent.evaluation import ProblemResult, default_ks, pass_at_k, summarize
from soar_agent.mining import read_jsonl, sampling_rounds, split_hard, write_jsonl
from soar_agent.tasks import arith, generate_problems
from soar_agent.tasks.base import Problem, RejectedItem


def test_pass_at_k_unbiased_estimator():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - comb(7, 5) / comb(10, 5))
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 6, 5) == 1.0  # fewer than k failures: every k-subset has a success
    assert pass_at_k(128, 1, 32) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 8)


def test_summary_per_level():
    a, b = Problem("1+1", "2", "arith", 1), Problem("2+2", "4", "arith", 2)
    results = [ProblemResult(a, 4, 2, True), ProblemResult(b, 4, 0, False)]
    summary = summarize(results, default_ks(4))
    assert summary["greedy_acc"] == 0.5
    assert summary["pass@1"] == pytest.approx(0.25)
    assert summary["levels"]["1"]["pass@4"] == 1.0 and summary["levels"]["2"]["pass@4"] == 0.0


def test_sampling_rounds_sum_to_k():
    assert sampling_rounds(128) == [16, 16, 32, 64]
    assert sum(sampling_rounds(100)) == 100 and sum(sampling_rounds(5)) == 5


def test_split_is_stratified_and_seeded():
    problems = generate_problems(arith, [5] * 12 + [6] * 12, random.Random(0))
    train, val, test = split_hard(problems, 0.25, 0.25, seed=3)
    assert (len(train), len(val), len(test)) == (12, 6, 6)
    assert sorted(p.level for p in test) == sorted(p.level for p in val) == [5] * 3 + [6] * 3
    assert not {p.question for p in train} & ({p.question for p in val} | {p.question for p in test})
    assert split_hard(problems, 0.25, 0.25, seed=3) == (train, val, test)
    assert split_hard(problems, 0.5, 0.0, seed=3)[1] == []  # no hard-val asked for: the old train/test split


def test_jsonl_round_trip_and_errors(tmp_path):
    problems = generate_problems(arith, [3, 4], random.Random(1))
    write_jsonl(problems, tmp_path / "x.jsonl")
    assert read_jsonl(tmp_path / "x.jsonl", "arith") == problems
    (tmp_path / "bad.jsonl").write_text('{"question": "1+1", "answer": "2"}\n{"question": "1+1", "answer": 2}\n')
    with pytest.raises(RejectedItem, match=r"bad.jsonl:2: field 'answer'"):
        read_jsonl(tmp_path / "bad.jsonl", "arith")


def test_merge_into_jsonl_skips_known_questions(tmp_path):
    from soar_agent.mining import merge_into_jsonl

    first = generate_problems(arith, [5, 5], random.Random(2))
    second = generate_problems(arith, [6], random.Random(3))
    path = tmp_path / "hard.jsonl"
    assert merge_into_jsonl(first, path) == 2
    assert merge_into_jsonl(first[:1] + second, path) == 3
    assert read_jsonl(path, "arith") == first + second


@pytest.mark.parametrize("domain", ["arith", "program"])
def test_the_shipped_hard_sets_are_three_disjoint_splits(domain):
    """hard-val chooses settings and hard-test reports them: no question may sit in two of the splits."""
    from pathlib import Path

    hard = Path(__file__).resolve().parent.parent / "curricula" / "hard"
    splits = {split: {p.question for p in read_jsonl(hard / f"{domain}-hard-{split}.jsonl", domain)}
              for split in ("train", "val", "test")}
    assert all(len(questions) >= 100 for questions in splits.values())
    assert not splits["train"] & splits["val"] and not splits["train"] & splits["test"]
    assert not splits["val"] & splits["test"]
