"""Tests for soar_agent.store on real SQLite files, including multi-process concurrency and a SIGKILL mid-write."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from soar_agent import store as store_mod
from soar_agent.store import SchemaVersionError, Store, StoreError, content_hash
from soar_agent.tasks.base import Problem

REPO = Path(__file__).resolve().parents[1]


def _problems(n: int, tag: str = "p", domain: str = "arith") -> list[Problem]:
    return [
        Problem(question=f"{tag} what is {i} + {i}?", answer=str(2 * i), domain=domain, level=i % 3 + 1,
                steps=(f"**add** {i} + {i} = {2 * i}",), meta={"i": i})
        for i in range(n)
    ]


@pytest.fixture()
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite"


@pytest.fixture()
def store(path: Path):
    with Store(path) as s:
        yield s


@pytest.fixture()
def run_id(store: Store) -> int:
    return store.create_run(name="r1", mode="soar", config={"lr": 1e-5}, model_path="/models/x")


def _python(script: str, *args: object, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


# --------------------------------------------------------------------------------------------------
# Opening, pragmas, read-only


def test_open_sets_pragmas(store: Store, path: Path):
    conn = store.db.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.schema_version == len(store_mod.MIGRATIONS)
    assert set(store_mod.TABLES) <= set(store.db.table_names())
    assert Store.open(path).schema_version == store.schema_version


def test_readonly_store_reads_but_cannot_write(store: Store, run_id: int, path: Path):
    store.add_problems(run_id=run_id, problems=_problems(3), source="seed")
    store.close()  # last writer gone: -wal/-shm removed, the reader must still open
    with Store(path, readonly=True) as ro:
        assert ro.count("problems", run_id) == 3
        assert ro.latest_run()["id"] == run_id
        with pytest.raises(StoreError, match="read-only"):
            ro.send_command(run_id=run_id, command="pause")
        with pytest.raises(sqlite3.OperationalError, match="readonly|read-only"):
            ro.db.conn.execute("DELETE FROM problems")
    with Store(path) as s:
        assert s.count("problems") == 3


def test_readonly_missing_file_is_clear_error(tmp_path: Path):
    with pytest.raises(StoreError, match="nope.sqlite"):
        Store(tmp_path / "nope.sqlite", readonly=True)
    assert not (tmp_path / "nope.sqlite").exists()


@pytest.mark.parametrize("readonly", [False, True])
def test_not_a_database_is_clear_one_line_error(tmp_path: Path, readonly: bool):
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not a database, just some text that is long enough to have a header\n" * 20)
    with pytest.raises(StoreError) as info:
        Store(bad, readonly=readonly)
    message = str(info.value)
    assert str(bad) in message and "not a SQLite database" in message and "\n" not in message
    assert bad.read_text().startswith("this is not a database")  # untouched


def test_foreign_sqlite_database_is_refused(tmp_path: Path):
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE stuff (x)").connection.close()
    with pytest.raises(StoreError, match="not a soar-agent store"):
        Store(other)


def test_store_shared_across_threads_when_asked(path: Path, store: Store, run_id: int):
    shared = Store(path, check_same_thread=False)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(20):
                shared.log_event(run_id=run_id, level="info", kind="t", message=f"{k}-{i}")
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shared.close()
    assert not errors and store.count("events", run_id) == 80


# --------------------------------------------------------------------------------------------------
# Migrations


def test_migration_upgrades_v1_and_keeps_data(path: Path, monkeypatch: pytest.MonkeyPatch):
    original = list(store_mod.MIGRATIONS)
    monkeypatch.setattr(store_mod, "MIGRATIONS", original[:1])
    with Store(path) as s:
        assert s.schema_version == 1
        run = s.create_run(name="old", mode="soar", config={"a": 1}, model_path=None)
        ids = s.add_problems(run_id=run, problems=_problems(5), source="seed", split="train")

    def add_note_column(db) -> None:
        db.execute("ALTER TABLE problems ADD COLUMN note TEXT NOT NULL DEFAULT 'none'")
        db.execute("UPDATE problems SET note = 'migrated'")

    monkeypatch.setattr(store_mod, "MIGRATIONS", [*original, add_note_column])
    with Store(path) as s:
        assert s.schema_version == len(original) + 1
        rows = s.problems_for(run)
        assert [r["id"] for r in rows] == ids
        assert {r["note"] for r in rows} == {"migrated"}
        assert s.get_run(run)["config"] == {"a": 1}
        assert s.to_problem(rows[0]) == _problems(1)[0]
    # A reader running older code (without the new migration) is told the DB is too new.
    monkeypatch.setattr(store_mod, "MIGRATIONS", original)
    with pytest.raises(SchemaVersionError, match="newer"):
        Store(path)


def test_failing_migration_rolls_back(path: Path, monkeypatch: pytest.MonkeyPatch):
    Store(path).close()
    version = len(store_mod.MIGRATIONS)

    def broken(db) -> None:
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, broken])
    with pytest.raises(RuntimeError, match="migration bug"):
        Store(path)
    monkeypatch.undo()
    with Store(path) as s:
        assert s.schema_version == version
        assert "half_done" not in s.db.table_names()


def test_newer_schema_raises_clear_error(path: Path):
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    for readonly in (False, True):
        with pytest.raises(SchemaVersionError, match=r"schema version 99 is newer"):
            Store(path, readonly=readonly)


def test_readonly_refuses_to_migrate(path: Path, monkeypatch: pytest.MonkeyPatch):
    Store(path).close()
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, lambda db: None])
    with pytest.raises(SchemaVersionError, match="read-write"):
        Store(path, readonly=True)


# --------------------------------------------------------------------------------------------------
# Records


def test_runs(store: Store, run_id: int):
    run = store.get_run(run_id)
    assert run["name"] == "r1" and run["mode"] == "soar" and run["config"] == {"lr": 1e-5}
    assert run["model_path"] == "/models/x" and run["status"] == "created" and run["created_at"]
    second = store.create_run(name="r2", mode="eval", config={}, model_path=None)
    assert store.latest_run()["id"] == second
    store.set_run_status(run_id, "running")
    assert store.get_run(run_id)["status"] == "running"
    assert store.get_run(12345) is None
    assert [r["id"] for r in store.runs()] == [run_id, second]
    third = store.create_run(name="r3", mode="soar", config={"out": Path("/runs/x"), "levels": (1, 2)},
                             model_path=Path("/m"))
    assert store.get_run(third)["config"] == {"out": "/runs/x", "levels": [1, 2]}
    with pytest.raises(ValueError, match="config"):
        store.create_run(name="r4", mode="soar", config={"bad": object()}, model_path=None)


def test_add_problems_roundtrip_and_dedupe(store: Store, run_id: int):
    problems = _problems(4)
    ids = store.add_problems(run_id=run_id, problems=problems, source="teacher", split="train",
                             provenance=[{"teacher_step": 3, "dataset": 1, "sample": i} for i in range(4)],
                             answer_verified=True)
    assert len(set(ids)) == 4
    rows = store.problems_for(run_id)
    assert [store.to_problem(r) for r in rows] == problems
    assert rows[2]["provenance"] == {"teacher_step": 3, "dataset": 1, "sample": 2}
    assert rows[0]["meta"] == {"i": 0} and rows[0]["steps"] == ["**add** 0 + 0 = 0"]
    assert rows[0]["answer_verified"] == 1 and rows[0]["source"] == "teacher" and rows[0]["split"] == "train"
    assert rows[0]["content_hash"] == content_hash("arith", problems[0].question)

    # Same question modulo whitespace (and a different answer): the existing id, never a second row;
    # duplicates inside one batch collapse too.
    respaced = Problem(question="  p what is 1 +\n 1? ", answer="999", domain="arith")
    new = Problem(question="brand new", answer="1", domain="arith")
    again = store.add_problems(run_id=run_id, problems=[respaced, new, new, problems[3]], source="hard")
    assert again[0] == ids[1] and again[3] == ids[3] and again[1] == again[2] and again[1] not in ids
    assert store.count("problems", run_id) == 5
    assert store.get_problem(ids[1])["answer"] == "2"  # the stored row is left as it was

    # Same question in another domain or another run is a different problem.
    other_domain = store.add_problems(run_id=run_id, problems=[Problem(problems[0].question, "0", "program")],
                                      source="seed")
    assert other_domain[0] not in ids
    run2 = store.create_run(name="r2", mode="soar", config={}, model_path=None)
    assert store.add_problems(run_id=run2, problems=problems[:1], source="seed")[0] not in ids


def test_problems_filters_and_difficulty(store: Store, run_id: int):
    train = store.add_problems(run_id=run_id, problems=_problems(3, "a"), source="hard", split="train")
    test = store.add_problems(run_id=run_id, problems=_problems(2, "b", domain="program"), source="hard",
                              split="test", difficulty=[0.5, None])
    store.add_problems(run_id=run_id, problems=_problems(2, "c"), source="seed")
    assert [r["id"] for r in store.problems_for(run_id, source="hard", split="train")] == train
    assert [r["id"] for r in store.problems_for(run_id, domain="program")] == test
    assert len(store.problems_for(run_id, source="seed")) == 2
    assert store.get_problem(test[0])["difficulty"] == 0.5
    store.set_difficulty({train[0]: 0.9, test[0]: None})
    assert store.get_problem(train[0])["difficulty"] == 0.9 and store.get_problem(test[0])["difficulty"] is None


def test_add_problems_bad_input(store: Store, run_id: int):
    with pytest.raises(ValueError, match="source"):
        store.add_problems(run_id=run_id, problems=_problems(1), source="made-up")
    with pytest.raises(ValueError, match="split"):
        store.add_problems(run_id=run_id, problems=_problems(1), source="seed", split="valid")
    with pytest.raises(ValueError, match="provenance"):
        store.add_problems(run_id=run_id, problems=_problems(2), source="seed", provenance=[{}])
    with pytest.raises(ValueError, match="answer_verified"):
        store.add_problems(run_id=run_id, problems=_problems(1), source="seed", answer_verified="yes")
    with pytest.raises(ValueError, match=r"problems\[1\]\.meta"):
        bad = Problem("q", "1", "arith", meta={"f": object()})
        store.add_problems(run_id=run_id, problems=[_problems(1)[0], bad], source="seed")
    with pytest.raises(sqlite3.IntegrityError):  # unknown run: foreign keys are on
        store.add_problems(run_id=999, problems=_problems(1), source="seed")
    assert store.count("problems") == 0


def test_datasets(store: Store, run_id: int):
    ids = store.add_problems(run_id=run_id, problems=_problems(4), source="teacher")
    ds = store.create_dataset(run_id=run_id, name="step3-d1", kind="curriculum", problem_ids=[ids[2], ids[0]],
                              teacher_step=3, meta={"temperature": 1.0})
    rows = store.dataset_problems(ds)
    assert [r["id"] for r in rows] == [ids[2], ids[0]] and [r["position"] for r in rows] == [0, 1]
    meta = store.get_dataset(ds)
    assert meta["reward"] is None and meta["promoted"] == 0 and meta["meta"] == {"temperature": 1.0}
    store.set_dataset_reward(ds, 0.25)
    assert store.get_dataset(ds)["reward"] == 0.25 and store.get_dataset(ds)["promoted"] == 0
    store.set_dataset_reward(ds, 0.5, promoted=True)
    assert store.get_dataset(ds)["promoted"] == 1
    store.set_dataset_reward(ds, 0.4)  # promoted unchanged when not given
    assert store.get_dataset(ds)["promoted"] == 1 and store.get_dataset(ds)["reward"] == 0.4
    assert [d["id"] for d in store.datasets(run_id, kind="curriculum")] == [ds]
    assert store.datasets(run_id, kind="hard-test") == []
    with pytest.raises(ValueError, match="kind"):
        store.create_dataset(run_id=run_id, name="x", kind="bogus", problem_ids=[])
    with pytest.raises(KeyError):
        store.set_dataset_reward(12345, 1.0)


def test_multi_row_write_is_all_or_nothing(store: Store, run_id: int):
    ids = store.add_problems(run_id=run_id, problems=_problems(3), source="teacher")
    # The dataset row and first items insert fine, then an unknown problem id violates the foreign key.
    with pytest.raises(sqlite3.IntegrityError):
        store.create_dataset(run_id=run_id, name="broken", kind="curriculum", problem_ids=[ids[0], ids[1], 424242])
    assert store.count("datasets") == 0 and store.count("dataset_items") == 0
    with pytest.raises(sqlite3.IntegrityError):
        store.add_evaluation(run_id=run_id, set_name="hard-test", summary={}, samples_per_problem=1,
                             temperature=0.0, results=[{"problem_id": ids[0], "samples": 1, "correct": 1},
                                                       {"problem_id": 424242, "samples": 1, "correct": 0}])
    assert store.count("evaluations") == 0 and store.count("evaluation_results") == 0
    with pytest.raises(sqlite3.IntegrityError):
        store.add_rollouts(run_id=run_id, rows=[{"problem_id": ids[0], "phase": "student", "completion": "a"},
                                                {"problem_id": 424242, "phase": "student", "completion": "b"}])
    assert store.count("rollouts") == 0
    # The connection is usable afterwards (no transaction left open).
    assert not store.db.conn.in_transaction
    store.log_event(run_id=run_id, level="info", kind="ok", message="still works")


def test_evaluations(store: Store, run_id: int):
    ids = store.add_problems(run_id=run_id, problems=_problems(2), source="hard", split="test")
    ckpt = store.add_checkpoint(run_id=run_id, path="/ckpt/0", role="baseline", teacher_step=0)
    summary = {"greedy_acc": 0.5, "pass@1": 0.25, "pass@32": 0.5, "per_level": {"1": 0.5}}
    ev = store.add_evaluation(
        run_id=run_id, set_name="hard-test", summary=summary, samples_per_problem=32, temperature=1.0,
        checkpoint_id=ckpt, teacher_step=0,
        results=[{"problem_id": ids[0], "samples": 32, "correct": 16, "greedy_correct": True,
                  "pass_at": {1: 0.5, 32: 1.0}},
                 {"problem_id": ids[1], "samples": 32, "correct": 0, "greedy_correct": 0, "pass_at": {1: 0.0}}],
    )
    store.add_evaluation(run_id=run_id, set_name="hard-train", summary={}, samples_per_problem=1,
                         temperature=0.0, results=[])
    evs = store.evaluations(run_id, set_name="hard-test")
    assert [e["id"] for e in evs] == [ev] and evs[0]["summary"] == summary
    assert evs[0]["checkpoint_id"] == ckpt and evs[0]["samples_per_problem"] == 32
    assert len(store.evaluations(run_id)) == 2
    results = store.evaluation_results(ev)
    assert results[0]["pass_at"] == {1: 0.5, 32: 1.0} and results[0]["greedy_correct"] == 1
    assert results[1]["correct"] == 0
    with pytest.raises(ValueError, match="correct"):
        store.add_evaluation(run_id=run_id, set_name="x", summary={}, samples_per_problem=1, temperature=0.0,
                             results=[{"problem_id": ids[0], "samples": 1}])


def test_checkpoints(store: Store, run_id: int):
    c = store.add_checkpoint(run_id=run_id, path=Path("/ckpt/s1"), role="student", teacher_step=1)
    assert store.checkpoints(run_id)[0]["status"] == "writing"
    store.mark_checkpoint(c, "complete", metrics={"loss": 0.1})
    row = store.checkpoints(run_id, role="student", status="complete")[0]
    assert row["path"] == "/ckpt/s1" and row["metrics"] == {"loss": 0.1}
    store.mark_checkpoint(c, "deleted")
    assert store.checkpoints(run_id)[0]["metrics"] == {"loss": 0.1}
    with pytest.raises(ValueError, match="status"):
        store.mark_checkpoint(c, "gone")
    with pytest.raises(ValueError, match="role"):
        store.add_checkpoint(run_id=run_id, path="/x", role="critic")
    with pytest.raises(KeyError):
        store.mark_checkpoint(999, "complete")


def test_events(store: Store, run_id: int):
    for i, level in enumerate(["debug", "info", "warning", "error", "info"]):
        store.log_event(run_id=run_id, level=level, kind="k", message=f"m{i}", data={"i": i})
    store.log_event(run_id=None, level="info", kind="boot", message="no run yet")
    evs = store.events(run_id)
    assert [e["message"] for e in evs] == ["m0", "m1", "m2", "m3", "m4"] and evs[2]["data"] == {"i": 2}
    assert [e["message"] for e in store.events(run_id, level="warning")] == ["m2", "m3"]
    assert [e["message"] for e in store.events(run_id, limit=2)] == ["m3", "m4"]
    assert [e["message"] for e in store.events(run_id, after_id=evs[1]["id"], limit=2)] == ["m2", "m3"]
    assert [e["message"] for e in store.events(None)] == ["no run yet"]
    with pytest.raises(ValueError, match="level"):
        store.log_event(run_id=run_id, level="fatal", kind="k", message="m")


def test_rollouts_paging(store: Store, run_id: int):
    ids = store.add_problems(run_id=run_id, problems=_problems(2), source="teacher")
    rows = [{"problem_id": ids[i % 2], "phase": "student", "ref": "train-1", "completion": f"c{i}",
             "reward": float(i % 2), "correct": i % 2} for i in range(25)]
    assert store.add_rollouts(run_id=run_id, rows=rows) == 25
    store.add_rollouts(run_id=run_id, rows=[{"phase": "teacher", "completion": "a problem set"}])
    seen, after = [], 0
    while page := store.rollouts(run_id, problem_id=ids[1], after_id=after, limit=4):
        seen += page
        after = page[-1]["id"]
    assert [r["completion"] for r in seen] == [f"c{i}" for i in range(1, 25, 2)]
    assert all(r["correct"] == 1 and r["reward"] == 1.0 for r in seen)
    assert len(store.rollouts(run_id, phase="teacher")) == 1
    plan = " ".join(str(r) for r in store.db.conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM rollouts WHERE problem_id = ? AND id > ? ORDER BY id LIMIT 10", (1, 0)))
    assert "rollouts_problem" in plan
    with pytest.raises(ValueError, match="phase"):
        store.add_rollouts(run_id=run_id, rows=[{"phase": "bogus", "completion": "x"}])


def test_commands(store: Store, run_id: int, path: Path):
    # The TUI holds a read-only store for display and a short-lived writable one to send.
    with Store(path) as tui:
        first = tui.send_command(run_id=run_id, command="pause")
        second = tui.send_command(run_id=run_id, command="promote", args={"dataset_id": 7})
    pending = store.pending_commands(run_id)
    assert [c["id"] for c in pending] == [first, second] and pending[1]["args"] == {"dataset_id": 7}
    assert store.ack_command(first, "paused") is True
    assert store.ack_command(first, "again") is False
    assert [c["id"] for c in store.pending_commands(run_id)] == [second]
    acked = store.commands(run_id)[0]
    assert acked["acked_at"] and acked["ack_message"] == "paused"
    with pytest.raises(ValueError, match="command"):
        store.send_command(run_id=run_id, command="reboot")


# --------------------------------------------------------------------------------------------------
# Concurrency and crashes (real processes)

def test_write_retries_when_busy_timeout_gives_up(store: Store, run_id: int, path: Path):
    # Another connection holds the write lock past this store's (shortened) busy_timeout: the write must
    # back off and retry the whole transaction instead of raising "database is locked".
    store.db.conn.execute("PRAGMA busy_timeout = 20")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO events (run_id, ts, level, kind, message) VALUES (?, 'now', 'info', 'o', 'o')",
                  (run_id,))
    release = threading.Timer(0.4, lambda: other.execute("COMMIT"))
    release.start()
    try:
        start = time.monotonic()
        ids = store.add_problems(run_id=run_id, problems=_problems(3), source="seed")
        assert time.monotonic() - start >= 0.3 and len(ids) == 3
    finally:
        release.join()
        other.close()
    assert store.count("events", run_id) == 1 and store.count("problems", run_id) == 3


WRITER = """
    import sys, time
    from soar_agent.store import Store
    from soar_agent.tasks.base import Problem
    path, run_id, seconds, tag = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    s = Store(path)
    end, i = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        s.add_problems(run_id=run_id, problems=[Problem(f"{tag} {i} {j}", str(j), "arith") for j in range(5)],
                       source="teacher", provenance={"writer": tag, "i": i})
        s.log_event(run_id=run_id, level="info", kind="tick", message=f"{tag} {i}")
        i += 1
    s.close()
    print(i)
