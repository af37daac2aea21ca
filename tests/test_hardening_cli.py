"""Hardening (issue 8 §4-§6): bad input is one line `soar: error: ...` on stderr and exit status 2, never a
traceback; every size config or data can set has a maximum; a data line, a prompt or a file cannot exhaust
memory or hang the model; a second SIGTERM / Ctrl-C stops at once with the store consistent; the
transformers floor loads the tokenizer the package writes. The CLI runs as a subprocess (tests/test_cli.py)."""

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from soar_agent.mining import write_jsonl
from soar_agent.store import Store, StoreError, quick_check
from soar_agent.tasks import arith, generate_problems
from tests.test_cli import assert_one_line_error, soar

ROOT = Path(__file__).resolve().parent.parent
GOOD_ROW = {"question": "3 + 4", "answer": "7"}


def jsonl(path: Path, *rows) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def toml_path(path) -> str:
    return json.dumps(str(path))  # a TOML string for --set


def hard_sets(tmp_path: Path) -> tuple[Path, Path]:
    import random

    rng = random.Random(5)
    write_jsonl(generate_problems(arith, [5] * 3, rng), tmp_path / "train.jsonl")
    write_jsonl(generate_problems(arith, [5] * 2, rng), tmp_path / "test.jsonl")
    return tmp_path / "train.jsonl", tmp_path / "test.jsonl"


# ---------------------------------------------------------------------------------------------- §5: the cases


def test_run_dir_that_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("notes")
    assert_one_line_error(soar("run", "--run-dir", tmp_path / "afile", "--no-export"), "afile", "is a file")
    assert (tmp_path / "afile").read_text() == "notes"


def test_run_dir_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("notes")
    assert_one_line_error(soar("run", "--run-dir", tmp_path / "afile" / "run", "--no-export"),
                          "afile/run", "afile is a file")


def unwritable_parent(tmp_path: Path) -> Path:
    """A directory the process cannot create entries in: read-only mode, or (as root, which ignores modes)
    sysfs, which refuses new entries to everyone."""
    if os.geteuid() != 0:
        parent = tmp_path / "locked"
        parent.mkdir(mode=0o500)
        return parent
    try:
        os.mkdir("/sys/soar-probe")
    except OSError:
        return Path("/sys")
    os.rmdir("/sys/soar-probe")
    pytest.skip("running as root with a writable /sys: no unwritable directory to try")


def test_run_dir_under_an_unwritable_parent(tmp_path):
    parent = unwritable_parent(tmp_path)
    assert_one_line_error(soar("run", "--run-dir", parent / "run", "--no-export"), str(parent / "run"), "not writable")


@pytest.mark.parametrize("row, field", [
    ({**GOOD_ROW, "steps": 5}, "'steps'"),
    ({**GOOD_ROW, "steps": [1, 2]}, "'steps'"),
    ({**GOOD_ROW, "level": 1e23}, "'level'"),
    ('{"question": "3 + 4", "answer": "7", "level": 100000000000000000000000}', "'level'"),  # SQLite overflow
    ({**GOOD_ROW, "level": -1}, "'level'"),
    ('{"question": "3 + 4", "answer": "7", "level": NaN}', "NaN is not valid JSON"),
    ({**GOOD_ROW, "domain": 5}, "'domain'"),
], ids=["steps-int", "steps-ints", "level-1e23", "level-10**23", "level-negative", "level-nan", "domain-int"])
def test_a_bad_field_in_a_jsonl_row_names_file_line_and_field(tmp_path, row, field):
    data = jsonl(tmp_path / "pool.jsonl", GOOD_ROW, row)
    # the data is read before the model: a missing model is not what fails
    assert_one_line_error(soar("eval", "--model", tmp_path / "no-model", "--data", data), "pool.jsonl:2", field)


def test_a_deeply_nested_json_line(tmp_path):
    data = tmp_path / "deep.jsonl"
    data.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    assert_one_line_error(soar("eval", "--data", data), "deep.jsonl:1", "nested too deeply")


