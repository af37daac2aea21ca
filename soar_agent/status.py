"""`soar status`: a run's state read from its store alone (no torch, read-only; safe on a live run)."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from soar_agent.store import Store


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()


def run_status(run_dir: Path) -> dict:
    db = Path(run_dir) / "soar.db"
    if not db.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no soar.db)")
    with Store(db, readonly=True) as store:
        run = store.require_run()  # a store whose WAL was lost opens fine but holds no run
        steps = store.teacher_steps(run["id"])
        complete = [s for s in steps if s["status"] == "complete"]
        sessions = [e for e in store.events(run["id"], limit=10_000) if e["kind"] == "session"]
        last_event = store.events(run["id"], limit=1)
        evaluations = store.evaluations(run["id"], set_name="hard-test")
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
            "elapsed_s": round(time.time() - _epoch(run["created_at"])),
            "remaining_s": None,
            # each complete step's grounded reward with its paired standard error (reward.pooled_reward)
            "steps": [{"step": s["step"], "reward": s["mean_reward"], "reward_stderr": s["metrics"].get("reward_stderr"),
                       "moving_average": s["moving_average"], "promoted": s["promoted_dataset_id"] is not None}
                      for s in complete],
        }
        deadline = sessions[-1]["data"].get("deadline") if sessions else None
        if deadline and run["status"] == "running":
            status["remaining_s"] = max(0, round(deadline - time.time()))
        return status


def format_status(status: dict, last_steps: int = 10) -> str:
    """The human `soar status`: one `key: value` line per figure, then the latest steps' rewards."""
    lines = [f"{key:>18}: {value}" for key, value in status.items() if key != "steps"]
    steps = status.get("steps") or []
    if steps:
        lines.append(f"{'steps':>18}: reward ± stderr ({status.get('reward_metric')}), moving average"
                     + (f" (last {last_steps} of {len(steps)})" if len(steps) > last_steps else ""))
        for s in steps[-last_steps:]:
            reward = "-" if s["reward"] is None else f"{s['reward']:+.4f}"
            stderr = "" if s["reward_stderr"] is None else f" ± {s['reward_stderr']:.4f}"
            average = "" if s["moving_average"] is None else f", {s['moving_average']:+.4f}"
            lines.append(f"{s['step']:>18}: {reward}{stderr}{average}{'  promoted' if s['promoted'] else ''}")
    return "\n".join(lines)
