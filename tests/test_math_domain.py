"""The math dataset domain: loading with precise errors, strict \\boxed extraction, guarded verification."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest

import soar_agent.tasks.math as math_domain
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
    assert math_domain._pool_state["pool"] is None
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


def test_hard_timeout_kills_and_rebuilds_the_pool():
    # math-verify's own alarm is at least 1 s; a 0.5 s hard limit forces the kill path
    assert math_domain.verify_batch(["1"], ["1"]) == [True]
    pool_before = math_domain._pool_state["pool"]
    start = time.monotonic()
    results = math_domain.verify_batch(["3", "2", "5"], ["9^{9^{9^{9}}}", "2", "5"], timeout_s=0.5)
    assert results == [False, True, True]
    assert time.monotonic() - start < 15
    assert math_domain._pool_state["pool"] is not pool_before


def test_pool_is_reused_and_survives_dead_workers():
    assert math_domain.verify_batch(["1"], ["1"]) == [True]
    pool = math_domain._pool_state["pool"]
    assert math_domain.verify_batch(["2"], ["2"]) == [True]
    assert math_domain._pool_state["pool"] is pool
    for process in list(pool._processes.values()):
        process.kill()
        process.join(5)
    deadline = time.monotonic() + 5
    while not math_domain._pool_broken(pool) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert math_domain.verify_batch(["\\frac{1}{3}", "2"], ["\\frac{2}{6}", "3"]) == [True, False]


def test_workers_run_under_the_sandbox_guard():
    assert math_domain.verify_batch(["1"], ["1"]) == [True]
    pool = math_domain._pool_state["pool"]
    marker = f"/tmp/pwned_soar_math_{uuid.uuid4().hex}"
    with pytest.raises(PermissionError, match="blocked by sandbox: process"):
        pool.submit(os.system, f"touch {marker}").result(timeout=30)
    with pytest.raises(PermissionError, match="blocked by sandbox: write outside sandbox"):
        pool.submit(open, marker, "w").result(timeout=30)
    assert not os.path.exists(marker)


def test_items_on_a_crashed_worker_are_rerun(monkeypatch):
    assert math_domain.verify_batch(["1"], ["1"]) == [True]
    pool = math_domain._pool_state["pool"]
    real_wait = math_domain.wait
    kills = []

    def wait_after_killing_the_workers_once(*args, **kwargs):
        # the first wait of the batch: items are in flight on these workers; kill them all (no timing guess)
        if not kills:
            kills.append(len(pool._processes))
            for process in list(pool._processes.values()):
                process.kill()
                process.join()
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(math_domain, "wait", wait_after_killing_the_workers_once)
    # all true: an item that lost its worker and was not rerun would show up as False
    golds = [str(i) for i in range(200)]
    predictions = [f"\\frac{{{2 * i}}}{{2}}" for i in range(200)]
    results = math_domain.verify_batch(golds, predictions)
    assert kills and kills[0] >= 1
    assert results == [True] * 200
    assert math_domain._pool_state["pool"] is not pool