def test_an_empty_hard_train_file_is_refused_before_the_run_is_created(tmp_path, random_tiny_dir):
    (tmp_path / "empty.jsonl").write_text("")
    train, test = hard_sets(tmp_path)
    run = tmp_path / "run"
    for path, field in ((tmp_path / "empty.jsonl", "domain.hard_train"), (tmp_path / "empty.jsonl", "domain.hard_test")):
        result = soar("run", "--run-dir", run, "--no-export", "--set", f"model.path={toml_path(random_tiny_dir)}",
                      "--set", f"domain.hard_train={toml_path(path if field.endswith('train') else train)}",
                      "--set", f"domain.hard_test={toml_path(path if field.endswith('test') else test)}")
        assert_one_line_error(result, "empty.jsonl", "holds no problems", field)
        assert not (run / "soar.db").exists()  # a later run with a good file starts cleanly


def test_hours_too_large_for_a_deadline(tmp_path):
    assert_one_line_error(soar("run", "--run-dir", tmp_path / "run", "--hours", "1e305"), "--hours", "8760")
    assert not (tmp_path / "run").exists()


def test_status_of_a_run_whose_stored_deadline_is_infinite(tmp_path):
    # stored by a run started before --hours was bounded: `soar status` raised OverflowError
    with Store(tmp_path / "run" / "soar.db") as store:
        run = store.create_run(name="old", mode="soar", status="running")
        store.log_event(run_id=run, level="info", kind="session", message="session started",
                        data={"deadline": float("inf"), "max_teacher_steps": 0})
    for args in ([], ["--json"]):
        result = soar("status", tmp_path / "run", *args)
        assert result.returncode == 0 and not result.stderr, result.stderr
    assert json.loads(soar("status", tmp_path / "run", "--json").stdout)["remaining_s"] is None


def test_status_of_a_killed_run_says_so_and_what_a_resume_gets(tmp_path):
    """A run whose process was killed stays marked running in its store: `soar status` tells it from a live
    one by its last stored write (the agent's heartbeat comes every few seconds inside a unit), and shows
    the time a resume gets rather than a deadline that passes while the run is down."""
    from datetime import datetime, timezone

    def ago(seconds):
        return datetime.fromtimestamp(time.time() - seconds, timezone.utc).isoformat(timespec="milliseconds")

    with Store(tmp_path / "run" / "soar.db") as store:
        run = store.create_run(name="night", mode="soar", status="running")
        session = store.log_event(run_id=run, level="info", kind="session", message="session started",
                                  data={"deadline": time.time() - 3 * 3600 + 8 * 3600, "max_teacher_steps": 0,
                                        "until": False, "used_s": 0.0})
        last = store.log_event(run_id=run, level="info", kind="teacher-sampled", message="step 1")
        store._write(lambda c: c.executemany("UPDATE events SET ts = ? WHERE id = ?",
                                             [(ago(3 * 3600), session), (ago(2 * 3600), last)]))
    status = json.loads(soar("status", tmp_path / "run", "--json").stdout)
    assert 2 * 3600 <= status["last_seen_s"] < 2 * 3600 + 60
    assert 7 * 3600 - 60 < status["remaining_s"] <= 7 * 3600  # 8 h less the hour it worked
    human = soar("status", tmp_path / "run").stdout
    assert "nothing stored for 2h 00m: killed or crashed?" in human and "7h 00m left for a resume" in human
    with Store(tmp_path / "run" / "soar.db") as store:  # alive: a heartbeat a few seconds ago
        store.heartbeat(run)
    human = soar("status", tmp_path / "run").stdout
    assert "killed" not in human and "running:" in human and "4h 59m left" in human  # its deadline


