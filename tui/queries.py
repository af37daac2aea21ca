"""Read-only queries behind the TUI: small, indexed and paged, so a store with millions of rollouts opens
instantly. Plain functions over a ``Store`` (no Textual here), used by the app's thread workers and by
``bench/tui_load.py``.

Rules that keep the UI path fast (see the indexes in ``soar_agent.store``):
* every list that can grow without bound is paged by keyset (``id > after`` / ``position > after``),
  never OFFSET and never "load all";
* nothing counts rollouts of a whole run; per-problem figures go through ``rollouts_problem``;
* JSON columns are read with ``json_extract`` in SQL when only one field is needed.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from soar_agent.store import Store, StoreError

PAGE = 100
ATTACHED_WITHIN_S = 30.0  # a heartbeat older than this means no agent is polling commands


def open_reader(db_path: str | Path) -> Store:
    """A read-only Store for the calling thread (one per worker: sqlite connections stay in their thread)."""
    return Store(db_path, readonly=True)


def _rows(store: Store, sql: str, params=()) -> list[dict]:
    return list(store.db.query(sql, params))


def _value(store: Store, sql: str, params=()):
    row = store.db.execute(sql, params).fetchone()
    return row[0] if row else None


def epoch(timestamp: str | None) -> float | None:
    return None if not timestamp else datetime.fromisoformat(timestamp).timestamp()


def pass_keys(summary: dict) -> list[str]:
    """``pass@k`` keys of a summary, by increasing k."""
    return sorted((k for k in summary if re.fullmatch(r"pass@\d+", k)), key=lambda k: int(k[5:]))


# ---------------------------------------------------------------------------------------------- overview


@dataclass(frozen=True)
class Overview:
    """Everything the header, the Overview tab and the change detection of the other tabs need, read in
    one short pass (a few indexed queries; no rollouts, no problems)."""

    run: dict
    now: float
    phase: str
    teacher_step: int  # last complete step (0 = none)
    in_progress_step: int | None
    elapsed_s: float
    remaining_s: float | None
    heartbeat_age_s: float | None
    tokens_per_second: float | None
    promotions: int
    last_step_seconds: float | None
    # the last complete step's (mean reward, its standard error or None, reward.metric or None)
    last_reward: tuple[float, float | None, str | None] | None = None
    teacher_reward: list[tuple[int, float]] = field(default_factory=list)  # (step, mean_reward)
    moving_average: list[tuple[int, float]] = field(default_factory=list)
    student_reward: list[tuple[int, float]] = field(default_factory=list)  # (step, mean reward_mean)
    hard_test: list[tuple[int, dict]] = field(default_factory=list)  # (teacher_step, {pass@k: value})
    pq: dict = field(default_factory=dict)  # the latest PQ student's hard-test summary (the model a run exports)
    # the newest sampled step's (step, share of the teacher's samples that made items): a teacher drifting into
    # text that does not parse shows here first
    kept: tuple[int, float] | None = None
    commands: list[dict] = field(default_factory=list)  # the latest commands, oldest first
    marks: dict = field(default_factory=dict)  # newest ids per table: tabs reload when theirs changes

    @property
    def attached(self) -> bool:
        return self.heartbeat_age_s is not None and self.heartbeat_age_s < ATTACHED_WITHIN_S


def overview(store: Store, run_id: int, now: float) -> Overview:
    run = _rows(store, "SELECT id, name, mode, status, created_at, heartbeat_at, model_path FROM runs WHERE id = ?",
                (run_id,))[0]
    last_kind = _value(store, "SELECT kind FROM events WHERE run_id = ? ORDER BY id DESC LIMIT 1", (run_id,))
    session = _value(store, "SELECT data_json FROM events WHERE run_id = ? AND kind = 'session' ORDER BY id DESC"
                            " LIMIT 1", (run_id,))
    deadline = json.loads(session).get("deadline") if session else None
    steps = _rows(store, "SELECT step, status, mean_reward, moving_average, json_extract(metrics_json, '$.seconds')"
                         " AS seconds, json_extract(metrics_json, '$.reward_stderr') AS reward_stderr,"
                         " json_extract(metrics_json, '$.reward_metric') AS reward_metric"
                         " FROM teacher_steps WHERE run_id = ? ORDER BY step", (run_id,))
    complete = [s for s in steps if s["status"] == "complete"]
    student = _rows(store, "SELECT teacher_step, avg(json_extract(metrics_json, '$.reward_mean')) AS reward"
                           " FROM trainings WHERE run_id = ? GROUP BY teacher_step ORDER BY teacher_step", (run_id,))
    tokens = _value(store, "SELECT avg(json_extract(metrics_json, '$.tokens_per_second')) FROM trainings"
                           " WHERE run_id = ? AND teacher_step = (SELECT max(teacher_step) FROM trainings"
                           " WHERE run_id = ?)", (run_id, run_id))
    hard = _rows(store, "SELECT teacher_step, summary_json FROM evaluations WHERE run_id = ? AND set_name = 'hard-test'"
                        " ORDER BY id", (run_id,))
    pq = _value(store, "SELECT summary_json FROM evaluations WHERE run_id = ? AND set_name = 'hard-test-pq'"
                       " ORDER BY id DESC LIMIT 1", (run_id,))
    sampled = _rows(store, "SELECT json_extract(data_json, '$.step') AS step, json_extract(data_json, '$.accepted')"
                           " AS accepted, json_extract(data_json, '$.sampled') AS sampled FROM events WHERE run_id = ?"
                           " AND kind = 'teacher-sampled' ORDER BY id DESC LIMIT 1", (run_id,))
    commands = _rows(store, "SELECT * FROM (SELECT id, command, args_json, created_at, acked_at, ack_message"
                            " FROM commands WHERE run_id = ? ORDER BY id DESC LIMIT 20) ORDER BY id", (run_id,))
    checkpoints = store.db.execute("SELECT max(id), count(*), sum(status = 'complete') FROM checkpoints"
                                   " WHERE run_id = ?", (run_id,)).fetchone()
    marks = {
        "datasets": _value(store, "SELECT max(id) FROM datasets WHERE run_id = ?", (run_id,)),
        "events": _value(store, "SELECT max(id) FROM events WHERE run_id = ?", (run_id,)),
        "evaluations": _value(store, "SELECT max(id) FROM evaluations WHERE run_id = ?", (run_id,)),
        "checkpoints": tuple(checkpoints),
        "steps": (len(complete), len(steps)),
    }
    created, heartbeat = epoch(run["created_at"]), epoch(run["heartbeat_at"])
    return Overview(
        run=run, now=now, phase=last_kind or "created",
        teacher_step=complete[-1]["step"] if complete else 0,
        in_progress_step=next((s["step"] for s in steps if s["status"] != "complete"), None),
        elapsed_s=max(0.0, now - created),
        remaining_s=max(0.0, deadline - now) if deadline and run["status"] == "running" else None,
        heartbeat_age_s=None if heartbeat is None else max(0.0, now - heartbeat),
        tokens_per_second=tokens,
        promotions=_value(store, "SELECT count(*) FROM datasets WHERE run_id = ? AND kind = 'promotion'", (run_id,)),
        last_step_seconds=complete[-1]["seconds"] if complete else None,
        last_reward=((complete[-1]["mean_reward"], complete[-1]["reward_stderr"], complete[-1]["reward_metric"])
                     if complete and complete[-1]["mean_reward"] is not None else None),
        teacher_reward=[(s["step"], s["mean_reward"]) for s in complete if s["mean_reward"] is not None],
        moving_average=[(s["step"], s["moving_average"]) for s in complete if s["moving_average"] is not None],
        student_reward=[(r["teacher_step"], r["reward"]) for r in student if r["reward"] is not None],
        hard_test=[(r["teacher_step"] or 0, {k: v for k, v in json.loads(r["summary_json"]).items()
                                             if k.startswith("pass@") or k == "greedy_acc"}) for r in hard],
        pq={k: v for k, v in json.loads(pq).items() if k.startswith("pass@")} if pq else {},
        kept=((sampled[0]["step"], sampled[0]["accepted"] / sampled[0]["sampled"])
              if sampled and sampled[0]["sampled"] and sampled[0]["accepted"] is not None else None),
        commands=[{**{k: v for k, v in c.items() if k != "args_json"}, "args": json.loads(c["args_json"])}
                  for c in commands],
        marks=marks,
    )


# --------------------------------------------------------------------------------------------- curricula


# A promotion dataset (promotion-step-N) is the promoted curriculum's questions: promoted by definition,
# though the store only flags the curriculum it came from.
PROMOTED = "(CASE WHEN d.kind = 'promotion' THEN 1 ELSE d.promoted END)"


def _dataset_filter(text: str) -> tuple[str, list]:
    """Filter words, all of which must match: ``promoted``, a step number (``12`` or ``step:12``), or any
    other text matched against the dataset name."""
    clauses, params = [], []
    for word in text.split():
        lowered = word.lower()
        number = re.fullmatch(r"(?:step:)?(\d+)", lowered)
        if lowered == "promoted":
            clauses.append(f"{PROMOTED} = 1")
        elif number:
            clauses.append("(d.teacher_step = ? OR d.name LIKE ?)")
            params += [int(number.group(1)), f"%{word}%"]
        else:
            clauses.append("d.name LIKE ?")
            params.append(f"%{word}%")
    return "".join(f" AND {c}" for c in clauses), params


def curricula_page(store: Store, run_id: int, kind: str = "curriculum", text: str = "",
                   before_id: int | None = None, limit: int = PAGE) -> list[dict]:
    """One page of datasets of a kind, newest first (keyset: ``id < before_id``), with their item counts."""
    where, params = _dataset_filter(text)
    if before_id is not None:
        where += " AND d.id < ?"
        params.append(before_id)
    return _rows(store,
                 f"SELECT d.id, d.name, d.kind, d.teacher_step, d.reward, {PROMOTED} AS promoted,"
                 " (SELECT count(*) FROM dataset_items i WHERE i.dataset_id = d.id) AS items"
                 f" FROM datasets d WHERE d.run_id = ? AND d.kind = ?{where} ORDER BY d.id DESC LIMIT ?",
                 [run_id, kind, *params, int(limit)])


def dataset(store: Store, dataset_id: int) -> dict | None:
    """A dataset with its item count and how many distinct problems those items are (the teacher repeats
    questions: a default run's short dataset has 2,880 items of 2,113 problems)."""
    rows = _rows(store, f"SELECT d.id, d.name, d.kind, d.teacher_step, d.reward, {PROMOTED} AS promoted, d.meta_json,"
                        " (SELECT count(*) FROM dataset_items i WHERE i.dataset_id = d.id) AS items,"
                        " (SELECT count(DISTINCT i.problem_id) FROM dataset_items i WHERE i.dataset_id = d.id)"
                        " AS distinct_problems FROM datasets d WHERE d.id = ?", (dataset_id,))
    return rows[0] if rows else None


def success_rates(store: Store, problem_ids: list[int]) -> dict[int, tuple[int, int]]:
    """Student success per problem: ``{problem_id: (correct, total)}`` over its student-phase rollouts."""
    if not problem_ids:
        return {}
    marks = ", ".join("?" * len(problem_ids))
    rows = store.db.execute(
        "SELECT problem_id, coalesce(sum(correct), 0), count(*) FROM rollouts"
        f" WHERE problem_id IN ({marks}) AND phase = 'student' GROUP BY problem_id", list(problem_ids)).fetchall()
    return {pid: (correct, total) for pid, correct, total in rows}


def dataset_problems_page(store: Store, dataset_id: int, text: str = "", after_position: int = -1,
                          limit: int = PAGE) -> list[dict]:
    """One page of a dataset's items in position order (keyset on position): each item's problem with its
    student success as ``correct``/``total`` and ``repeats``, how many items of the whole dataset hold that
    problem. A repeated question is one problem row, so ``id`` recurs: ``position`` identifies an item.
    ``text`` filters questions (substring, case-insensitive)."""
    where, params = "", []
    if text.strip():
        where, params = " AND p.question LIKE ?", [f"%{text.strip()}%"]
    rows = _rows(store,
                 "SELECT i.position, p.id, p.question, p.answer, p.answer_verified, p.level, p.source,"
                 " (SELECT count(*) FROM dataset_items r WHERE r.problem_id = i.problem_id"
                 " AND r.dataset_id = i.dataset_id) AS repeats"
                 " FROM dataset_items i JOIN problems p ON p.id = i.problem_id"
                 f" WHERE i.dataset_id = ? AND i.position > ?{where} ORDER BY i.position LIMIT ?",
                 [dataset_id, after_position, *params, int(limit)])
    rates = success_rates(store, [r["id"] for r in rows])
    for r in rows:
        r["correct"], r["total"] = rates.get(r["id"], (0, 0))
    return rows


def dataset_summary(store: Store, dataset_id: int) -> dict:
    """A dataset's figures for the side-by-side comparison (datasets are small: tens to hundreds of items)."""
    info = dataset(store, dataset_id) or {}
    problems = dataset_problems_page(store, dataset_id, limit=10_000)
    verified = [p["answer_verified"] for p in problems if p["answer_verified"] is not None]
    # A problem's figures already count the rollouts of all its repeats: add them once, not once per item.
    rates = {p["id"]: (p["correct"], p["total"]) for p in problems}
    correct, total = sum(c for c, _ in rates.values()), sum(t for _, t in rates.values())
    return {**info, "problems": problems,
            "verified_fraction": sum(verified) / len(verified) if verified else None,
            "student_success": correct / total if total else None,
            "mean_question_chars": sum(len(p["question"]) for p in problems) / len(problems) if problems else 0}


# ---------------------------------------------------------------------------------------------- problems


def problem(store: Store, problem_id: int) -> dict | None:
    """A problem with its provenance, the datasets holding it and its rollout counts per phase."""
    row = store.get_problem(problem_id)
    if row is None:
        return None
    row["datasets"] = _rows(store, "SELECT DISTINCT d.id, d.name, d.kind, d.teacher_step FROM dataset_items i"
                                   " JOIN datasets d ON d.id = i.dataset_id WHERE i.problem_id = ? ORDER BY d.id",
                            (problem_id,))
    row["phases"] = {phase: (correct or 0, total) for phase, correct, total in store.db.execute(
        "SELECT phase, sum(correct), count(*) FROM rollouts WHERE problem_id = ? GROUP BY phase", (problem_id,))}
    return row


def rollouts_page(store: Store, problem_id: int, phase: str | None = None, after_id: int = 0,
                  limit: int = PAGE) -> list[dict]:
    """One page of a problem's rollouts (keyset on id through ``rollouts_problem``), with a preview of the
    completion; the full text comes from ``completion``."""
    where, params = "", []
    if phase is not None:
        where, params = " AND phase = ?", [phase]
    return _rows(store,
                 "SELECT id, phase, ref, reward, correct, created_at, length(completion) AS chars,"
                 " substr(replace(completion, char(10), ' '), 1, 160) AS preview FROM rollouts"
                 f" WHERE problem_id = ? AND id > ?{where} ORDER BY id LIMIT ?",
                 [problem_id, after_id, *params, int(limit)])


def completion(store: Store, rollout_id: int) -> str:
    return _value(store, "SELECT completion FROM rollouts WHERE id = ?", (rollout_id,)) or ""


# ------------------------------------------------------------------------------- evaluations, checkpoints


def evaluations(store: Store, run_id: int) -> dict[str, list[dict]]:
    """Evaluations grouped by set name (hard-test, easy, hard-test-pq, ...), oldest first; summaries without
    the per-level breakdown."""
    out: dict[str, list[dict]] = {}
    for r in _rows(store, "SELECT id, set_name, teacher_step, checkpoint_id, samples_per_problem, summary_json,"
                          " created_at FROM evaluations WHERE run_id = ? ORDER BY id", (run_id,)):
        summary = json.loads(r.pop("summary_json"))
        summary.pop("levels", None)
        out.setdefault(r["set_name"], []).append({**r, "summary": summary})
    return out


def checkpoints(store: Store, run_id: int) -> list[dict]:
    """Checkpoints newest first, each with its evaluations (``evaluations`` list)."""
    rows = _rows(store, "SELECT id, path, role, teacher_step, status, created_at FROM checkpoints WHERE run_id = ?"
                        " ORDER BY id DESC", (run_id,))
    by_checkpoint: dict[int, list[dict]] = {}
    for set_rows in evaluations(store, run_id).values():
        for e in set_rows:
            if e["checkpoint_id"] is not None:
                by_checkpoint.setdefault(e["checkpoint_id"], []).append(e)
    for r in rows:
        r["evaluations"] = by_checkpoint.get(r["id"], [])
    return rows


# ------------------------------------------------------------------------------------------------- runs


def find_runs(root: str | Path = "runs") -> list[dict]:
    """``root/*/soar.db`` with a one-line summary of each (latest run); unreadable stores carry ``error``."""
    found = []
    for db in sorted(Path(root).glob("*/soar.db")):
        entry = {"db": db, "run_dir": db.parent, "name": db.parent.name}
        try:
            with open_reader(db) as store:
                run = store.latest_run()
                if run is None:
                    entry["error"] = "no run yet"
                else:
                    entry.update(name=run["name"], mode=run["mode"], status=run["status"], created_at=run["created_at"],
                                 heartbeat_at=run.get("heartbeat_at"),
                                 steps=_value(store, "SELECT count(*) FROM teacher_steps WHERE run_id = ?"
                                                     " AND status = 'complete'", (run["id"],)))
        except (StoreError, sqlite3.Error, OSError) as error:  # listed with its reason, not fatal
            entry["error"] = str(error)
        found.append(entry)
    return found
