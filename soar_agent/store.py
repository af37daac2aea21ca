"""The SQLite store: every durable record of a run (problems, datasets, evaluations, checkpoints, events,
rollouts, TUI commands) lives in one SQLite file, owned by this module.

One small ``Store`` class wraps a ``sqlite_utils.Database``. The agent process opens it read-write; the TUI
opens it read-only (``Store(path, readonly=True)``) and reads it live while the agent writes, which is why
the file runs in WAL mode (readers never block the writer, nor the writer readers).

Thread and process rules:

* One ``Store`` per thread is the rule. The underlying ``sqlite3`` connection refuses use from another
  thread by default; pass ``check_same_thread=False`` only when a Store must be handed to another thread
  (e.g. a Textual thread worker). Calls are then serialised by an internal lock, but a second Store is
  still the better answer to "I need it in two threads".
* Never share a Store across ``fork``; each process opens its own.
* Any number of processes may open the same file; writers queue on SQLite's lock (``busy_timeout``, 30 s)
  and, as a last resort, retry a whole transaction with backoff.

Schema changes go through ``MIGRATIONS`` (append only; never edit a released migration). The ``meta`` table
records ``schema_version`` = how many migrations have been applied.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlite_utils

from soar_agent.diskfull import DiskFull, is_disk_full

if TYPE_CHECKING:  # the TUI imports this module; keep it from pulling in every task domain at runtime
    from soar_agent.tasks.base import Problem

T = TypeVar("T")

BUSY_TIMEOUT_S = 30.0
# Retries of a whole transaction after busy_timeout already gave up (or SQLite returned SQLITE_BUSY without
# invoking the busy handler, e.g. during WAL recovery).
LOCK_RETRIES = 6
LOCK_BACKOFF_S = 0.05

# Enumerations. Only ``problems.source`` (and the 0/1 flags) are CHECK constraints in the schema: SQLite cannot
# alter a CHECK without rebuilding the table, so sets that are likely to grow are enforced here instead.
PROBLEM_SOURCES = ("seed", "hard", "teacher", "promotion")
PROBLEM_SPLITS = ("train", "val", "test")
DATASET_KINDS = ("curriculum", "hard-train", "hard-val", "hard-test", "promotion", "seed", "transfer")
CHECKPOINT_ROLES = ("baseline", "student", "teacher", "export", "pq", "pq-chain")
CHECKPOINT_STATUSES = ("writing", "complete", "deleted")
EVENT_LEVELS = ("debug", "info", "warning", "error")  # in increasing severity
ROLLOUT_PHASES = ("student", "srl", "eval", "teacher")  # srl: one step of an expert solution (ref ends in /srl-K)
COMMANDS = ("pause", "resume", "stop", "promote", "export")
RUN_MODES = ("soar", "hard-only", "intrinsic", "mine-hard", "eval")  # documentation only: modes may grow

# Tables callers may count with ``Store.count``.
TABLES = (
    "runs", "problems", "datasets", "dataset_items", "evaluations", "evaluation_results",
    "checkpoints", "events", "rollouts", "commands", "teacher_steps", "trainings",
)


class StoreError(RuntimeError):
    """A store that cannot be opened or used as asked; the message is one line naming the file."""


class SchemaVersionError(StoreError):
    """The database was written by newer code (or needs a migration a read-only store cannot run)."""


def _no_run(path: str) -> str:
    return f"{path}: holds no run (an empty store, or one whose write-ahead log {Path(path).name}-wal was lost)"


# --------------------------------------------------------------------------------------------------
# Migrations


def _migration_1(db: sqlite_utils.Database) -> None:
    """Initial schema. Written as frozen SQL rather than sqlite-utils ``create()`` calls so that a released
    migration never changes behind our back when the library's DDL generation does."""
    statements = [
        """CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )""",
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            mode TEXT NOT NULL,
            created_at TEXT NOT NULL,
            config_json TEXT NOT NULL DEFAULT '{}',
            status TEXT NOT NULL DEFAULT 'created',
            model_path TEXT
        )""",
        """CREATE TABLE problems (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            question TEXT NOT NULL,
            answer TEXT NOT NULL,
            answer_verified INTEGER CHECK (answer_verified IN (0, 1)),
            domain TEXT NOT NULL,
            level INTEGER,
            difficulty REAL,
            source TEXT NOT NULL CHECK (source IN ('seed', 'hard', 'teacher', 'promotion')),
            split TEXT CHECK (split IN ('train', 'test')),
            content_hash TEXT NOT NULL,
            provenance_json TEXT NOT NULL DEFAULT '{}',
            steps_json TEXT NOT NULL DEFAULT '[]',
            meta_json TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            UNIQUE (run_id, content_hash)
        )""",
        "CREATE INDEX problems_run_source ON problems(run_id, source, split)",
        "CREATE INDEX problems_run_domain ON problems(run_id, domain)",
        """CREATE TABLE datasets (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            teacher_step INTEGER,
            reward REAL,
            promoted INTEGER NOT NULL DEFAULT 0 CHECK (promoted IN (0, 1)),
            created_at TEXT NOT NULL,
            meta_json TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX datasets_run_kind ON datasets(run_id, kind, teacher_step)",
        "CREATE INDEX datasets_run_name ON datasets(run_id, name)",
        """CREATE TABLE dataset_items (
            dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            -- after the key columns: SQLite 3.40's integrity_check wrongly reports NULLs in a WITHOUT ROWID
            -- table's NOT NULL column that sits between its primary-key columns
            problem_id INTEGER NOT NULL REFERENCES problems(id),
            PRIMARY KEY (dataset_id, position)
        ) WITHOUT ROWID""",
        "CREATE INDEX dataset_items_problem ON dataset_items(problem_id)",
        """CREATE TABLE checkpoints (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            path TEXT NOT NULL,
            role TEXT NOT NULL,
            teacher_step INTEGER,
            status TEXT NOT NULL DEFAULT 'writing',
            metrics_json TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX checkpoints_run ON checkpoints(run_id, role, status)",
        """CREATE TABLE evaluations (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            checkpoint_id INTEGER REFERENCES checkpoints(id),
            set_name TEXT NOT NULL,
            teacher_step INTEGER,
            samples_per_problem INTEGER NOT NULL,
            temperature REAL NOT NULL,
            summary_json TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX evaluations_run_set ON evaluations(run_id, set_name)",
        "CREATE INDEX evaluations_checkpoint ON evaluations(checkpoint_id)",
        """CREATE TABLE evaluation_results (
            evaluation_id INTEGER NOT NULL REFERENCES evaluations(id) ON DELETE CASCADE,
            problem_id INTEGER NOT NULL REFERENCES problems(id),
            samples INTEGER NOT NULL,
            correct INTEGER NOT NULL,
            greedy_correct INTEGER CHECK (greedy_correct IN (0, 1)),
            pass_at_json TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (evaluation_id, problem_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX evaluation_results_problem ON evaluation_results(problem_id)",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            run_id INTEGER REFERENCES runs(id) ON DELETE CASCADE,
            ts TEXT NOT NULL,
            level TEXT NOT NULL,
            kind TEXT NOT NULL,
            message TEXT NOT NULL,
            data_json TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX events_run ON events(run_id, id)",
        "CREATE INDEX events_run_level ON events(run_id, level, id)",
        """CREATE TABLE rollouts (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            problem_id INTEGER REFERENCES problems(id),
            phase TEXT NOT NULL,
            ref TEXT,
            completion TEXT NOT NULL,
            reward REAL,
            correct INTEGER CHECK (correct IN (0, 1)),
            created_at TEXT NOT NULL
        )""",
        # The TUI pages millions of rollouts by keyset (id > ?), per run or per problem.
        "CREATE INDEX rollouts_problem ON rollouts(problem_id)",
        "CREATE INDEX rollouts_run ON rollouts(run_id, id)",
        """CREATE TABLE commands (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            command TEXT NOT NULL,
            args_json TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            acked_at TEXT,
            ack_message TEXT
        )""",
        "CREATE INDEX commands_pending ON commands(run_id, acked_at, id)",
    ]
    for sql in statements:
        db.execute(sql)


def _problem_rows(run_id, problems, source, split, provenance, answer_verified, difficulty) -> list[tuple]:
    """Encode problems for insertion before any transaction opens: bad input fails fast, never holding the lock."""
    _check(source, PROBLEM_SOURCES, "source")
    _check(split, PROBLEM_SPLITS, "split", optional=True)
    problems = list(problems)
    n = len(problems)
    provs = _per_item(provenance, n, "provenance")
    verified = [_flag(v, "answer_verified") for v in _per_item(answer_verified, n, "answer_verified")]
    diffs = _per_item(difficulty, n, "difficulty")
    now = _now()
    rows = []
    for i, p in enumerate(problems):
        rows.append((
            run_id, p.question, str(p.answer), verified[i], p.domain, p.level,
            None if diffs[i] is None else float(diffs[i]), source, split,
            content_hash(p.domain, p.question), _dumps(provs[i] or {}, f"provenance[{i}]"),
            _dumps(list(p.steps), f"problems[{i}].steps"), _dumps(dict(p.meta or {}), f"problems[{i}].meta"),
            now,
        ))
    return rows


def _insert_problem_rows(conn: sqlite3.Connection, rows: list[tuple]) -> list[int]:
    ids = []
    for row in rows:
        cur = conn.execute(
            "INSERT INTO problems (run_id, question, answer, answer_verified, domain, level, difficulty,"
            " source, split, content_hash, provenance_json, steps_json, meta_json, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            # Targeted at the dedupe key only: CHECK/NOT NULL/FK violations must still raise.
            " ON CONFLICT (run_id, content_hash) DO NOTHING",
            row,
        )
        if cur.rowcount == 1:
            ids.append(cur.lastrowid)
        else:
            ids.append(conn.execute(
                "SELECT id FROM problems WHERE run_id = ? AND content_hash = ?", (row[0], row[9])
            ).fetchone()[0])
    return ids


def _insert_dataset(conn: sqlite3.Connection, run_id: int, name: str, kind: str, problem_ids: Sequence[int],
                    teacher_step: int | None, meta: dict | None) -> int:
    _check(kind, DATASET_KINDS, "kind")
    dataset_id = conn.execute(
        "INSERT INTO datasets (run_id, name, kind, teacher_step, created_at, meta_json) VALUES (?, ?, ?, ?, ?, ?)",
        (run_id, name, kind, teacher_step, _now(), _dumps(meta or {}, "meta"))).lastrowid
    conn.executemany("INSERT INTO dataset_items (dataset_id, problem_id, position) VALUES (?, ?, ?)",
                     [(dataset_id, pid, pos) for pos, pid in enumerate(problem_ids)])
    return dataset_id


def _migration_2(db: sqlite_utils.Database) -> None:
    """The agent loop's units of work: teacher steps and student trainings (resume reads these)."""
    for sql in [
        """CREATE TABLE teacher_steps (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            step INTEGER NOT NULL,
            status TEXT NOT NULL,
            mean_reward REAL,
            moving_average REAL,
            promoted_dataset_id INTEGER REFERENCES datasets(id),
            metrics_json TEXT NOT NULL DEFAULT '{}',
            started_at TEXT NOT NULL,
            finished_at TEXT,
            PRIMARY KEY (run_id, step)
        )""",
        """CREATE TABLE trainings (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            teacher_step INTEGER NOT NULL,
            dataset_id INTEGER REFERENCES datasets(id),
            student_index INTEGER NOT NULL,
            reward REAL,
            accuracy_before REAL,
            accuracy_after REAL,
            checkpoint_path TEXT,
            metrics_json TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            UNIQUE (run_id, teacher_step, dataset_id, student_index)
        )""",
        "CREATE INDEX trainings_run_step ON trainings(run_id, teacher_step)",
    ]:
        db.execute(sql)


_INSERT_ROLLOUT = ("INSERT INTO rollouts (run_id, problem_id, phase, ref, completion, reward, correct, created_at)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


def _rollout_values(run_id: int, rows: Iterable[dict]) -> list[tuple]:
    now = _now()
    values = []
    for i, r in enumerate(rows):
        _check(r.get("phase"), ROLLOUT_PHASES, f"rows[{i}].phase")
        if r.get("completion") is None:
            raise ValueError(f"rows[{i}] is missing 'completion'")
        values.append((
            run_id, r.get("problem_id"), r["phase"], None if r.get("ref") is None else str(r["ref"]),
            r["completion"], None if r.get("reward") is None else float(r["reward"]),
            _flag(r.get("correct"), f"rows[{i}].correct"), now,
        ))
    return values


# MIGRATIONS[i] takes the schema from version i to i + 1. Append only. Each runs inside one transaction
# together with the schema_version bump, so a failing migration leaves the database at the previous version.
def _migration_3(db: sqlite_utils.Database) -> None:
    """Agent heartbeat: the TUI tells a live run (an agent polling commands) from an abandoned one."""
    db.execute("ALTER TABLE runs ADD COLUMN heartbeat_at TEXT")


def _migration_4(db: sqlite_utils.Database) -> None:
    """hard-val: a problem's split may be 'val'. Widening a CHECK changes nothing stored, so the table's schema
    text is edited in place (SQLite's documented procedure for changes that leave the on-disk content as it
    is: writable_schema, then a schema_version bump so every connection re-reads it) instead of rebuilding
    the problems table that dataset items and rollouts point at."""
    conn = db.conn
    version = conn.execute("PRAGMA schema_version").fetchone()[0]
    conn.execute("PRAGMA writable_schema = ON")
    try:
        conn.execute("UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE type = 'table' AND name = 'problems'",
                     ("CHECK (split IN ('train', 'test'))", "CHECK (split IN ('train', 'val', 'test'))"))
        conn.execute(f"PRAGMA schema_version = {int(version) + 1}")
    finally:
        conn.execute("PRAGMA writable_schema = OFF")


def run_relative(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """A checkpoint path as the store keeps it: relative to `root` (the run directory, the store file's) when it
    lies inside it, so that a run moved with `mv` still finds its checkpoints; else absolute."""
    absolute = os.path.abspath(path)
    real, base = os.path.realpath(absolute), os.path.realpath(root)
    if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
        return os.path.relpath(real, base)
    return absolute


CHECKPOINT_PATH_COLUMNS = (("checkpoints", "path"), ("trainings", "checkpoint_path"))


def _migration_5(db: sqlite_utils.Database) -> None:
    """Checkpoint paths relative to the run directory (checkpoints.path, trainings.checkpoint_path). Stored
    before as the agent was given them: absolute, or relative to the working directory of the process that
    wrote them, so a moved run could not resume. A path inside the store's directory becomes relative to it;
    an absolute one that no longer exists but whose checkpoints/... part does under the store's directory (a
    run moved before this migration) too; any other becomes absolute (a relative path means the run's now)."""
    main = next((row[2] for row in db.conn.execute("PRAGMA database_list") if row[1] == "main"), "")
    if not main:  # an in-memory store: no run directory
        return
    root = os.path.dirname(main)
    for table, column in CHECKPOINT_PATH_COLUMNS:
        for row_id, value in db.conn.execute(f"SELECT id, {column} FROM {table} WHERE {column} IS NOT NULL").fetchall():
            stored = run_relative(value, root)
            parts = Path(value).parts
            if os.path.isabs(stored) and not os.path.exists(stored) and "checkpoints" in parts:
                rest = parts[len(parts) - 1 - parts[::-1].index("checkpoints"):]
                if os.path.exists(os.path.join(root, *rest)):
                    stored = os.path.join(*rest)
            if stored != value:
                db.conn.execute(f"UPDATE {table} SET {column} = ? WHERE id = ?", (stored, row_id))


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_migration_1, _migration_2, _migration_3, _migration_4,
                                                             _migration_5]


# --------------------------------------------------------------------------------------------------
# Helpers


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def normalize_question(question: str) -> str:
    """Whitespace-collapsed question text: what deduplication compares."""
    return " ".join(question.split())


def content_hash(domain: str, question: str) -> str:
    """sha256 hex of domain + normalized question; problems are unique per (run, content_hash)."""
    # The NUL separator keeps ("ab", "c") and ("a", "bc") apart.
    return hashlib.sha256(f"{domain.strip()}\0{normalize_question(question)}".encode()).hexdigest()


def _json_default(value: Any) -> Any:
    # Configs and metrics routinely carry paths and small dataclasses; anything else is a caller bug and
    # should fail loudly rather than be stored as an opaque repr.
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _dumps(value: Any, field: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{field}: not JSON-serialisable ({exc})") from None


def _decode(row: dict | None) -> dict | None:
    """Replace every ``x_json`` column by a decoded ``x`` key."""
    if row is None:
        return None
    out = {}
    for key, value in row.items():
        if key.endswith("_json"):
            out[key[:-5]] = json.loads(value) if value is not None else None
        else:
            out[key] = value
    return out


def _int_keys(mapping: dict) -> dict:
    """JSON object keys are strings; pass@k dicts are keyed by int k, so restore them."""
    return {int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k: v for k, v in mapping.items()}


def _flag(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if value in (0, 1):  # True/False compare equal to 1/0
        return int(value)
    raise ValueError(f"{field} must be 0/1, True/False or None: got {value!r}")


def _check(value: Any, allowed: Sequence[str], field: str, optional: bool = False) -> None:
    if optional and value is None:
        return
    if value not in allowed:
        raise ValueError(f"{field} must be one of {', '.join(allowed)}: got {value!r}")


def _per_item(value: Any, n: int, field: str) -> list:
    """A scalar applied to every item, or a list with one entry per item."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{field}: got {len(value)} entries for {n} problems")
        return list(value)
    return [value] * n


def _is_locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "database is locked" in str(exc)


def to_problem(row: dict) -> Problem:
    """Rebuild a ``Problem`` from a problems row (decoded as returned by the store, or raw with ``*_json``)."""
    from soar_agent.tasks.base import Problem  # lazy: see the TYPE_CHECKING import above

    steps = row["steps"] if "steps" in row else json.loads(row.get("steps_json") or "[]")
    meta = row["meta"] if "meta" in row else json.loads(row.get("meta_json") or "{}")
    return Problem(
        question=row["question"],
        answer=row["answer"],
        domain=row["domain"],
        level=row.get("level"),
        steps=tuple(steps or ()),
        meta=dict(meta or {}),
    )


def quick_check(path: str | os.PathLike) -> None:
    """``PRAGMA quick_check`` on an existing store, through a read-only connection (so a damaged file is
    never written to); StoreError naming the first problem. Seconds on a large store: run it once at the
    start of a long run, not on every open."""
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
        try:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        problems = [str(exc)]
    if problems != ["ok"]:
        first = " ".join(str(problems[0]).split())
        raise StoreError(f"{path}: damaged, fails PRAGMA quick_check ({first}); refusing to write to it: "
                         f"copy it away and recover with `sqlite3 {path} .recover`")


# --------------------------------------------------------------------------------------------------
# Store


class Store:
    """A handle on one store file. Use as a context manager or call ``close()``.

    Read methods return plain dicts with ``*_json`` columns decoded into the key without the suffix
    (``config_json`` -> ``config``). Write methods return ids. Every write method is one transaction.
    """

    def __init__(self, path: str | os.PathLike, readonly: bool = False, check_same_thread: bool = True,
                 require_run: bool = False):
        """``require_run``: the file must already hold a run (commands that read one: export, eval-pq,
        resuming); otherwise StoreError, raised before anything is written to the file."""
        self.path = str(path)
        self.readonly = readonly
        # Serialises calls when a Store is shared across threads (check_same_thread=False); uncontended
        # otherwise, so it costs nothing in the one-Store-per-thread case.
        self._lock = threading.RLock()
        if require_run and not readonly and not os.path.isfile(self.path):
            raise StoreError(f"{self.path}: no such store file")
        self.db = sqlite_utils.Database(self._connect(check_same_thread))
        try:
            # before _configure, which switches an empty file to WAL (a write)
            if require_run and self._read_version() == 0:
                raise StoreError(_no_run(self.path))
            self._configure()
            self._migrate()
            if require_run and self.latest_run() is None:
                raise StoreError(_no_run(self.path))
        except sqlite3.DatabaseError as exc:
            self.db.close()
            if is_disk_full(exc):  # switching a new file to WAL, or a migration, is a write
                raise DiskFull(self.path, "opening the store") from exc
            if "not a database" in str(exc):
                raise StoreError(f"{self.path}: not a SQLite database ({exc})") from None
            raise StoreError(f"{self.path}: cannot open store ({exc})") from None
        except BaseException:
            self.db.close()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike, readonly: bool = False, check_same_thread: bool = True) -> Store:
        return cls(path, readonly=readonly, check_same_thread=check_same_thread)

    # -- connection ---------------------------------------------------------------------------------

    def _connect(self, check_same_thread: bool) -> sqlite3.Connection:
        # isolation_level=None: the driver never opens transactions on its own; _write() issues
        # BEGIN IMMEDIATE / COMMIT explicitly so each write method is exactly one transaction.
        kwargs = dict(timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=check_same_thread)
        if self.readonly:
            if not os.path.exists(self.path):
                raise StoreError(f"{self.path}: no such store file (read-only open does not create one)")
            # mode=ro: the TUI physically cannot write, whatever SQL it runs.
            uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro"
            try:
                return sqlite3.connect(uri, uri=True, **kwargs)
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot open read-only ({exc})") from None
        if self.path != ":memory:":
            if os.path.isdir(self.path):
                raise StoreError(f"{self.path}: is a directory, not a store file")
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            return sqlite3.connect(self.path, **kwargs)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open ({exc})") from None

    def _configure(self) -> None:
        conn = self.db.conn
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        if self.readonly:
            # journal_mode is persistent in the file; a read-only connection cannot (and need not) set it.
            conn.execute("PRAGMA query_only = ON")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # surfaces "not a database" now
        else:
            self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
            # NORMAL in WAL mode: a power loss may drop the last commits, never corrupt the file.
            conn.execute("PRAGMA synchronous = NORMAL")

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- transactions -------------------------------------------------------------------------------

    def _retry(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` again on "database is locked", with jittered exponential backoff. busy_timeout already
        waited; this only covers the cases where SQLite returns SQLITE_BUSY without waiting."""
        delay = LOCK_BACKOFF_S
        for attempt in range(LOCK_RETRIES + 1):
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_locked(exc) or attempt == LOCK_RETRIES:
                    raise
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` as one transaction: all of it commits or none of it does.

        BEGIN IMMEDIATE takes the write lock up front (waiting under busy_timeout), so a transaction never
        fails half way for want of the lock; a lock error anywhere rolls back and retries the whole thing.
        Writes go through ``conn.execute`` rather than sqlite-utils' insert helpers because older
        sqlite-utils (3.x) commit inside those helpers, which would break the all-or-nothing rule.
        """
        if self.readonly:
            raise StoreError(f"{self.path}: store is open read-only; open Store(path) to write")

        def attempt() -> T:
            conn = self.db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        with self._lock:
            try:
                return self._retry(attempt)
            except sqlite3.Error as exc:
                if is_disk_full(exc):  # rolled back: the store is as its last transaction left it
                    raise DiskFull(self.path, "writing the store") from exc
                raise

    def _rows(self, sql: str, params: Sequence | dict = ()) -> list[dict]:
        with self._lock:
            return self._retry(lambda: list(self.db.query(sql, params)))

    def _row(self, sql: str, params: Sequence | dict = ()) -> dict | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    # -- schema -------------------------------------------------------------------------------------

    def _read_version(self) -> int:
        tables = {r[0] for r in self.db.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            if tables - {"sqlite_sequence", "sqlite_stat1", "sqlite_stat4"}:
                raise StoreError(f"{self.path}: SQLite database but not a soar-agent store (no meta table)")
            return 0
        row = self.db.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._retry(self._read_version)

    def _migrate(self) -> None:
        # Read the module attribute at call time so tests (and future code) can extend MIGRATIONS.
        migrations = list(MIGRATIONS)
        target = len(migrations)
        version = self.schema_version
        if version > target:
            raise SchemaVersionError(
                f"{self.path}: schema version {version} is newer than this code supports ({target}); "
                "upgrade soar-agent"
            )
        if version == target:
            return
        if self.readonly and version == 0:  # "migrate" would be the wrong advice: there is nothing to migrate
            raise StoreError(_no_run(self.path))
        if self.readonly:
            raise SchemaVersionError(
                f"{self.path}: schema version {version} is older than this code ({target}); "
                "open it read-write once to migrate"
            )
        for step in range(version, target):

            def apply(conn: sqlite3.Connection, step: int = step) -> None:
                # Re-read under the write lock: another process may have migrated since we looked.
                if self._read_version() != step:
                    return
                migrations[step](self.db)
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (str(step + 1),),
                )

            self._write(apply)

    def count(self, table: str, run_id: int | None = None) -> int:
        """Row count of a table, optionally for one run (not for dataset_items/evaluation_results)."""
        _check(table, TABLES, "table")
        if run_id is None:
            return self._row(f"SELECT count(*) AS n FROM {table}")["n"]
        return self._row(f"SELECT count(*) AS n FROM {table} WHERE run_id = ?", (run_id,))["n"]

    # -- runs ---------------------------------------------------------------------------------------

    def create_run(self, *, name: str, mode: str, config: dict | None = None, model_path: str | None = None,
                   status: str = "created") -> int:
        config_json = _dumps(config or {}, "config")
        return self._write(lambda c: c.execute(
            "INSERT INTO runs (name, mode, created_at, config_json, status, model_path) VALUES (?, ?, ?, ?, ?, ?)",
            (name, mode, _now(), config_json, status, None if model_path is None else str(model_path)),
        ).lastrowid)

    def heartbeat(self, run_id: int) -> None:
        """The agent is alive and polling commands (written between units of work)."""
        self._write(lambda c: c.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ?", (_now(), run_id)))

    def set_run_status(self, run_id: int, status: str) -> None:
        self._write(lambda c: c.execute("UPDATE runs SET status = ? WHERE id = ?", (status, run_id)))

    def get_run(self, run_id: int) -> dict | None:
        return _decode(self._row("SELECT * FROM runs WHERE id = ?", (run_id,)))

    def latest_run(self) -> dict | None:
        return _decode(self._row("SELECT * FROM runs ORDER BY id DESC LIMIT 1"))

    def require_run(self) -> dict:
        """The latest run, or StoreError when the store holds none (e.g. its WAL was lost)."""
        run = self.latest_run()
        if run is None:
            raise StoreError(_no_run(self.path))
        return run

    def runs(self) -> list[dict]:
        return [_decode(r) for r in self._rows("SELECT * FROM runs ORDER BY id")]

    # -- problems -----------------------------------------------------------------------------------

    def add_problems(self, *, run_id: int, problems: Sequence[Problem], source: str, split: str | None = None,
                     provenance: dict | list[dict] | None = None,
                     answer_verified: bool | int | None | list = None,
                     difficulty: float | None | list = None) -> list[int]:
        """Store problems in one transaction; returns one id per input, in order. A problem whose
        (domain, normalized question) already exists in the run maps to the existing row's id (the stored
        row is left as it was), including duplicates within the batch. ``provenance``, ``answer_verified``
        and ``difficulty`` are either one value for all problems or a list with one per problem."""
        rows = _problem_rows(run_id, problems, source, split, provenance, answer_verified, difficulty)
        return self._write(lambda conn: _insert_problem_rows(conn, rows))

    def get_problem(self, problem_id: int) -> dict | None:
        return _decode(self._row("SELECT * FROM problems WHERE id = ?", (problem_id,)))

    def problems_for(self, run_id: int, source: str | None = None, split: str | None = None,
                     domain: str | None = None) -> list[dict]:
        sql, params = "SELECT * FROM problems WHERE run_id = ?", [run_id]
        for column, value in (("source", source), ("split", split), ("domain", domain)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        return [_decode(r) for r in self._rows(sql + " ORDER BY id", params)]

    def set_difficulty(self, difficulties: dict[int, float | None]) -> None:
        """Set ``difficulty`` for many problems at once (e.g. 1 - pass rate after an evaluation)."""
        items = [(None if d is None else float(d), pid) for pid, d in difficulties.items()]
        self._write(lambda c: c.executemany("UPDATE problems SET difficulty = ? WHERE id = ?", items))

    to_problem = staticmethod(to_problem)

    # -- datasets -----------------------------------------------------------------------------------

    def create_dataset(self, *, run_id: int, name: str, kind: str, problem_ids: Iterable[int],
                       teacher_step: int | None = None, meta: dict | None = None) -> int:
        """A named, ordered list of problems (curriculum, hard split, ...). Positions are 0-based."""
        _check(kind, DATASET_KINDS, "kind")
        problem_ids = [int(p) for p in problem_ids]
        return self._write(lambda conn: _insert_dataset(conn, run_id, name, kind, problem_ids, teacher_step, meta))

    # -- agent units of work (each one transaction: a crash leaves the unit either done or not started) --

    def add_curriculum(self, *, run_id: int, teacher_step: int, datasets: Sequence[dict]) -> list[int]:
        """The teacher's datasets of one step with their problems, atomically. Each dict: name, problems,
        provenance (list), answer_verified (list), meta. Returns the dataset ids."""
        prepared = [(d, _problem_rows(run_id, d["problems"], "teacher", None, d.get("provenance"),
                                      d.get("answer_verified"), None)) for d in datasets]

        def insert(conn: sqlite3.Connection) -> list[int]:
            conn.execute("INSERT OR IGNORE INTO teacher_steps (run_id, step, status, started_at) VALUES (?, ?, ?, ?)",
                         (run_id, teacher_step, "sampled", _now()))
            conn.execute("UPDATE teacher_steps SET status = 'sampled' WHERE run_id = ? AND step = ?",
                         (run_id, teacher_step))
            return [_insert_dataset(conn, run_id, d["name"], "curriculum", _insert_problem_rows(conn, rows),
                                    teacher_step, d.get("meta")) for d, rows in prepared]

        return self._write(insert)

    def teacher_step(self, run_id: int, step: int) -> dict | None:
        return _decode(self._row("SELECT * FROM teacher_steps WHERE run_id = ? AND step = ?", (run_id, step)))

    def teacher_steps(self, run_id: int) -> list[dict]:
        return [_decode(r) for r in self._rows("SELECT * FROM teacher_steps WHERE run_id = ? ORDER BY step", (run_id,))]

    def add_training(self, *, run_id: int, teacher_step: int, dataset_id: int | None, student_index: int,
                     reward: float | None, accuracy_before: float | None, accuracy_after: float | None,
                     checkpoint_path: str | None, metrics: dict, rollouts: Iterable[dict] = ()) -> int:
        """One finished student training with its sampled rollouts, in one transaction (inserted only when
        complete: resume retrains missing ones, and nothing is stored twice)."""
        metrics_json = _dumps(metrics, "metrics")
        values = _rollout_values(run_id, rollouts)

        def insert(conn: sqlite3.Connection) -> int:
            conn.executemany(_INSERT_ROLLOUT, values)
            return conn.execute(
                "INSERT INTO trainings (run_id, teacher_step, dataset_id, student_index, reward, accuracy_before,"
                " accuracy_after, checkpoint_path, metrics_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, teacher_step, dataset_id, student_index, reward, accuracy_before, accuracy_after,
                 self._stored_path(checkpoint_path), metrics_json, _now())).lastrowid

        return self._write(insert)

    def trainings(self, run_id: int, teacher_step: int | None = None) -> list[dict]:
        sql, params = "SELECT * FROM trainings WHERE run_id = ?", [run_id]
        if teacher_step is not None:
            sql, params = sql + " AND teacher_step = ?", params + [teacher_step]
        return [self._local_paths(_decode(r)) for r in self._rows(sql + " ORDER BY id", params)]

    def complete_teacher_step(self, *, run_id: int, step: int, dataset_rewards: dict[int, float | None],
                              mean_reward: float | None, moving_average: float | None,
                              promoted_dataset_id: int | None, checkpoints: Sequence[dict], metrics: dict) -> None:
        """Close a teacher step: dataset rewards, promotion (the dataset joins the promotion questions),
        new checkpoints (each dict: path, role, metrics) and the step's figures, all in one transaction."""
        metrics_json = _dumps(metrics, "metrics")

        def update(conn: sqlite3.Connection) -> None:
            for dataset_id, reward in dataset_rewards.items():
                conn.execute("UPDATE datasets SET reward = ?, promoted = ? WHERE id = ?",
                             (reward, int(dataset_id == promoted_dataset_id), dataset_id))
            if promoted_dataset_id is not None:
                ids = [r[0] for r in conn.execute(
                    "SELECT problem_id FROM dataset_items WHERE dataset_id = ? ORDER BY position",
                    (promoted_dataset_id,))]
                _insert_dataset(conn, run_id, f"promotion-step-{step}", "promotion", ids, step,
                                {"from_dataset": promoted_dataset_id})
            for checkpoint in checkpoints:
                conn.execute(
                    "INSERT INTO checkpoints (run_id, path, role, teacher_step, status, metrics_json, created_at)"
                    " VALUES (?, ?, ?, ?, 'complete', ?, ?)",
                    (run_id, self._stored_path(checkpoint["path"]), checkpoint["role"], step,
                     _dumps(checkpoint.get("metrics") or {}, "metrics"), _now()))
            conn.execute(
                "INSERT INTO teacher_steps (run_id, step, status, started_at) VALUES (?, ?, 'complete', ?)"
                " ON CONFLICT (run_id, step) DO NOTHING", (run_id, step, _now()))
            conn.execute(
                "UPDATE teacher_steps SET status = 'complete', mean_reward = ?, moving_average = ?,"
                " promoted_dataset_id = ?, metrics_json = ?, finished_at = ? WHERE run_id = ? AND step = ?",
                (mean_reward, moving_average, promoted_dataset_id, metrics_json, _now(), run_id, step))

        self._write(update)

    def get_dataset(self, dataset_id: int) -> dict | None:
        return _decode(self._row("SELECT * FROM datasets WHERE id = ?", (dataset_id,)))

    def datasets(self, run_id: int, kind: str | None = None, name: str | None = None) -> list[dict]:
        return self._select("datasets", run_id, kind=kind, name=name)

    def dataset_problems(self, dataset_id: int) -> list[dict]:
        """The dataset's problems in position order (each with its ``position``)."""
        return [_decode(r) for r in self._rows(
            "SELECT p.*, i.position FROM dataset_items i JOIN problems p ON p.id = i.problem_id"
            " WHERE i.dataset_id = ? ORDER BY i.position",
            (dataset_id,),
        )]

    def set_dataset_reward(self, dataset_id: int, reward: float | None, promoted: bool | None = None) -> None:
        """Record a curriculum's teacher reward; ``promoted`` is left unchanged when None."""
        flag = _flag(promoted, "promoted")

        def update(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE datasets SET reward = ?, promoted = coalesce(?, promoted) WHERE id = ?",
                (None if reward is None else float(reward), flag, dataset_id),
            )
            if cur.rowcount != 1:
                raise KeyError(f"dataset {dataset_id} does not exist")

        self._write(update)

    # -- evaluations --------------------------------------------------------------------------------

    def add_evaluation(self, *, run_id: int, set_name: str, results: Sequence[dict], summary: dict,
                       samples_per_problem: int, temperature: float, checkpoint_id: int | None = None,
                       teacher_step: int | None = None) -> int:
        """One evaluation and its per-problem results, in one transaction. Each result is a dict with
        ``problem_id, samples, correct`` and optional ``greedy_correct`` (0/1/None) and ``pass_at``
        ({k: value})."""
        summary_json = _dumps(summary, "summary")
        rows = []
        for i, r in enumerate(results):
            try:
                rows.append((
                    int(r["problem_id"]), int(r["samples"]), int(r["correct"]),
                    _flag(r.get("greedy_correct"), f"results[{i}].greedy_correct"),
                    _dumps({str(k): v for k, v in (r.get("pass_at") or {}).items()}, f"results[{i}].pass_at"),
                ))
            except KeyError as exc:
                raise ValueError(f"results[{i}] is missing {exc.args[0]!r}") from None
        # Checked before the transaction: one result per problem is the table's key, and two results for
        # one problem cannot be merged without guessing, so the caller must de-duplicate its set first.
        seen: dict[int, int] = {}
        for i, row in enumerate(rows):
            if row[0] in seen:
                raise ValueError(f"results[{i}]: problem {row[0]} is already results[{seen[row[0]]}] "
                                 f"(evaluation sets must not repeat a question)")
            seen[row[0]] = i

        def insert(conn: sqlite3.Connection) -> int:
            evaluation_id = conn.execute(
                "INSERT INTO evaluations (run_id, checkpoint_id, set_name, teacher_step, samples_per_problem,"
                " temperature, summary_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, checkpoint_id, set_name, teacher_step, int(samples_per_problem), float(temperature),
                 summary_json, _now()),
            ).lastrowid
            conn.executemany(
                "INSERT INTO evaluation_results (evaluation_id, problem_id, samples, correct, greedy_correct,"
                " pass_at_json) VALUES (?, ?, ?, ?, ?, ?)",
                [(evaluation_id, *row) for row in rows],
            )
            return evaluation_id

        return self._write(insert)

    def evaluations(self, run_id: int, set_name: str | None = None) -> list[dict]:
        """Evaluations of a run, oldest first, with ``summary`` decoded (results via evaluation_results)."""
        sql, params = "SELECT * FROM evaluations WHERE run_id = ?", [run_id]
        if set_name is not None:
            sql += " AND set_name = ?"
            params.append(set_name)
        return [_decode(r) for r in self._rows(sql + " ORDER BY id", params)]

    def evaluation_results(self, evaluation_id: int) -> list[dict]:
        """Per-problem results; ``pass_at`` comes back keyed by int k."""
        out = []
        for r in self._rows(
            "SELECT * FROM evaluation_results WHERE evaluation_id = ? ORDER BY problem_id", (evaluation_id,)
        ):
            r = _decode(r)
            r["pass_at"] = _int_keys(r["pass_at"] or {})
            out.append(r)
        return out

    # -- checkpoints --------------------------------------------------------------------------------

    def add_checkpoint(self, *, run_id: int, path: str | os.PathLike, role: str, teacher_step: int | None = None,
                       status: str = "writing", metrics: dict | None = None) -> int:
        """Register a checkpoint, normally as ``writing`` before the files are written, then
        ``mark_checkpoint(id, "complete")`` once they are: a crash in between leaves a visible 'writing' row."""
        _check(role, CHECKPOINT_ROLES, "role")
        _check(status, CHECKPOINT_STATUSES, "status")
        metrics_json = _dumps(metrics or {}, "metrics")
        return self._write(lambda c: c.execute(
            "INSERT INTO checkpoints (run_id, path, role, teacher_step, status, metrics_json, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (run_id, self._stored_path(path), role, teacher_step, status, metrics_json, _now()),
        ).lastrowid)

    def mark_checkpoint(self, checkpoint_id: int, status: str, metrics: dict | None = None) -> None:
        """Change a checkpoint's status; ``metrics`` (when given) replaces the stored metrics."""
        _check(status, CHECKPOINT_STATUSES, "status")
        metrics_json = None if metrics is None else _dumps(metrics, "metrics")

        def update(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE checkpoints SET status = ?, metrics_json = coalesce(?, metrics_json) WHERE id = ?",
                (status, metrics_json, checkpoint_id),
            )
            if cur.rowcount != 1:
                raise KeyError(f"checkpoint {checkpoint_id} does not exist")

        self._write(update)

    def checkpoints(self, run_id: int, role: str | None = None, status: str | None = None) -> list[dict]:
        return [self._local_paths(r) for r in self._select("checkpoints", run_id, role=role, status=status)]

    def _stored_path(self, path: str | os.PathLike | None) -> str | None:
        """A checkpoint path as stored: relative to the run directory (run_relative)."""
        if path is None or self.path == ":memory:":
            return None if path is None else str(path)
        return run_relative(path, os.path.dirname(os.path.abspath(self.path)))

    def _local_paths(self, row: dict | None) -> dict | None:
        """A checkpoints or trainings row with its checkpoint path usable from here: a relative one (the run
        directory's) joined to the store's directory as this process names it; an absolute one as it is."""
        for column in ("path", "checkpoint_path"):
            value = (row or {}).get(column)
            if value and not os.path.isabs(value) and self.path != ":memory:":
                row[column] = os.path.join(os.path.dirname(self.path), value)
        return row

    def _select(self, table: str, run_id: int, **filters) -> list[dict]:
        """A run's rows of a table in id order, filtered on the given columns (None = no filter)."""
        wanted = {column: value for column, value in filters.items() if value is not None}
        where = "".join(f" AND {column} = ?" for column in wanted)
        rows = self._rows(f"SELECT * FROM {table} WHERE run_id = ?{where} ORDER BY id", [run_id, *wanted.values()])
        return [_decode(r) for r in rows]

    # -- events -------------------------------------------------------------------------------------

    def log_event(self, *, run_id: int | None, level: str, kind: str, message: str, data: dict | None = None) -> int:
        """Append a log event (``run_id`` may be None for process-level events before a run exists)."""
        _check(level, EVENT_LEVELS, "level")
        data_json = _dumps(data or {}, "data")
        return self._write(lambda c: c.execute(
            "INSERT INTO events (run_id, ts, level, kind, message, data_json) VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, _now(), level, kind, message, data_json),
        ).lastrowid)

    def last_session(self, run_id: int) -> dict | None:
        """The run's latest `session` event (Agent.run), with `last_write`: the time of the newest row the run
        stored since (event, training, checkpoint, evaluation, rollout, heartbeat), where a session that was
        killed stopped doing work that counts. None before the run's first session."""
        session = _decode(self._row("SELECT * FROM events WHERE run_id = ? AND kind = 'session' ORDER BY id DESC"
                                    " LIMIT 1", (run_id,)))
        if session is None:
            return None
        latest = [session["ts"], (self.get_run(run_id) or {}).get("heartbeat_at") or ""]
        for table, column in (("events", "ts"), ("trainings", "created_at"), ("checkpoints", "created_at"),
                              ("evaluations", "created_at"), ("rollouts", "created_at")):
            row = self._row(f"SELECT {column} AS at FROM {table} WHERE run_id = ? ORDER BY id DESC LIMIT 1", (run_id,))
            latest.append(row["at"] if row else "")
        session["last_write"] = max(latest)  # ISO timestamps in UTC with one format (_now): ordered as text
        return session

    def events(self, run_id: int | None, level: str | None = None, limit: int = 200,
               after_id: int | None = None) -> list[dict]:
        """Events oldest first. ``level`` is a minimum severity (``"warning"`` gives warnings and errors).
        Without ``after_id``: the most recent ``limit`` events. With it: the first ``limit`` events after
        that id, for tailing (pass the last id seen)."""
        where, params = "run_id IS ?", [run_id]
        if level is not None:
            _check(level, EVENT_LEVELS, "level")
            levels = EVENT_LEVELS[EVENT_LEVELS.index(level):]
            where += f" AND level IN ({', '.join('?' * len(levels))})"
            params += levels
        if after_id is None:
            sql = f"SELECT * FROM (SELECT * FROM events WHERE {where} ORDER BY id DESC LIMIT ?) ORDER BY id"
        else:
            where += " AND id > ?"
            params.append(after_id)
            sql = f"SELECT * FROM events WHERE {where} ORDER BY id LIMIT ?"
        return [_decode(r) for r in self._rows(sql, [*params, int(limit)])]

    # -- rollouts -----------------------------------------------------------------------------------

    def add_rollouts(self, *, run_id: int, rows: Iterable[dict]) -> int:
        """Append rollouts in one transaction; returns how many. Each row: ``phase, completion`` and optional
        ``problem_id, ref, reward, correct``."""
        values = _rollout_values(run_id, rows)
        self._write(lambda c: c.executemany(_INSERT_ROLLOUT, values))
        return len(values)

    def rollouts(self, run_id: int, problem_id: int | None = None, phase: str | None = None,
                 after_id: int = 0, limit: int = 100) -> list[dict]:
        """One page of rollouts by keyset (``id > after_id``, ascending): pass the last id for the next page.
        Keyset rather than OFFSET so page N costs the same as page 1 over millions of rows."""
        sql, params = "SELECT * FROM rollouts WHERE run_id = ? AND id > ?", [run_id, after_id]
        if problem_id is not None:
            sql += " AND problem_id = ?"
            params.append(problem_id)
        if phase is not None:
            sql += " AND phase = ?"
            params.append(phase)
        return self._rows(sql + " ORDER BY id LIMIT ?", [*params, int(limit)])

    # -- commands (TUI -> agent) -----------------------------------------------------------------------

    def send_command(self, *, run_id: int, command: str, args: dict | None = None) -> int:
        """Queue a command for the agent. The TUI reads through a read-only Store, so it sends commands
        through a short-lived read-write one: ``with Store(path) as s: s.send_command(...)``."""
        _check(command, COMMANDS, "command")
        args_json = _dumps(args or {}, "args")
        return self._write(lambda c: c.execute(
            "INSERT INTO commands (run_id, command, args_json, created_at) VALUES (?, ?, ?, ?)",
            (run_id, command, args_json, _now()),
        ).lastrowid)

    def pending_commands(self, run_id: int) -> list[dict]:
        """Unacknowledged commands, oldest first."""
        return [_decode(r) for r in self._rows(
            "SELECT * FROM commands WHERE run_id = ? AND acked_at IS NULL ORDER BY id", (run_id,)
        )]

    def commands(self, run_id: int) -> list[dict]:
        return [_decode(r) for r in self._rows("SELECT * FROM commands WHERE run_id = ? ORDER BY id", (run_id,))]

    def ack_command(self, command_id: int, message: str = "") -> bool:
        """Acknowledge a command; False if it was already acknowledged (the first ack wins)."""
        return self._write(lambda c: c.execute(
            "UPDATE commands SET acked_at = ?, ack_message = ? WHERE id = ? AND acked_at IS NULL",
            (_now(), message, command_id),
        ).rowcount == 1)
