"""Problems and datasets: a run's questions, deduplicated by content hash, and the named, ordered lists of them
(curricula, hard splits, promotions) that students train and are evaluated on.

``ProblemRecords`` is a part of ``Store`` (soar_agent/store/__init__.py), which provides the transactions
(``_write``), the reads (``_rows``, ``_row``, ``_select``) and the clock (``_now``) it uses."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from soar_agent.store.common import (
    DATASET_KINDS,
    PROBLEM_SOURCES,
    PROBLEM_SPLITS,
    _check,
    _decode,
    _dumps,
    _flag,
    _per_item,
    content_hash,
)

if TYPE_CHECKING:  # the TUI imports the store; keep it from pulling in every task domain at runtime
    from soar_agent.tasks.base import Problem


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


class ProblemRecords:
    # -- problems -----------------------------------------------------------------------------------

    def add_problems(self, *, run_id: int, problems: Sequence[Problem], source: str, split: str | None = None,
                     provenance: dict | list[dict] | None = None,
                     answer_verified: bool | int | None | list = None,
                     difficulty: float | None | list = None) -> list[int]:
        """Store problems in one transaction; returns one id per input, in order. A problem whose
        (domain, normalized question) already exists in the run maps to the existing row's id (the stored
        row is left as it was), including duplicates within the batch. ``provenance``, ``answer_verified``
        and ``difficulty`` are either one value for all problems or a list with one per problem."""
        rows = self._problem_rows(run_id, problems, source, split, provenance, answer_verified, difficulty)
        return self._write(lambda conn: _insert_problem_rows(conn, rows))

    def _problem_rows(self, run_id, problems, source, split, provenance, answer_verified, difficulty) -> list[tuple]:
        """Encode problems for insertion before any transaction opens: bad input fails fast, never holding the lock."""
        _check(source, PROBLEM_SOURCES, "source")
        _check(split, PROBLEM_SPLITS, "split", optional=True)
        problems = list(problems)
        n = len(problems)
        provs = _per_item(provenance, n, "provenance")
        verified = [_flag(v, "answer_verified") for v in _per_item(answer_verified, n, "answer_verified")]
        diffs = _per_item(difficulty, n, "difficulty")
        now = self._now()
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
        return self._write(lambda conn: self._insert_dataset(conn, run_id, name, kind, problem_ids, teacher_step,
                                                             meta))

    def _insert_dataset(self, conn: sqlite3.Connection, run_id: int, name: str, kind: str,
                        problem_ids: Sequence[int], teacher_step: int | None, meta: dict | None) -> int:
        _check(kind, DATASET_KINDS, "kind")
        dataset_id = conn.execute(
            "INSERT INTO datasets (run_id, name, kind, teacher_step, created_at, meta_json) VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, name, kind, teacher_step, self._now(), _dumps(meta or {}, "meta"))).lastrowid
        conn.executemany("INSERT INTO dataset_items (dataset_id, problem_id, position) VALUES (?, ?, ?)",
                         [(dataset_id, pid, pos) for pos, pid in enumerate(problem_ids)])
        return dataset_id

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
