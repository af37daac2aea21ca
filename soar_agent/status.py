"""`soar status`: a run's state read from its store alone (no torch, read-only; safe on a live run)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from soar_agent.store import Store


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()


@dataclass
class TimeBudget:
    """The time budget a run's last session ran under (--hours, --until or budget.hours), which `soar run`
    on the run without a budget of its own continues: a crash, a reboot or a stop does not end a night's budget,
    and the time the run was down does not count against it."""
    seconds: float  # the whole budget
    used: float  # its sessions' time: each from its start to its last stored write (Store.last_session)
    deadline: float  # the last session's (epoch seconds)
    until: bool  # the deadline is --until's clock time, which a resume keeps
    ended: bool  # the last session stopped at the budget's end (and did its final training, or was stopped in it)

    def left(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        return max(0.0, (self.deadline - now) if self.until else self.seconds - self.used)


def time_budget(store: Store, run_id: int) -> TimeBudget | None:
    """The run's time budget as its last session left it; None when that session had none (or before the
    first). A session stored before sessions recorded what they used counts as a budget of its own."""
    session = store.last_session(run_id)
    if session is None:
        return None
    data, started = session["data"], _epoch(session["ts"])
    deadline = data.get("deadline")
    # a deadline stored before --hours was bounded may be huge or inf (stored as Infinity): no deadline
    if not isinstance(deadline, (int, float)) or not 0 < deadline < 1e12:
        return None
    used_before = float(data.get("used_s") or 0.0)
    used = used_before + max(0.0, _epoch(session["last_write"]) - started)
    # a session's stop is its last event but for an export or a few warnings after it
    stops = [e for e in store.events(run_id, limit=200) if e["kind"] == "stopped" and e["id"] > session["id"]]
    ended = any(e["message"].startswith("time budget reached") for e in stops)
    return TimeBudget(seconds=deadline - started + used_before, used=used,
                      deadline=deadline, until=bool(data.get("until")), ended=ended)


STALE_S = 900  # a running run that stored nothing for this long (heartbeats included) was likely killed


def _silent(status: dict) -> bool:
    """A run marked running that has stored nothing for STALE_S: its process was killed or the machine went
    down (the agent's heartbeat comes every few seconds inside a unit of work)."""
    return status["status"] == "running" and (status["last_seen_s"] or 0) > STALE_S


def run_status(run_dir: Path) -> dict:
    db = Path(run_dir) / "soar.db"
    if not db.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no soar.db)")
    with Store(db, readonly=True) as store:
        run = store.require_run()  # a store whose WAL was lost opens fine but holds no run
        steps = store.teacher_steps(run["id"])
        complete = [s for s in steps if s["status"] == "complete"]
        # the share of the teacher's samples that made items, per step: a teacher drifting into text that
        # does not parse shows here first (teacher.reject_penalty)
        sampled = [e["data"] for e in store.events(run["id"], limit=10_000)
                   if e["kind"] == "teacher-sampled" and "step" in e["data"]]
        kept = {d["step"]: d["accepted"] / d["sampled"] for d in sampled if d.get("sampled")}
        # the share of the teacher's answers (its worked solutions' under teacher labels) the solver confirmed
        right = {d["step"]: d["teacher_right"] / d["teacher_checked"] for d in sampled if d.get("teacher_checked")}
        last_event = store.events(run["id"], limit=1)
        evaluations = store.evaluations(run["id"], set_name="hard-test")
        pq = store.evaluations(run["id"], set_name="hard-test-pq")
        status = {
            "run": run["name"], "mode": run["mode"], "status": run["status"],
            "phase": last_event[-1]["kind"] if last_event else "created",
            "teacher_step": complete[-1]["step"] if complete else 0,
            "in_progress_step": next((s["step"] for s in steps if s["status"] != "complete"), None),
            "promotions": len(store.datasets(run["id"], kind="promotion")),
            "latest_reward_moving_average": complete[-1]["moving_average"] if complete else None,
            "reward_metric": run["config"].get("reward", {}).get("metric", "greedy"),
            "hard_test": ({k: round(v, 4) for k, v in evaluations[-1]["summary"].items() if k.startswith("pass@")}
                          if evaluations else {}),
            "hard_test_step": evaluations[-1]["teacher_step"] if evaluations else None,
            # the PQ student (the run's final training or soar eval-pq): the model `soar run` exports
            "pq": ({k: round(v, 4) for k, v in pq[-1]["summary"].items()
                    if k.startswith("pass@") or k in ("steps", "questions")} if pq else {}),
            "elapsed_s": round(time.time() - _epoch(run["created_at"])),
            "remaining_s": None,
            # each complete step's grounded reward with its paired standard error (reward.pooled_reward)
            "steps": [{"step": s["step"], "reward": s["mean_reward"], "reward_stderr": s["metrics"].get("reward_stderr"),
                       "moving_average": s["moving_average"], "promoted": s["promoted_dataset_id"] is not None,
                       "kept": kept.get(s["step"]), "teacher_right": right.get(s["step"]),
                       "students_updated": s["metrics"].get("students_updated"),
                       "students": s["metrics"].get("students")}
                      for s in complete],
        }
        parts = store.checkpoints(run["id"], role="pq-chain", status="complete")  # a final training under way
        status["pq_chain"] = ({"steps": parts[-1]["metrics"].get("steps"), "checkpoint": parts[-1]["id"]}
                              if parts else None)
        session = store.last_session(run["id"])
        status["last_seen_s"] = round(time.time() - _epoch(session["last_write"])) if session else None
        budget = time_budget(store, run["id"])
        if budget and run["status"] == "running" and not _silent(status):
            status["remaining_s"] = max(0, round(budget.deadline - time.time()))
        elif budget and not budget.ended:  # what `soar run` on the run continues with
            status["remaining_s"] = round(budget.left())
        return status


