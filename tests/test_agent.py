"""The SOAR loop end to end on tiny models: one full teacher step, garbage teachers, SIGKILL + resume,
export round trip."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from soar_agent import cli
from soar_agent.agent import Agent, Budget
from soar_agent.config import load_config
from soar_agent.models import EMBEDDED_MODEL_DIR
from soar_agent.store import Store
from soar_agent.tasks import arith


needs_embedded = pytest.mark.skipif(not (EMBEDDED_MODEL_DIR / "config.json").is_file(),
                                    reason="embedded model not built")

FAST = ["teacher.datasets_per_step=2", "teacher.items_per_dataset=4", "teacher.max_new_tokens=60",
        "student.students_per_dataset=1", "student.steps=2", "student.batch_prompts=2", "student.group_size=4",
        "student.max_new_tokens=120", "reward.questions=6", "eval.samples=2", "eval.every_teacher_steps=1",
        "eval.max_new_tokens=120", "promotion.tau=-1.0",
        "budget.pq_steps=0"]  # the final training has its own tests (test_outer_loop.py)


def counts(db: Path) -> dict:
    with Store(db, readonly=True) as store:
        run = store.latest_run()["id"]
        return {table: store.count(table, run) for table in
                ("problems", "datasets", "trainings", "teacher_steps", "checkpoints", "evaluations")}


@needs_embedded
def test_one_complete_teacher_step(tmp_path, hard_files):
    config = load_config(None, FAST + hard_files)
    agent = Agent.open(config, tmp_path / "run", log=lambda m: None)
    progress: dict[str, list[tuple[int, int]]] = {}
    agent.progress = lambda label, done, total: progress.setdefault(label, []).append((done, total))
    reason = agent.run(Budget(max_teacher_steps=1))  # how long it takes is for benchmarks, not a test
    assert "1 teacher steps" in reason
    store, run = agent.store, agent.run_id
    (step,) = store.teacher_steps(run)
    assert step["status"] == "complete" and step["mean_reward"] is not None
    curricula = store.datasets(run, kind="curriculum")
    assert len(curricula) == 2 and all(d["reward"] is not None for d in curricula)
    assert all(len(store.dataset_problems(d["id"])) == 4 for d in curricula)
    assert len(store.trainings(run, 1)) == 2
    update = step["metrics"]["teacher_update"]  # the 8 items, and the rejected samples (teacher.reject_penalty)
    assert update["items"] == 8 + update["rejected_items"] and 0 <= update["rejected_items"] <= 8
    sampled = next(e["data"] for e in store.events(run, limit=100) if e["kind"] == "teacher-sampled")
    assert update["rejected_items"] == (min(8, sum(sampled["rejected"].values())) if any(update["advantages"]) else 0)
    # tau = -1 forces a promotion: a new baseline checkpoint and the dataset in the promotion questions
    assert step["promoted_dataset_id"] is not None
    assert len(store.datasets(run, kind="promotion")) == 1
    (promoted,) = [d for d in curricula if d["id"] == step["promoted_dataset_id"]]  # named as the TUI's Curricula do
    assert [e["message"] for e in store.events(run, limit=100) if e["kind"] == "promotion"] == [
        f"step 1: {promoted['name']} promoted"]
    assert [c["role"] for c in store.checkpoints(run, status="complete")] == ["teacher", "baseline"]
    assert {e["set_name"] for e in store.evaluations(run)} == {"hard-test", "easy"}
    assert len(store.evaluations(run, set_name="hard-test")) == 2  # base (step 0) and after step 1
    assert not (tmp_path / "run" / "checkpoints" / "step-1").exists()  # students' weights cleaned up
    # every long phase reported its progress, from 0 up to its total (the CLI draws bars with ETA from it)
    phases = {label.split(": ", 1)[1].split(" (")[0] for label in progress}
    assert {"hard-test evaluation", "easy evaluation", "teacher writing problems", "student 0-0", "student 1-0"} <= phases
    for label, reports in progress.items():
        assert reports[0][0] == 0 and reports[-1][0] == reports[-1][1], (label, reports)
        assert [done for done, _ in reports] == sorted(done for done, _ in reports), label


def test_garbage_teacher_is_logged_and_stops_cleanly(tmp_path, hard_files, random_tiny_dir):
    config = load_config(None, FAST + hard_files + [f"model.path={json.dumps(str(random_tiny_dir))}",
                                                    "teacher.max_sampling_rounds=1", "eval.samples=1",
                                                    "eval.max_new_tokens=8"])
    agent = Agent.open(config, tmp_path / "run", log=lambda m: None)
    reason = agent.run(Budget(max_teacher_steps=5))
    assert "garbage" in reason
    events = agent.store.events(agent.run_id, level="warning")
    assert sum(e["kind"] == "teacher-garbage" for e in events) == 3
    assert any(e["kind"] == "stopped" and e["level"] == "error" for e in events)
    assert agent.store.count("problems", agent.run_id) >= 12  # the hard sets are intact


def soar_process(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "soar_agent.cli", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@needs_embedded
def test_sigkill_mid_step_then_resume_loses_and_duplicates_nothing(tmp_path, hard_files, monkeypatch):
    run_dir = tmp_path / "run"
    sets = [x for pair in zip(["--set"] * len(FAST + hard_files), FAST + hard_files) for x in pair]
    sets += ["--set", "student.students_per_dataset=2"]
    process = soar_process("run", "--run-dir", run_dir, "--max-teacher-steps", "2", "--no-export", *sets,
                           cwd=tmp_path)
    deadline = time.time() + 1800  # a hang guard, generous: a loaded machine is several times slower
    db = run_dir / "soar.db"
    # kill once the first step has sampled its datasets and finished at least one student
    while time.time() < deadline:
        if db.is_file():
            try:
                if counts(db)["trainings"] >= 1:
                    break
            except Exception:
                pass
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = counts(db)
    assert before["teacher_steps"] == 1 and before["trainings"] >= 1
    with Store(db, readonly=True) as store:
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        run = store.latest_run()["id"]
        datasets_before = [d["id"] for d in store.datasets(run, kind="curriculum")]
        trainings_before = [(t["dataset_id"], t["student_index"], t["reward"]) for t in store.trainings(run)]

    resumed = soar_process("run", "--run-dir", run_dir, "--max-teacher-steps", "2", "--no-export", cwd=tmp_path)
    output, _ = resumed.communicate(timeout=1800)
    assert resumed.returncode == 0, output
    with Store(db, readonly=True) as store:
        run = store.latest_run()["id"]
        steps = store.teacher_steps(run)
        assert [s["step"] for s in steps] == [1, 2] and all(s["status"] == "complete" for s in steps)
        step1 = [d["id"] for d in store.datasets(run, kind="curriculum") if d["teacher_step"] == 1]
        assert step1 == datasets_before  # the sampled curriculum was reused, not resampled
        trainings = store.trainings(run)
        keys = [(t["teacher_step"], t["dataset_id"], t["student_index"]) for t in trainings]
        assert len(keys) == len(set(keys)) == 8  # 2 steps x 2 datasets x 2 students, none twice
        kept = [(t["dataset_id"], t["student_index"], t["reward"]) for t in trainings][:len(trainings_before)]
        assert kept == trainings_before
        assert any(e["kind"] == "resume" for e in store.events(run, limit=1000))
        assert store.datasets(run, kind="promotion")  # tau -1: promoted, so the run names the long-trained student
    after = output.split("eval-pq", 1)[-1]  # the closing line names eval-pq, then export --checkpoint pq
    assert "eval-pq" in output and "--checkpoint" in after and "pq" in after.split("--checkpoint", 1)[-1], output

    # the same command on the finished run says why it does nothing; --more-steps N adds N steps
    again = soar_process("run", "--run-dir", run_dir, "--max-teacher-steps", "2", "--no-export", cwd=tmp_path)
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 2 and "already has 2 teacher steps" in output and "--more-steps" in output, output
    budgets = []
    monkeypatch.setattr(Agent, "run", lambda agent, budget: budgets.append(budget) or "stopped by the test")
    assert cli.main(["run", "--run-dir", str(run_dir), "--more-steps", "3", "--no-export"]) == 0
    assert budgets[0].max_teacher_steps == 5
    assert cli.main(["run", "--run-dir", str(run_dir), "--more-steps", "0", "--no-export"]) == 2


@needs_embedded
def test_sigkill_then_resume_goes_on_with_the_rest_of_the_time_budget(tmp_path, hard_files, capsys):
    """`soar run --hours H` killed mid-step, down a while, then `soar run --run-dir DIR` with no limit: the
    resumed session gets what the first did not use (to its last stored write; the time down does not count)
    and stops at the budget's end; the bench's --resume leaves an arm whose hours ended as it is, and a
    third start is refused in one line."""
    from datetime import datetime

    from soar_agent.status import time_budget

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import soar_effect

    run_dir = tmp_path / "bench" / "soar"  # an arm of a soar_effect bench
    db = run_dir / "soar.db"
    sets = [x for pair in zip(["--set"] * len(FAST + hard_files), FAST + hard_files) for x in pair]
    process = soar_process("run", "--run-dir", run_dir, "--hours", "0.03", "--no-export", *sets, cwd=tmp_path)
    guard = time.time() + 900
    while time.time() < guard and not (db.is_file() and _trainings(db) >= 1):
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with Store(db, readonly=True) as store:
        first = time_budget(store, store.latest_run()["id"])
    # 0.03 h from the command's start, less its startup before the session's first event (seconds on a
    # loaded machine: the bound is loose below)
    assert not first.ended and 108 - 30 < first.seconds <= 108 + 1 and 0 < first.used < first.seconds
    time.sleep(3)  # the run is down: this does not count

    resumed = soar_process("run", "--run-dir", run_dir, "--no-export", cwd=tmp_path)
    output, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0 and "continuing the run's time budget" in output, output
    with Store(db, readonly=True) as store:
        run = store.latest_run()["id"]
        session = store.last_session(run)
        budget = time_budget(store, run)
        started = datetime.fromisoformat(session["ts"]).timestamp()
    assert abs(session["data"]["used_s"] - first.used) < 3  # what the killed session used, its downtime not
    assert abs(session["data"]["deadline"] - started - (first.seconds - first.used)) < 3  # the rest, from now
    # the unit of work under way at the deadline (a training step, the PQ evaluation sized by an estimate) ends
    # a little after it on a loaded machine (1.2 s over on CI once); a session that ignored the budget would
    # run on for as long as the test waits
    assert budget.ended and abs(budget.seconds - first.seconds) < 1 and budget.used <= budget.seconds * 1.1

    assert soar_effect.resume_arms(tmp_path / "bench", parallel=False) == ["soar"]  # its hours ended: not started
    assert "h left" not in capsys.readouterr().out
    again = soar_process("run", "--run-dir", run_dir, "--no-export", cwd=tmp_path)
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 2 and "the run's time budget is over" in output and "--hours H" in output, output


def _trainings(db: Path) -> int:
    try:
        return counts(db)["trainings"]
    except Exception:  # the store is being created
        return 0


@needs_embedded
def test_export_round_trip(tmp_path, hard_files):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = load_config(None, FAST + hard_files)
    agent = Agent.open(config, tmp_path / "run", log=lambda m: None)
    agent.run(Budget(max_teacher_steps=1))
    out = agent.export("latest", str(tmp_path / "exported"))
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    ids = tokenizer(arith.student_prompt("1+2"), return_tensors="pt").input_ids
    generated = model.generate(ids, max_new_tokens=30, do_sample=False)
    assert generated.shape[1] > ids.shape[1]
    card = (out / "README.md").read_text()
    assert "Evaluation history" in card and "hard-test" in card and "[student]" in card
    assert (out / "model.safetensors").is_file()


def test_full_disk_while_saving_stops_with_a_message_and_keeps_data(tmp_path, hard_files, random_tiny_dir,
                                                                    monkeypatch):
    import soar_agent.models as models

    config = load_config(None, FAST + hard_files + [f"model.path={json.dumps(str(random_tiny_dir))}",
                                                    "eval.samples=1", "eval.max_new_tokens=8"])
    agent = Agent.open(config, tmp_path / "run", log=lambda m: None)
    # the random model cannot write items: give the teacher a fixed, well-formed curriculum instead
    import soar_agent.teacher as teacher

    def fixed_items(engine, domain, count, cfg, seed, progress=None):
        items = [teacher.check_item(domain, f"<question>{i}+1</question><answer>{i + 1}</answer>", "verified")
                 for i in range(count)]
        return items, {"sampled": count, "accepted": count, "rejected": {}}

    monkeypatch.setattr(teacher, "sample_items", fixed_items)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(models, "save_checkpoint", disk_full)
    reason = agent.run(Budget(max_teacher_steps=2))
    assert "No space left" in reason
    errors = agent.store.events(agent.run_id, level="error")
    assert any(e["kind"] == "io-error" for e in errors)
    assert len(agent.store.datasets(agent.run_id, kind="curriculum")) == 2  # the sampled curriculum is kept
    assert agent.store.trainings(agent.run_id) == []  # the unit in progress was not recorded


def test_teacher_items_repeating_stored_problems_still_update_the_teacher(tmp_path, hard_files, random_tiny_dir,
                                                                          monkeypatch):
    import soar_agent.teacher as teacher

    config = load_config(None, FAST + hard_files + [f"model.path={json.dumps(str(random_tiny_dir))}",
                                                    "eval.samples=1", "eval.max_new_tokens=8",
                                                    "student.max_new_tokens=8"])
    agent = Agent.open(config, tmp_path / "run", log=lambda m: None)
    known = agent.hard_set("train")[0].question  # the teacher "writes" a problem the store already holds

    def items_with_a_duplicate(engine, domain, count, cfg, seed, progress=None):
        texts = [f"<question>{known}</question><answer>1</answer>"] + [
            f"<question>{i}+1</question><answer>{i + 1}</answer>" for i in range(count - 1)]
        return [teacher.check_item(domain, t, "verified") for t in texts], {"sampled": count, "accepted": count,
                                                                             "rejected": {}}

    monkeypatch.setattr(teacher, "sample_items", items_with_a_duplicate)
    agent.run(Budget(max_teacher_steps=1))
    (step,) = agent.store.teacher_steps(agent.run_id)
    assert step["status"] == "complete" and step["metrics"]["teacher_update"]["items"] == 8


@needs_embedded
def test_hard_only_srl_step_stores_its_step_rollouts(tmp_path, hard_files):
    """Hard-only SRL (issue 9's baseline): the loop trains with the srl backend on hard-train's expert
    steps, and every stored SRL rollout names the expert step it answered (ref .../srl-K)."""
    config = load_config(None, FAST + hard_files + ['run.mode="hard-only"', 'student.backend="srl"'])
    agent = Agent.open(config, tmp_path / "run", log=lambda m: None)
    assert "1 teacher steps" in agent.run(Budget(max_teacher_steps=1))
    store, run = agent.store, agent.run_id
    assert store.teacher_steps(run)[0]["status"] == "complete"
    rows = store.db.execute("SELECT r.ref, r.reward, r.correct, p.steps_json FROM rollouts r"
                            " JOIN problems p ON p.id = r.problem_id WHERE r.phase = 'srl'").fetchall()
    assert rows, "no SRL rollouts stored"
    for ref, reward, correct, steps_json in rows:
        index = int(ref.rsplit("/srl-", 1)[1])
        assert 0 <= index <= len(json.loads(steps_json))  # the last index is the `Answer:` line
        assert -1.0 <= reward <= 1.0 and correct is None
