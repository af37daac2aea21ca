"""Checkpoints: the model files a run writes (baseline, students, teacher, exports), registered as ``writing``
before their files are written and marked ``complete`` after, and their paths, which the store keeps relative
to the run directory so that a moved run still finds them.

``CheckpointRecords`` is a part of ``Store`` (soar_agent/store/__init__.py), which provides the transactions
(``_write``), the reads (``_select``) and the clock (``_now``) it uses."""

from __future__ import annotations

import os
import sqlite3

from soar_agent.store.common import CHECKPOINT_ROLES, CHECKPOINT_STATUSES, _check, _dumps, run_relative


class CheckpointRecords:
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
            (run_id, self._stored_path(path), role, teacher_step, status, metrics_json, self._now()),
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