def test_status_says_what_a_session_does_before_its_first_event(tmp_path):
    """A session stores its first event when its first unit ends (minutes; a hard-only step, a whole step):
    until then `soar status` says what it is doing from the store, not a guess: a new run evaluates the base
    model, a resumed one redoes the step or the final training that a stop cut short."""
    from soar_agent.status import format_status, run_status

    def phase(run_dir):
        with Store(run_dir / "soar.db") as store:
            run = store.require_run()["id"]
            store.log_event(run_id=run, level="info", kind="session", message="session started",
                            data={"deadline": time.time() + 3600, "max_teacher_steps": 0, "until": False, "used_s": 0.0})
        return format_status(run_status(run_dir), width=200).splitlines()[0]

    for mode in ("soar", "hard-only"):
        with Store(tmp_path / mode / "soar.db") as store:
            store.create_run(name=mode, mode=mode, status="running")
        assert phase(tmp_path / mode) == (f"run {mode} ({mode}): running: session started: evaluating the base"
                                          " model on hard-test (step 0)")
        with Store(tmp_path / mode / "soar.db") as store:
            store.add_evaluation(run_id=store.require_run()["id"], set_name="hard-test", results=[],
                                 summary={"pass@1": 0.0}, samples_per_problem=1, temperature=1.0, teacher_step=0)
    assert phase(tmp_path / "hard-only").endswith("running: resumed: training the baseline (no teacher in this mode)")
    assert phase(tmp_path / "soar").endswith("running: resumed: teacher step 1")
    with Store(tmp_path / "soar" / "soar.db") as store:
        store.add_checkpoint(run_id=store.require_run()["id"], path=tmp_path / "part", role="pq-chain",
                             status="complete", metrics={"steps": 200})
    assert phase(tmp_path / "soar").endswith("running: resumed: the final training, from its last kept part")


@pytest.mark.parametrize("hours", ["nan", "inf", "-inf", "0", "-1", "1e309", "eight"])
def test_hours_that_give_no_deadline_are_refused(tmp_path, hours):
    assert_one_line_error(soar("run", "--run-dir", tmp_path / "run", "--hours", hours), "--hours")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args", [["--samples", "-1"], ["--samples", "1e308"], ["--samples", str(10**30)],
                                  ["--per-level", "-1"], ["--per-level", "0"], ["--per-level", "1000000000"],
                                  ["--max-new-tokens", "0"], ["--temperature", "nan"], ["--seed", "-3"]])
def test_negative_and_huge_eval_sizes_are_refused(args):
    assert_one_line_error(soar("eval", *args), args[0])


@pytest.mark.parametrize("text", ["", "\n\n  \n"], ids=["empty", "blank-lines"])
def test_an_empty_data_file_is_an_error_not_a_table_of_zero_problems(tmp_path, text):
    data = tmp_path / "pool.jsonl"
    data.write_text(text)
    result = soar("eval", "--data", data)
    assert_one_line_error(result, "pool.jsonl", "holds no problems")
    assert result.stdout == ""


def test_a_binary_data_file_names_the_file(tmp_path):
    data = tmp_path / "weights.bin"
    data.write_bytes(bytes(range(256)) * 40)  # its first "line" is ASCII control bytes: not JSON
    assert_one_line_error(soar("eval", "--data", data), "weights.bin:1", "invalid JSON")
    data.write_bytes(bytes(range(128, 256)) * 40)
    assert_one_line_error(soar("eval", "--data", data), "weights.bin:1", "not UTF-8")
    data.write_bytes(b"\xff\xfe\x00\x01" * 100)
    assert_one_line_error(soar("mine-hard", "--data", data, "--domain", "math"), "weights.bin:1", "not UTF-8")


@pytest.mark.parametrize("until", ["25:99", "noon", "12", "12:60", "-1:30", "1e308:00"])
def test_until_is_checked_before_any_work(tmp_path, until):
    started = time.monotonic()
    assert_one_line_error(soar("run", "--run-dir", tmp_path / "run", f"--until={until}"), "--until", "HH:MM")
    assert not (tmp_path / "run").exists()  # no run directory, no store, no model loaded
    assert time.monotonic() - started < 60


def test_mine_hard_db_is_checked_before_the_model_is_loaded(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "notes.db").write_text("not a database, but mine")
    missing_model = tmp_path / "no-model"  # would fail the command if the model were loaded first
    for db, needle in ((tmp_path / "afile" / "soar.db", "is a file"), (tmp_path, "is a directory"),
                       (tmp_path / "notes.db", "not a SQLite database")):
        result = soar("mine-hard", "--model", missing_model, "--db", db, "--out-dir", tmp_path / "out")
        assert_one_line_error(result, str(db), needle)
    assert (tmp_path / "notes.db").read_text() == "not a database, but mine"
    assert_one_line_error(soar("mine-hard", "--model", missing_model, "--db", tmp_path / "new.db",
                               "--out-dir", tmp_path / "afile"), "--out-dir", "is a file")
    assert not (tmp_path / "new.db").exists()  # the store is created only when there are results


