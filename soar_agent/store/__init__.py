"""The SQLite store: every durable record of a run (problems, datasets, evaluations, checkpoints, events,
rollouts, TUI commands) lives in one SQLite file, owned by this package.

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

Layout. This module opens the file and runs its transactions and migrations; ``Store`` is that core plus one
part per record kind, each in its own module:

* ``runs``: runs, log events and the TUI's commands (``RunRecords``);
* ``problems``: problems and datasets (``ProblemRecords``);
* ``loop``: teacher steps, trainings, evaluations and rollouts (``LoopRecords``);
* ``checkpoints``: checkpoints and their run-relative paths (``CheckpointRecords``);
* ``schema``: the migrations (``MIGRATIONS``);
* ``common``: enumerations, errors, and the encoding and checks all of them share.

Callers import every name from ``soar_agent.store``, never from the modules.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import sqlite_utils

from soar_agent.diskfull import DiskFull, is_disk_full
# Besides what this module uses, the names callers import from soar_agent.store (see Layout above).
from soar_agent.store.checkpoints import CheckpointRecords
from soar_agent.store.common import (
    CHECKPOINT_ROLES,
    CHECKPOINT_STATUSES,
    COMMANDS,
    DATASET_KINDS,
    EVENT_LEVELS,
    PROBLEM_SOURCES,
    PROBLEM_SPLITS,
    ROLLOUT_PHASES,
    RUN_MODES,
    TABLES,
    SchemaVersionError,
    StoreError,
    _check,
    _decode,
    _no_run,
    content_hash,
    normalize_question,
    run_relative,
)
from soar_agent.store.loop import LoopRecords
from soar_agent.store.problems import ProblemRecords, to_problem
from soar_agent.store.runs import RunRecords
from soar_agent.store.schema import CHECKPOINT_PATH_COLUMNS, MIGRATIONS

T = TypeVar("T")

BUSY_TIMEOUT_S = 30.0
# Retries of a whole transaction after busy_timeout already gave up (or SQLite returned SQLITE_BUSY without
# invoking the busy handler, e.g. during WAL recovery).
LOCK_RETRIES = 6
LOCK_BACKOFF_S = 0.05


def _now() -> str:
    # Every timestamp a Store writes comes from here through Store._now, which looks it up at call time: a
    # test moves the clock of every record kind at once by setting soar_agent.store._now.
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _is_locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "database is locked" in str(exc)


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


class Store(RunRecords, ProblemRecords, LoopRecords, CheckpointRecords):
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

    def _select(self, table: str, run_id: int, **filters) -> list[dict]:
        """A run's rows of a table in id order, filtered on the given columns (None = no filter)."""
        wanted = {column: value for column, value in filters.items() if value is not None}
        where = "".join(f" AND {column} = ?" for column in wanted)
        rows = self._rows(f"SELECT * FROM {table} WHERE run_id = ?{where} ORDER BY id", [run_id, *wanted.values()])
        return [_decode(r) for r in rows]

    def _now(self) -> str:
        # the module's _now, looked up at each call (see there)
        return _now()

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