# The last event's kind, in words a person reads without knowing the agent's internals.
_PHASE_WORDS = {"start": "created",
                "teacher-sampled": "training students on the teacher's problems", "stopped": "stopped",
                "teacher-update": "updating the teacher on its datasets' rewards",
                "chain-step": "training the baseline (no teacher in this mode)",
                "export": "exported", "teacher-garbage": "teacher wrote no usable problems; retrying",
                "student-collapse": "training students", "hard-set-repeats": "starting",
                "pq-training": "final training: the PQ student on the rewarded questions",
                "pq-done": "final training done", "pq-skipped": "no time left for the final training"}


def _session_phase(status: dict) -> str:
    """What a session that has stored no event since it started is doing, from what the store holds: a new
    run evaluates the base model (minutes); a resumed one redoes the unit a stop cut short (a hard-only or
    curated step stores its event only when it ends; the final training logs its own at once)."""
    if status["hard_test_step"] is None:
        return "session started: evaluating the base model on hard-test (step 0)"
    if status.get("pq_chain") and not status.get("pq"):
        return "resumed: the final training, from its last kept part"
    if status["mode"] != "soar":
        return "resumed: training the baseline (no teacher in this mode)"
    return f"resumed: teacher step {status['in_progress_step'] or status['teacher_step'] + 1}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes = int(seconds) // 60
    if minutes >= 48 * 60:
        return f"{minutes // 1440}d {minutes // 60 % 24:02d}h"
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m {int(seconds) % 60:02d}s"


def format_status(status: dict, last_steps: int = 10, width: int = 100) -> str:
    """The human `soar status`: a few plain lines and a table of the latest steps' rewards (rich, no colour
    when captured; `--json` prints the dict itself)."""
    from io import StringIO

    from rich.console import Console

    phase = (_session_phase(status) if status["phase"] == "session"
             else _PHASE_WORDS.get(status["phase"], status["phase"].replace("-", " ")))
    running = f"step {status['in_progress_step']} in progress" if status["in_progress_step"] else "none in progress"
    average = status.get("latest_reward_moving_average")
    state = f"running: {phase}" if status["status"] == "running" else status["status"]
    if _silent(status):
        state = (f"marked running, but nothing stored for {_duration(status['last_seen_s'])}: killed or crashed?"
                 " (`soar run --run-dir DIR` continues it)")
    lines = [f"run {status['run']} ({status['mode']}): {state}",
             f"time: {_duration(status['elapsed_s'])} elapsed, {_duration(status['remaining_s'])} left"
             + ("" if (status["status"] == "running" and not _silent(status)) or status["remaining_s"] is None
                else " for a resume"),
             f"teacher steps: {status['teacher_step']} complete, {running}; promotions: {status['promotions']}",
             _hard_test_line(status),
             f"teacher reward: {status['reward_metric']}, moving average "
             + ("-" if average is None else f"{average:+.4f}")]
    out = StringIO()
    console = Console(file=out, width=width, color_system=None, highlight=False)
    for line in lines:
        console.print(line)
    steps = status.get("steps") or []
    if steps:
        console.print(_steps_table(steps, last_steps))
    return "\n".join(line.rstrip() for line in out.getvalue().rstrip("\n").splitlines())


def _hard_test_line(status: dict) -> str:
    """The latest hard-test figures, the PQ student's when there is one, and where a final training stands."""
    hard = status.get("hard_test") or {}
    shown = [k for k in ("pass@1", "pass@8", "pass@32") if k in hard] or list(hard)[:3]
    hard_line = (f"hard-test after step {status['hard_test_step']}: "
                 + ", ".join(f"{k} {hard[k]:.1%}" for k in shown) if hard else "hard-test: not evaluated yet")
    pq = status.get("pq") or {}
    if pq:
        trained = [f"{pq['steps']:.0f} steps"] if "steps" in pq else []
        trained += [f"{pq['questions']:,.0f} questions"] if "questions" in pq else []
        hard_line += ("; PQ student" + (f" ({', '.join(trained)})" if trained else "") + ": "
                      + ", ".join(f"{k} {pq[k]:.1%}" for k in ("pass@1", "pass@8", "pass@32") if k in pq))
    chain = status.get("pq_chain")
    if chain:
        hard_line += (f"; final training: {chain['steps']} steps so far" if status["status"] == "running"
                      and not _silent(status) else f"; final training interrupted after {chain['steps']} steps"
                      f" (checkpoint {chain['checkpoint']}; `soar run --run-dir DIR` goes on from there)")
    return hard_line


def _steps_table(steps: list[dict], last_steps: int):
    """The rich table of the last `last_steps` teacher steps' rewards."""
    from rich.table import Table

    shown_steps = steps[-last_steps:]
    title = f"last {len(shown_steps)} of {len(steps)} steps" if len(steps) > len(shown_steps) else None
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for column in ("step", "reward ± stderr", "moving average", "samples kept", "teacher right", "promoted"):
        table.add_column(column, justify="right")
    for s in shown_steps:
        reward = "-" if s["reward"] is None else f"{s['reward']:+.4f}"
        stderr = "" if s["reward_stderr"] is None else f" ± {s['reward_stderr']:.4f}"
        table.add_row(str(s["step"]), reward + stderr,
                      "-" if s["moving_average"] is None else f"{s['moving_average']:+.4f}",
                      "-" if s.get("kept") is None else f"{s['kept']:.0%}",
                      "-" if s.get("teacher_right") is None else f"{s['teacher_right']:.0%}",
                      ", ".join(note for note, shown in (
                          ("promoted", s["promoted"]),
                          ("no student updated", s.get("students") and s.get("students_updated") == 0)) if shown))
    return table