def test_pretrain_out_is_checked_before_training(tmp_path):
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(soar("pretrain-tiny", "--out", tmp_path / "afile"), "afile", "is a file")
    assert_one_line_error(soar("pretrain-tiny", "--out", tmp_path / "m", "--init", tmp_path / "nope"), "nope")


# ---------------------------------------------------------------------------------------------- §4: bounds


def test_a_huge_config_size_is_refused_with_its_maximum(tmp_path):
    result = soar("run", "--run-dir", tmp_path / "run", "--set", "teacher.items_per_dataset=1000000000")
    assert_one_line_error(result, "teacher.items_per_dataset", "[1, 4096]")
    assert not (tmp_path / "run").exists()
    help_text = soar("mine-hard", "--help").stdout
    assert "mining.k" in help_text


def test_every_size_in_the_config_has_a_documented_maximum():
    import dataclasses
    import typing

    from soar_agent.config import RunConfig, _sections

    unbounded = []
    for name, section in _sections().items():
        hints = typing.get_type_hints(section)
        for f in dataclasses.fields(section):
            base = typing.get_args(hints[f.name])[0] if typing.get_origin(hints[f.name]) is list else hints[f.name]
            if base in (int, float) and not {"le", "lt"} & set(f.metadata):
                unbounded.append(f"{name}.{f.name}")
            elif "le" in f.metadata:
                assert "at most" in f.metadata["help"], f"{name}.{f.name}: the maximum is not in the help"
    assert not unbounded, unbounded
    assert RunConfig()  # the defaults are within their bounds


def test_a_long_line_is_refused_without_reading_it_into_memory(tmp_path):
    from soar_agent.tasks.base import MAX_LINE_BYTES, RejectedItem, jsonl_rows

    path = tmp_path / "huge.jsonl"
    with open(path, "w") as handle:
        handle.write(json.dumps(GOOD_ROW) + "\n")
        handle.write('{"question": "' + "1+" * (10 * MAX_LINE_BYTES) + '1", "answer": "2"}\n')
    tracemalloc.start()
    try:
        with pytest.raises(RejectedItem, match=r"huge.jsonl:2: line longer than 1048576 bytes"):
            list(jsonl_rows(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_LINE_BYTES, peak  # the 20 MB line was never held
    assert_one_line_error(soar("eval", "--data", path), "huge.jsonl:2", "longer than 1048576 bytes")


def test_a_line_of_exactly_the_limit_is_read(tmp_path):
    from soar_agent.tasks.base import MAX_LINE_BYTES, jsonl_rows

    row = json.dumps({"question": "", "answer": "2"})
    padded = row[:-1] + " " * (MAX_LINE_BYTES - len(row)) + "}"
    path = tmp_path / "edge.jsonl"
    path.write_text(padded + "\n" + padded)  # the last line has no newline
    assert [number for number, _ in jsonl_rows(path)] == [1, 2]


def test_a_file_with_too_many_rows_is_refused(tmp_path, monkeypatch):
    from soar_agent.tasks import base

    monkeypatch.setattr(base, "MAX_FILE_ROWS", 3)
    path = jsonl(tmp_path / "many.jsonl", *[GOOD_ROW] * 4)
    with pytest.raises(base.RejectedItem, match="many.jsonl:4: more than 3 rows"):
        list(base.jsonl_rows(path))


def test_a_parquet_field_longer_than_the_limit_is_refused(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from soar_agent.tasks import math as math_domain
    from soar_agent.tasks.base import MAX_LINE_BYTES, RejectedItem

    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"question": ["1+1", "x" * (MAX_LINE_BYTES + 1)], "answer": ["2", "3"]}), path)
    with pytest.raises(RejectedItem, match=r"pool.parquet:2: field 'question' longer than 1048576 characters"):
        math_domain.load_problems(path)


