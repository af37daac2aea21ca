"""The schema: ``MIGRATIONS[i]`` takes a store from schema version i to i + 1. Append only; never edit a
released migration. Each runs inside one transaction together with the ``schema_version`` bump (see
``Store._migrate``), so a failing migration leaves the database at the previous version."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import sqlite_utils

from soar_agent.store.common import run_relative

# Frozen SQL rather than sqlite-utils ``create()`` calls, so that a released migration never changes behind our
# back when the library's DDL generation does. SQLite keeps each CREATE's text as written (sqlite_master.sql,
# which migration 4 edits in place), so these strings keep the whitespace they were released with.
_SCHEMA_1 = (
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
)

_SCHEMA_2 = (
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
)


def _migration_1(db: sqlite_utils.Database) -> None:
    """Initial schema: runs, problems, datasets, checkpoints, evaluations, events, rollouts, TUI commands."""
    for sql in _SCHEMA_1:
        db.execute(sql)


def _migration_2(db: sqlite_utils.Database) -> None:
    """The agent loop's units of work: teacher steps and student trainings (resume reads these)."""
    for sql in _SCHEMA_2:
        db.execute(sql)


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
