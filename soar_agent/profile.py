"""Where a run's wall clock went (`soar status RUN --profile`, the TUI's overview): each phase's seconds, read
from what the store records (evaluations' and trainings' timings, the teacher steps' metrics, the events),
with the sessions' wall clock as the total and what no phase accounts for as "other / waiting".

A phase whose timing a run did not record (a run stored before it was) counts as zero, and its time lands
in "other / waiting": the table never invents a figure.
"""

from __future__ import annotations

from soar_agent.status import _epoch
from soar_agent.store import Store

PHASES = ("base evaluation", "teacher sampling", "baseline scoring", "student supervised steps",
          "student RL steps", "student scoring", "student checkpoints", "teacher update", "periodic evaluations",
          "final training", "final evaluation")
OTHER = "other / waiting"


def session_seconds(store: Store, run_id: int, events: list[dict]) -> float:
    """The wall clock of the run's sessions (`events`: the run's, oldest first): each from its `session`
    event to the last row it stored (the last session's to the run's latest write, heartbeats included), so
    the time the run was down is not counted."""
    starts = [i for i, event in enumerate(events) if event["kind"] == "session"]
    total = 0.0
    for n, index in enumerate(starts):
        if n + 1 < len(starts):
            end = events[starts[n + 1] - 1]["ts"]
        else:
            session = store.last_session(run_id)
            end = session["last_write"] if session else events[-1]["ts"]
        total += max(0.0, _epoch(end) - _epoch(events[index]["ts"]))
    return total


def run_profile(store: Store, run_id: int) -> dict:
    """{"phases": {phase: seconds} (PHASES, then OTHER), "total": the sessions' wall clock}."""
    seconds = dict.fromkeys(PHASES, 0.0)
    for evaluation in store.evaluations(run_id):
        summary = evaluation.get("summary") or {}
        # a cached evaluation (the base model's, from an earlier run) keeps the seconds it took then: none here
        spent = 0.0 if summary.get("cached") else float(summary.get("seconds") or 0.0)
        if evaluation["set_name"] == "hard-test-pq":
            seconds["final evaluation"] += spent
        elif evaluation["set_name"] == "hard-test":
            seconds["base evaluation" if evaluation["teacher_step"] == 0 else "periodic evaluations"] += spent
    for training in store.trainings(run_id):
        metrics = training.get("metrics") or {}
        seconds["student supervised steps"] += float(metrics.get("sft_seconds") or 0.0)
        seconds["student RL steps"] += float(metrics.get("rl_seconds") or 0.0)
        seconds["student scoring"] += float(metrics.get("score_seconds") or 0.0)
        seconds["student checkpoints"] += float(metrics.get("save_seconds") or 0.0)
    for step in store.teacher_steps(run_id):
        metrics = step.get("metrics") or {}
        seconds["baseline scoring"] += float(metrics.get("baseline_scoring_seconds") or 0.0)
        seconds["teacher update"] += float((metrics.get("teacher_update") or {}).get("seconds") or 0.0)
    events = store.events(run_id, limit=1_000_000)
    for event in events:
        data = event.get("data") or {}
        if event["kind"] == "teacher-sampled":
            seconds["teacher sampling"] += float(data.get("seconds") or 0.0)
        elif event["kind"] == "pq-done":  # the final training with its evaluation
            seconds["final training"] += float(data.get("seconds") or 0.0)
    # pq-done counts the final training's evaluation too: it has its own row
    seconds["final training"] = max(0.0, seconds["final training"] - seconds["final evaluation"])
    total = session_seconds(store, run_id, events)
    seconds[OTHER] = max(0.0, total - sum(seconds.values()))
    return {"phases": seconds, "total": max(total, sum(seconds.values()))}


def format_profile(profile: dict) -> str:
    total = profile["total"] or 1.0
    lines = [f"{'phase':26s} {'time':>10s} {'share':>6s}"]
    for phase, spent in profile["phases"].items():
        lines.append(f"{phase:26s} {_duration(spent):>10s} {spent / total:>6.1%}")
    lines.append(f"{'total (sessions)':26s} {_duration(profile['total']):>10s}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"