def test_a_question_longer_than_the_context_is_refused_with_the_reason(tmp_path, random_tiny_dir):
    # the random tiny model has 256 positions; a 900 KB question hung the model before
    data = jsonl(tmp_path / "pool.jsonl", GOOD_ROW, {"question": "1+" * 450_000 + "1", "answer": "2"}, GOOD_ROW)
    started = time.monotonic()
    result = soar("eval", "--model", random_tiny_dir, "--data", data, "--max-new-tokens", "16")
    assert_one_line_error(result, "pool.jsonl:2", "question too long", "900022 tokens", "256", "--max-new-tokens")
    assert time.monotonic() - started < 120
    long_pool = jsonl(tmp_path / "long.jsonl", GOOD_ROW, {"question": "1+" * 150 + "1", "answer": "2"})
    result = soar("mine-hard", "--model", random_tiny_dir, "--domain", "arith", "--data", long_pool, "--k", "2",
                  "--max-new-tokens", "16", "--db", tmp_path / "mine.db", "--out-dir", tmp_path / "out")
    assert_one_line_error(result, "long.jsonl:2", "question too long", "mining.max_new_tokens")
    assert not (tmp_path / "mine.db").exists()


def test_the_loop_skips_hard_set_questions_too_long_for_the_context_with_a_counted_note(tmp_path, random_tiny_dir):
    from soar_agent.agent import Agent
    from soar_agent.config import load_config

    train, test = hard_sets(tmp_path)
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    long_train = jsonl(tmp_path / "long.jsonl", rows[0], {"question": "1+" * 150 + "1", "answer": "2"}, *rows[1:])
    budgets = ["eval.max_new_tokens=32", "student.max_new_tokens=16"]  # 256 positions leave 224 for a prompt
    config = load_config(None, [f"model.path={toml_path(random_tiny_dir)}", f"domain.hard_train={toml_path(long_train)}",
                                f"domain.hard_test={toml_path(test)}", *budgets])
    notes = []
    agent = Agent.open(config, tmp_path / "run", log=notes.append)
    assert [p.question for p in agent.hard_set("train")] == [row["question"] for row in rows]
    (event,) = [e for e in agent.store.events(agent.run_id) if e["kind"] == "hard-set-too-long"]
    assert "long.jsonl: 1 of 4 question(s) skipped (domain.hard_train)" in event["message"]
    assert "long.jsonl:2: question too long" in event["message"] and "eval.max_new_tokens" in event["message"]
    assert any("long.jsonl:2" in note for note in notes)
    agent.store.close()
    # a file none of whose questions fits is refused before the run is created
    only_long = jsonl(tmp_path / "only-long.jsonl", {"question": "1+" * 150 + "1", "answer": "2"})
    run = tmp_path / "run2"
    result = soar("run", "--run-dir", run, "--no-export", "--set", f"model.path={toml_path(random_tiny_dir)}",
                  "--set", f"domain.hard_train={toml_path(only_long)}", "--set", f"domain.hard_test={toml_path(test)}",
                  *[x for budget in budgets for x in ("--set", budget)])
    assert_one_line_error(result, "only-long.jsonl:1", "question too long", "no problem of the file fits",
                          "domain.hard_train")
    assert not (run / "soar.db").exists()


def test_generated_problems_too_long_for_the_context_are_skipped_and_counted(random_tiny_dir):
    from soar_agent.evaluation import prompt_lengths
    from soar_agent.models import load_tokenizer

    import random

    tokenizer = load_tokenizer(random_tiny_dir)
    problems = generate_problems(arith, [1, 8], random.Random(7))
    short, long = prompt_lengths(arith, tokenizer, problems)
    assert short < long
    budget = 256 - short  # level 1 fits exactly, level 8 does not
    result = soar("eval", "--model", random_tiny_dir, "--levels", "1,8", "--per-level", "1", "--samples", "0",
                  "--max-new-tokens", budget, "--json")
    assert result.returncode == 0, result.stderr
    assert "note: 1 of 2 generated problems skipped" in result.stderr and "question too long" in result.stderr
    assert json.loads(result.stdout)["problems"] == 1
    assert_one_line_error(soar("eval", "--model", random_tiny_dir, "--levels", "8", "--per-level", "2",
                               "--max-new-tokens", 255), "every generated problem is too long")


