"""The agent loop's records: teacher steps, the student trainings of each, evaluations with their per-problem
results, and rollouts (every sampled completion). A unit of work of the loop (a step's curriculum, one
training, closing a step) is one transaction: a crash leaves it either done or not started, and resume
redoes only what is missing.

``LoopRecords`` is a part of ``Store`` (soar_agent/store/__init__.py), which provides the transactions
(``_write``), the reads (``_rows``, ``_row``), the clock (``_now``) and the problem, dataset and checkpoint
writers (``ProblemRecords``, ``CheckpointRecords``) it uses."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from soar_agent.store.common import ROLLOUT_PHASES, _check, _decode, _dumps, _flag, _int_keys
from soar_agent.store.problems import _insert_problem_rows

_INSERT_ROLLOUT = ("INSERT INTO rollouts (run_id, problem_id, phase, ref, completion, reward, correct, created_at)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


class LoopRecords:
    # -- teacher steps and trainings ----------------------------------------------------------------

    def add_curriculum(self, *, run_id: int, teacher_step: int, datasets: Sequence[dict]) -> list[int]:
        """The teacher's datasets of one step with their problems, atomically. Each dict: name, problems,
        provenance (list), answer_verified (list), meta. Returns the dataset ids."""
        prepared = [(d, self._problem_rows(run_id, d["problems"], "teacher", None, d.get("provenance"),
                                           d.get("answer_verified"), None)) for d in datasets]

        def insert(conn: sqlite3.Connection) -> list[int]:
            conn.execute("INSERT OR IGNORE INTO teacher_steps (run_id, step, status, started_at) VALUES (?, ?, ?, ?)",
                         (run_id, teacher_step, "sampled", self._now()))
            conn.execute("UPDATE teacher_steps SET status = 'sampled' WHERE run_id = ? AND step = ?",
                         (run_id, teacher_step))
            return [self._insert_dataset(conn, run_id, d["name"], "curriculum", _insert_problem_rows(conn, rows),
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
        values = self._rollout_values(run_id, rollouts)

        def insert(conn: sqlite3.Connection) -> int:
            conn.executemany(_INSERT_ROLLOUT, values)
            return conn.execute(
                "INSERT INTO trainings (run_id, teacher_step, dataset_id, student_index, reward, accuracy_before,"
                " accuracy_after, checkpoint_path, metrics_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, teacher_step, dataset_id, student_index, reward, accuracy_before, accuracy_after,
                 self._stored_path(checkpoint_path), metrics_json, self._now())).lastrowid

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
                self._insert_dataset(conn, run_id, f"promotion-step-{step}", "promotion", ids, step,
                                     {"from_dataset": promoted_dataset_id})
            for checkpoint in checkpoints:
                conn.execute(
                    "INSERT INTO checkpoints (run_id, path, role, teacher_step, status, metrics_json, created_at)"
                    " VALUES (?, ?, ?, ?, 'complete', ?, ?)",
                    (run_id, self._stored_path(checkpoint["path"]), checkpoint["role"], step,
                     _dumps(checkpoint.get("metrics") or {}, "metrics"), self._now()))
            conn.execute(
                "INSERT INTO teacher_steps (run_id, step, status, started_at) VALUES (?, ?, 'complete', ?)"
                " ON CONFLICT (run_id, step) DO NOTHING", (run_id, step, self._now()))
            conn.execute(
                "UPDATE teacher_steps SET status = 'complete', mean_reward = ?, moving_average = ?,"
                " promoted_dataset_id = ?, metrics_json = ?, finished_at = ? WHERE run_id = ? AND step = ?",
                (mean_reward, moving_average, promoted_dataset_id, metrics_json, self._now(), run_id, step))

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
                 summary_json, self._now()),
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

    # -- rollouts -----------------------------------------------------------------------------------

    def add_rollouts(self, *, run_id: int, rows: Iterable[dict]) -> int:
        """Append rollouts in one transaction; returns how many. Each row: ``phase, completion`` and optional
        ``problem_id, ref, reward, correct``."""
        values = self._rollout_values(run_id, rows)
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

    def _rollout_values(self, run_id: int, rows: Iterable[dict]) -> list[tuple]:
        """Encode rollouts before any transaction opens: bad input fails fast, never holding the lock."""
        now = self._now()
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
