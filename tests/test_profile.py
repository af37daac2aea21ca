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


def test_a_cached_base_evaluation_took_no_time_in_this_run(tmp_path):
    """The base model's evaluation taken from the cache keeps the seconds it took in the run that measured it:
    the profile counts none of them (a measured one counts)."""
    with Store(tmp_path / "soar.db") as store:
        run = store.create_run(name="p", mode="soar", config={})
        store.log_event(run_id=run, level="info", kind="session", message="session started", data={})
        for cached, step in ((True, 0), (False, 1)):
            store.add_evaluation(run_id=run, set_name="hard-test", results=[], samples_per_problem=1, temperature=1.0,
                                 teacher_step=step, checkpoint_id=None,
                                 summary={"seconds": 1000.0, **({"cached": True} if cached else {})})
        phases = run_profile(store, run)["phases"]
    assert (phases["base evaluation"], phases["periodic evaluations"]) == (0.0, 1000.0)


def test_a_real_step_records_every_phase_the_profile_reads(tmp_path, random_tiny_dir, monkeypatch):
    import random

    import soar_agent.teacher as teacher
    from soar_agent.agent import Agent, Budget
    from soar_agent.config import load_config
    from soar_agent.mining import write_jsonl
    from soar_agent.tasks import arith, generate_problems
    from tests.test_outer_loop import TINY, fixed_items

    rng = random.Random(5)
    write_jsonl(generate_problems(arith, [6] * 8, rng), tmp_path / "train.jsonl")
    write_jsonl(generate_problems(arith, [6] * 4, rng), tmp_path / "test.jsonl")
    monkeypatch.setattr(teacher, "sample_items", fixed_items)
    config = load_config(None, TINY + [f"domain.hard_train={json.dumps(str(tmp_path / 'train.jsonl'))}",
                                       f"domain.hard_test={json.dumps(str(tmp_path / 'test.jsonl'))}",
                                       f"model.path={json.dumps(str(random_tiny_dir))}"])
    agent = Agent.open(config, tmp_path / "run", log=lambda m: None)
    agent.run(Budget(max_teacher_steps=1))
    phases = run_profile(agent.store, agent.run_id)["phases"]
    for phase in ("base evaluation", "teacher sampling", "baseline scoring", "student scoring", "student checkpoints",
                  "teacher update"):
        assert phases[phase] > 0, phase