def test_teacher_items_too_long_for_the_students_are_rejected_and_counted():
    from types import SimpleNamespace

    from soar_agent.engine import Completion
    from soar_agent.teacher import sample_items

    class Engine:
        def generate(self, prompts, n, **_):
            texts = ["<question>3 + 4</question><answer>7", "<question>" + " + ".join(["1"] * 12) + "</question><answer>12"]
            return [[Completion([1], texts[i % 2], [0.0], "stop", "</answer>") for i in range(n)]]

    cfg = SimpleNamespace(max_sampling_rounds=2, temperature=1.0, max_new_tokens=64, reward_target="verified")
    items, stats = sample_items(Engine(), arith, 3, cfg, seed=0, fits=lambda problem: len(problem.question) < 20)
    assert [item.problem.question for item in items] == ["3+4"] * 3
    assert stats["rejected"] == {"question too long for the students' context": 3}


def test_teacher_sampling_follows_the_share_it_accepts_and_gives_up_early_on_garbage():
    """A teacher that writes longer questions gets more of them rejected: at 37% accepted a fixed 1.5x
    oversampling per round left a default run's step 9 items short of 5,760 after 8 rounds, three times, and
    the run stopped as garbage. The rounds follow the share accepted so far; a teacher whose share cannot
    fill the datasets in the rounds left is garbage at once."""
    from types import SimpleNamespace

    from soar_agent.engine import Completion
    from soar_agent.teacher import TeacherGarbage, sample_items

    class Engine:
        def __init__(self, per_hundred):
            self.per_hundred, self.asked, self.made = per_hundred, [], 0

        def generate(self, prompts, n, **_):
            self.asked.append(n)
            good, bad = "<question>3+4</question><answer>7", "<question>(1+2</question><answer>3"
            row = [Completion([1], good if (self.made + i) % 100 < self.per_hundred else bad, [0.0], "stop",
                              "</answer>") for i in range(n)]
            self.made += n
            return [row]

    cfg = SimpleNamespace(max_sampling_rounds=8, temperature=1.0, max_new_tokens=64, reward_target="verified")
    engine = Engine(37)
    items, stats = sample_items(engine, arith, 5760, cfg, seed=0)
    assert len(items) == 5760 and len(engine.asked) <= 3  # the old rule: 5,760 x (1 - 1.5 x 0.37)^8 ~ 9 short
    assert engine.asked[0] == 5760 + 2880 + 2 and engine.asked[1] > 2880  # the second round sized by 37%
    assert stats["accepted"] == 5760 and stats["sampled"] == sum(engine.asked)
    for per_hundred in (0, 1):  # garbage: given up after the first round, not eight
        engine = Engine(per_hundred)
        with pytest.raises(TeacherGarbage, match="needed in 1 of 8 rounds"):
            sample_items(engine, arith, 5760, cfg, seed=0)
        assert len(engine.asked) == 1
    engine = Engine(20)  # a low share that the rounds can still fill, at most 4 x 5,760 a round
    assert len(sample_items(engine, arith, 5760, cfg, seed=0)[0]) == 5760 and max(engine.asked) <= 4 * 5760


def test_rejections_are_counted_by_kind_not_by_text():
    from soar_agent.tasks.base import RejectedItem
    from soar_agent.teacher import check_item, rejection_kind

    kinds = []
    for question in ["1+a", "2*b*3", "(1+2", "((4)"]:
        with pytest.raises(RejectedItem) as error:
            check_item(arith, f"<question>{question}</question><answer>1</answer>", "verified")
        kinds.append(rejection_kind(error.value))
    assert kinds == ["unexpected character '…'"] * 2 + ["unbalanced parentheses"] * 2


