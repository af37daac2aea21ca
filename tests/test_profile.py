"""`soar status RUN --profile`: where a run's wall clock went, from what the store records."""

import json
import subprocess
import sys

from soar_agent.store import Store
from soar_agent.profile import OTHER, PHASES, run_profile


def test_the_profile_puts_each_recorded_timing_in_its_phase_and_the_rest_in_other(tmp_path):
    db = tmp_path / "run" / "soar.db"
    db.parent.mkdir()
    with Store(db) as store:
        run = store.create_run(name="p", mode="soar", config={})
        store.log_event(run_id=run, level="info", kind="session", message="session started", data={})
        store.log_event(run_id=run, level="info", kind="teacher-sampled", message="s", data={"step": 1, "seconds": 30})
        store.add_training(run_id=run, teacher_step=1, dataset_id=None, student_index=0, reward=0.0,
                           accuracy_before=0.0, accuracy_after=0.0, checkpoint_path=None,
                           metrics={"sft_seconds": 40, "rl_seconds": 100, "score_seconds": 5, "save_seconds": 1})
        store.log_event(run_id=run, level="info", kind="pq-done", message="done", data={"seconds": 500})
        store.db.execute("UPDATE events SET ts = '2026-12-07T10:00:00+00:00' WHERE kind = 'session'")
        store.db.execute("UPDATE events SET ts = '2026-12-07T10:20:00+00:00' WHERE kind != 'session'")
        store.db.execute("UPDATE trainings SET created_at = '2026-12-07T10:10:00+00:00'")
        store.db.execute("UPDATE runs SET heartbeat_at = NULL")
        profile = run_profile(store, run)
    phases = profile["phases"]
    assert list(phases) == [*PHASES, OTHER]
    assert profile["total"] == 1200  # the session's wall clock: its start to the last row it stored
    assert (phases["teacher sampling"], phases["student supervised steps"], phases["student RL steps"]) == (30, 40, 100)
    assert (phases["student scoring"], phases["student checkpoints"], phases["final training"]) == (5, 1, 500)
    assert phases[OTHER] == 1200 - 676
    result = subprocess.run([sys.executable, "-m", "soar_agent.cli", "status", str(tmp_path / "run"), "--profile",
                             "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == profile
    text = subprocess.run([sys.executable, "-m", "soar_agent.cli", "status", str(tmp_path / "run"), "--profile"],
                          capture_output=True, text=True).stdout
    assert "student RL steps" in text and "8.3%" in text and "total (sessions)" in text and "20m 00s" in text
