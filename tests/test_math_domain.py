"""The math dataset domain: loading with precise errors, strict \\boxed extraction, guarded verification."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import pytest

import soar_agent.tasks.math as math_domain
from soar_agent import scoring_sandbox
from soar_agent.tasks.base import Problem, RejectedItem


@pytest.fixture(scope="module", autouse=True)
def _stop_workers():
    yield
    math_domain.shutdown_verifier()


def write_jsonl(path, rows) -> str:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


# -------------------------------------------------------------------------------------- loading


def test_load_jsonl_with_aliases_levels_and_numeric_answers(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [
        {"question": "What is 1/2 as a decimal?", "answer": "0.5", "level": 2},
        "",
        {"problem": "How many primes are below 10?", "answer": 4},
    ])
    first, second = math_domain.load_problems(path)
    assert first == Problem("What is 1/2 as a decimal?", "0.5", "math", level=2)
    assert (second.question, second.answer, second.level) == ("How many primes are below 10?", "4", None)
    assert second.meta["source"] == f"{path}:3"


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"question": "q", "answer": ', "data.jsonl:2: invalid JSON (Expecting value"),
        ('{"question": "q"}', "data.jsonl:2: field 'answer': missing"),
        ('{"answer": "1"}', "data.jsonl:2: field 'question': missing"),
        ('{"question": "   ", "answer": "1"}', "data.jsonl:2: field 'question': empty"),
        ('{"question": "q", "answer": ["1"]}', "data.jsonl:2: field 'answer': expected a string, got list"),
        ('{"question": "q", "answer": true}', "data.jsonl:2: field 'answer': expected a string, got bool"),
        ('{"question": "q", "answer": "1", "level": "hard"}', "data.jsonl:2: field 'level': expected an integer in [0, 1000000], got hard"),
        ('{"question": "q", "solution": "so 1"}', "data.jsonl:2: field 'answer': missing ('solution' is"),
        ('[1, 2]', "data.jsonl:2: expected a JSON object, got list"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, bad_line, message):
    path = write_jsonl(tmp_path / "data.jsonl", [{"question": "fine", "answer": "1"}, bad_line])
    with pytest.raises(RejectedItem) as error:
        math_domain.load_problems(path)
    text = str(error.value)
    assert text.startswith(str(tmp_path / message.split(":")[0])) and message in text
    assert "\n" not in text


def test_parquet_round_trip(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    rows = [{"question": "1+1?", "answer": "2", "level": 1}, {"question": "x if 2x=1?", "answer": "\\frac{1}{2}", "level": 3}]
    path = tmp_path / "data.parquet"
    parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    problems = math_domain.load_problems(path)
    assert [(p.question, p.answer, p.level) for p in problems] == [(r["question"], r["answer"], r["level"]) for r in rows]

    parquet.write_table(pyarrow.Table.from_pylist([{"question": "q", "answer": None}]), path)
    with pytest.raises(RejectedItem, match=r"data\.parquet:1: field 'answer': missing"):
        math_domain.load_problems(path)

    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(RejectedItem, match=r"broken\.parquet: unreadable Parquet"):
        math_domain.load_problems(tmp_path / "broken.parquet")


# -------------------------------------------------------------------------------------- prompt / extraction


def test_student_prompt():
    assert math_domain.student_prompt("Compute 2+2.") == (
        "Compute 2+2.\nPlease reason step by step, and put your final answer within \\boxed{}.\n")


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("so the answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("first \\boxed{1}, corrected: \\boxed{2}", "2"),
        ("the set \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed{\\boxed{7}} done", "\\boxed{7}"),
        ("The answer is 42.", None),  # never score the whole text
        ("\\boxed{}", None),
        ("\\boxed{3} but then \\boxed{\\frac{1}{", None),  # truncated final answer is no answer
        ("\\boxed 5", None),
    ],
)
def test_extract_answer(completion, expected):
    assert math_domain.extract_answer(completion) == expected


# -------------------------------------------------------------------------------------- verification


def test_equivalent_answers_and_wrong_answers():
    predictions = [math_domain.extract_answer(c) for c in ("\\boxed{0.5}", "\\boxed{2}", "\\boxed{1+x^2}", "no box")]
    assert predictions[-1] is None
    assert math_domain.verify_batch(["\\frac{1}{2}", "3", "x^2+1", "3"], predictions) == [True, False, True, False]
    assert math_domain.verify(Problem("q", "\\frac{1}{2}", "math"), "\\frac{2}{4}") is True
    assert math_domain.verify(Problem("q", "3", "math"), "2") is False


def test_none_predictions_need_no_workers():
    math_domain.shutdown_verifier()
    assert math_domain.verify_batch(["1", "2"], [None, None]) == [False, False]
    assert scoring_sandbox.sandbox_for("math").pid is None
    with pytest.raises(ValueError):
        math_domain.verify_batch(["1"], [])


def test_adversarial_predictions_are_false_and_harmless():
    marker = f"/tmp/pwned_soar_math_{uuid.uuid4().hex}"
    predictions = [
        f"__import__('os').system('touch {marker}')",
        f"\\text{{__import__('os').system('touch {marker}')}}",
        "9**9**9**9",
        "9^{9^{9^{9}}}",
        "(" * 5000 + "1" + ")" * 5000,
        "3",  # the one legitimately equal answer still counts
    ]
    start = time.monotonic()
    results = math_domain.verify_batch(["3"] * len(predictions), predictions, timeout_s=3.0)
    assert results == [False] * 5 + [True]
    assert time.monotonic() - start < 30
    assert not os.path.exists(marker)


def test_hard_timeout_kills_only_that_answers_child():
    # math-verify's own alarm is at least 1 s; a 0.5 s hard limit forces the kill path
    assert math_domain.verify_batch(["1"], ["1"]) == [True]
    helper = scoring_sandbox.sandbox_for("math").pid
    start = time.monotonic()
    results = math_domain.verify_batch(["3", "2", "5"], ["9^{9^{9^{9}}}", "2", "5"], timeout_s=0.5)
    assert results == [False, True, True]
    assert time.monotonic() - start < 15
    assert scoring_sandbox.sandbox_for("math").pid == helper  # each answer has its own child: only it died


def test_helper_is_reused_and_replaced_when_it_dies():
    assert math_domain.verify_batch(["1"], ["1"]) == [True]
    helper = scoring_sandbox.sandbox_for("math").pid
    assert math_domain.verify_batch(["2"], ["2"]) == [True]
    assert scoring_sandbox.sandbox_for("math").pid == helper
    os.kill(helper, signal.SIGKILL)
    assert math_domain.verify_batch(["\\frac{1}{3}", "2"], ["\\frac{2}{6}", "3"]) == [True, False]
    assert scoring_sandbox.sandbox_for("math").pid not in (None, helper)


def test_answers_of_a_helper_killed_mid_batch_are_rerun(monkeypatch):
    assert math_domain.verify_batch(["1"], ["1"]) == [True]
    sandbox = scoring_sandbox.sandbox_for("math")
    helper = sandbox.pid
    real_read_line = scoring_sandbox.ScoringSandbox._read_line
    kills = []

    def read_line_after_killing_the_helper_once(self, deadline):
        # the batch has been handed over and is being scored: kill the helper now (no timing guess)
        if not kills and self.pid == helper:
            kills.append(helper)
            os.kill(helper, signal.SIGKILL)
        return real_read_line(self, deadline)

    monkeypatch.setattr(scoring_sandbox.ScoringSandbox, "_read_line", read_line_after_killing_the_helper_once)
    # all true: an answer that lost its helper and was not rerun would show up as False
    golds = [str(i) for i in range(200)]
    predictions = [f"\\frac{{{2 * i}}}{{2}}" for i in range(200)]
    results = math_domain.verify_batch(golds, predictions)
    assert kills == [helper]
    assert results == [True] * 200
    assert sandbox.pid not in (None, helper)