def test_levels_outside_the_domain_and_repeated_levels_cannot_grow_the_work(tmp_path, random_tiny_dir):
    # a generator asked for level 999 does not end: refused before the model is loaded
    result = soar("mine-hard", "--model", tmp_path / "no-model", "--set", "mining.levels=[5, 999]",
                  "--db", tmp_path / "m.db", "--out-dir", tmp_path / "out")
    assert_one_line_error(result, "mining.levels", "[999]")
    # --levels 1,1,1 is level 1 once, not three times the --per-level problems
    result = soar("eval", "--model", random_tiny_dir, "--levels", ",".join(["1"] * 1000), "--per-level", "2",
                  "--samples", "0", "--max-new-tokens", "4", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["problems"] == 2


def test_large_evaluations_run_in_chunks_of_bounded_size(monkeypatch):
    import random

    from soar_agent import evaluation
    from soar_agent.engine import Completion

    calls = []

    class Engine:
        def generate(self, prompts, n=1, seed=None, **_):
            calls.append((len(prompts) * n, seed))
            return [[Completion([1], "Answer: 0", [0.0], "stop") for _ in range(n)] for _ in prompts]

    monkeypatch.setattr(evaluation, "MAX_ROWS_PER_CALL", 64)
    problems = generate_problems(arith, [1] * 50, random.Random(1))
    results = evaluation.evaluate_problems(Engine(), arith, problems, samples=8, greedy=True, seed=10)
    assert len(results) == 50 and all(r.samples == 8 for r in results)
    assert max(rows for rows, _ in calls) <= 64  # never all 50 x 8 completions at once
    assert sorted({seed for _, seed in calls if seed is not None}) == list(range(10, 17))  # a seed per chunk


# ---------------------------------------------------------------------------------------------- §4: signals


def test_a_second_signal_stops_at_once_and_leaves_the_store_consistent(tmp_path, random_tiny_dir):
    """SIGTERM asks for a stop after the unit (here: a long first evaluation); Ctrl-C (SIGINT) then stops
    at once. The store passes quick_check, the run is marked stopped with the reason, and nothing of the
    interrupted evaluation is stored."""
    train, test = hard_sets(tmp_path)
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "soar_agent.cli", "run", "--run-dir", str(run), "--no-export",
         "--set", f"model.path={toml_path(random_tiny_dir)}", "--set", f"domain.hard_train={toml_path(train)}",
         "--set", f"domain.hard_test={toml_path(test)}", "--set", "eval.samples=1024",
         "--set", "eval.max_new_tokens=400"],  # minutes of sampling for the first evaluation
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:  # until the session (and evaluation) starts
            if (run / "soar.db").is_file():
                try:
                    with Store(run / "soar.db", readonly=True) as store:
                        latest = store.latest_run()
                        if latest and any(e["kind"] == "session" for e in store.events(latest["id"], limit=50)):
                            break
                except StoreError:  # the file exists, its schema is being written: a loaded machine sees this
                    pass
            time.sleep(0.5)
        assert process.poll() is None, process.communicate()
        time.sleep(2.0)  # well into the evaluation
        process.send_signal(signal.SIGTERM)
        time.sleep(2.0)
        assert process.poll() is None  # the first signal waits for the unit
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
        stopped_in = time.monotonic() - interrupted
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "soar: interrupted" and "Traceback" not in err, err
    assert stopped_in < 15, stopped_in
    quick_check(run / "soar.db")
    with Store(run / "soar.db", readonly=True) as store:
        latest = store.latest_run()
        assert latest["status"] == "stopped"
        assert "interrupted: stopped at once" in store.events(latest["id"], limit=1)[-1]["message"]
        assert store.evaluations(latest["id"]) == []  # the interrupted unit left nothing half-stored
        assert len(store.datasets(latest["id"], kind="hard-train")) == 1


# ---------------------------------------------------------------------------------------------- §6: floor


def test_the_transformers_floor_loads_the_tokenizer_the_package_writes():
    """The embedded model (and every export, written by save_pretrained) names its tokenizer class in
    tokenizer_config.json; TokenizersBackend exists from transformers 5.0, so 4.x (e.g. 4.51) cannot load it."""
    import re
    import tomllib

    saved = json.loads((ROOT / "soar_agent" / "data" / "tiny-llama" / "tokenizer_config.json").read_text())
    requirements = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (floor,) = [re.match(r"transformers>=(\d+)", r).group(1) for r in requirements if r.startswith("transformers")]
    if saved["tokenizer_class"] == "TokenizersBackend":
        assert int(floor) >= 5