"""

READER = """
    import json, os, sys, time
    from soar_agent.store import Store
    path, run_id, done = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    s = Store(path, readonly=True)
    counts, last = [], False
    while True:
        last = os.path.exists(done)
        counts.append([s.count("problems", run_id), s.count("events", run_id)])
        rows = s.problems_for(run_id, source="teacher")
        assert len(rows) >= counts[-1][0]
        s.events(run_id, limit=50)
        s.latest_run()
        if last:
            break
    s.close()
    print(json.dumps(counts))
"""


def test_writers_and_reader_processes_run_concurrently(store: Store, run_id: int, path: Path, tmp_path: Path):
    done = tmp_path / "done"
    reader = _python(READER, path, run_id, done)
    writers = [_python(WRITER, path, run_id, 2.5, tag) for tag in ("A", "B")]
    outputs = [w.communicate(timeout=60) for w in writers]
    done.touch()
    r_out, r_err = reader.communicate(timeout=60)
    for w, (out, err) in zip(writers, outputs):
        assert w.returncode == 0, err
    assert reader.returncode == 0, r_err
    iterations = sum(int(out) for out, _ in outputs)
    assert iterations > 10
    assert store.count("problems", run_id) == 5 * iterations
    assert store.count("events", run_id) == iterations
    counts = json.loads(r_out)
    problem_counts = [c[0] for c in counts]
    assert problem_counts == sorted(problem_counts), "reader saw counts go backwards"
    assert len(set(problem_counts)) > 3 and problem_counts[-1] == 5 * iterations


KILLED_WRITER = """
    import sys, time
    from soar_agent.store import Store
    from soar_agent.tasks.base import Problem
    path, run_id, n, marker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    s = Store(path)
    # A tiny page cache makes SQLite spill uncommitted pages into the WAL mid-transaction.
    s.db.conn.execute("PRAGMA cache_size = -64")
    problems = [Problem("x" * 300 + f" big {i}", str(i), "arith", level=1, steps=("**a** b",)) for i in range(n)]
    inserts = 0
    def trace(sql):
        global inserts
        if sql.startswith("INSERT INTO problems"):
            inserts += 1
            if inserts == n * 3 // 4:  # three quarters through the batch: stop here and wait to be killed
                open(marker, "w").close()
                time.sleep(120)
    s.db.conn.set_trace_callback(trace)
    s.add_problems(run_id=run_id, problems=problems, source="teacher")
    print("finished without being killed")
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_transaction_leaves_all_or_nothing(store: Store, run_id: int, path: Path, tmp_path: Path):
    before = store.add_problems(run_id=run_id, problems=_problems(100), source="seed")
    store.log_event(run_id=run_id, level="info", kind="before", message="committed before the crash")
    store.close()
    marker, n = tmp_path / "inside-transaction", 8000
    writer = _python(KILLED_WRITER, path, run_id, n, marker)
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert writer.poll() is None, writer.communicate()
        assert time.monotonic() < deadline, "writer never reached the middle of its transaction"
        time.sleep(0.02)
    wal = Path(f"{path}-wal")
    assert wal.exists() and wal.stat().st_size > 1_000_000  # uncommitted pages really hit the disk
    os.kill(writer.pid, signal.SIGKILL)
    writer.communicate(timeout=30)
    assert writer.returncode == -signal.SIGKILL

    with Store(path) as s:
        assert s.db.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        count = s.count("problems", run_id)
        assert count in (len(before), len(before) + n)
        assert count == len(before)  # killed before COMMIT: none of the batch
        assert [r["id"] for r in s.problems_for(run_id, source="seed")] == before
        assert s.count("events", run_id) == 1
        # And the store is fully usable after recovery.
        s.add_problems(run_id=run_id, problems=_problems(3, "after"), source="teacher")
        assert s.count("problems", run_id) == len(before) + 3
