"""Control within seconds (issue "A newcomer's first hour", 3 and 4): the TUI's stop and pause are read inside
a unit of work (between training steps, evaluation batches, the teacher update's micro-batches), a command
sent before the session that reads it is dropped rather than obeyed, the first Ctrl-C says how to stop at once
and how to resume, a resume says which of the given settings it takes; and no long phase is silent: `soar
eval` draws a bar, `soar run` opens with a line, the teacher update has a bar and a phase of its own, and
the bars' ETA shows for phases whose updates come minutes apart."""

import json
import signal
import threading
import time

import pytest

import soar_agent.control as control
import soar_agent.teacher as teacher
from soar_agent import cli
from soar_agent.agent import Agent, Budget
from soar_agent.store import Store
from soar_agent.students import reward_questions, reward_scores
from tests.test_outer_loop import fixed_items, tiny_agent


def send(agent, command: str) -> int:
    """A command as the TUI sends it: through a store connection of its own."""
    with Store(agent.paths.db) as store:
        return store.send_command(run_id=agent.run_id, command=command)


def student_steps(agent, on_step):
    """agent.progress, calling on_step(done) at each reported step of a student training."""
    def progress(label, done, total):
        if ": student " in label:
            on_step(done)

    agent.progress = progress


def test_a_stop_sent_inside_a_long_student_training_stops_it_within_a_step(tmp_path, hard_files, random_tiny_dir,
                                                                           monkeypatch):
    """A stop sent at step 3 of a 60-step training ends the training at the next step, not after the unit (a
    100-step training of the final training held a TUI stop "pending" for minutes); the run is marked stopped
    by that stop, and the resume redoes the training it cut short."""
    monkeypatch.setattr(control, "HEARTBEAT_S", 0.0)  # the agent reads commands every 10 s: here at every step
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir, "run.mode=hard-only", "student.steps=60",
                       "teacher.datasets_per_step=1", "student.students_per_dataset=1")
    steps = []

    def on_step(done):
        steps.append(done)
        if done == 3:
            send(agent, "stop")

    student_steps(agent, on_step)
    reason = agent.run(Budget(max_teacher_steps=1))
    assert reason == "stop command received"
    assert 3 <= max(steps) <= 4, steps  # the step under way when the stop came, not the unit's 60
    assert agent.store.trainings(agent.run_id) == [] and not agent.completed_steps()  # nothing half-stored
    (command,) = agent.store.commands(agent.run_id)
    assert command["ack_message"].startswith("stopping after the current step")
    assert agent.store.get_run(agent.run_id)["status"] == "stopped"
    assert agent.store.events(agent.run_id, limit=1)[0]["message"] == reason
    agent.store.close()
    resumed = tiny_agent(tmp_path, hard_files, random_tiny_dir, "run.mode=hard-only", "student.steps=60",
                         "teacher.datasets_per_step=1", "student.students_per_dataset=1")
    assert resumed.run(Budget(max_teacher_steps=1)) == "1 teacher steps done"
    assert len(resumed.store.trainings(resumed.run_id, 1)) == 1


def test_a_pause_inside_a_unit_waits_at_the_next_step_until_resumed(tmp_path, hard_files, random_tiny_dir,
                                                                    monkeypatch):
    """A pause sent at step 2 of a training is acknowledged and holds the training at the next step; the
    heartbeat goes on while it waits (the TUI sees an attached agent), and resume continues the same training."""
    monkeypatch.setattr(control, "HEARTBEAT_S", 0.0)
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir, "run.mode=hard-only", "student.steps=30",
                       "teacher.datasets_per_step=1", "student.students_per_dataset=1")
    steps, seen = [], {}

    def on_step(done):
        steps.append(done)
        if done == 2 and "pause" not in seen:
            seen["pause"] = send(agent, "pause")
            threading.Thread(target=resume_later, daemon=True).start()

    def resume_later():
        with Store(agent.paths.db) as store:
            deadline = time.time() + 120
            while time.time() < deadline:
                acked = {c["id"]: c for c in store.commands(agent.run_id)}[seen["pause"]]
                if acked["acked_at"]:
                    break
                time.sleep(0.05)
            seen["at_ack"], seen["ack"] = len(steps), acked["ack_message"]
            beat = store.get_run(agent.run_id)["heartbeat_at"]
            time.sleep(2.5)
            seen["after_wait"] = len(steps)
            seen["beat_went_on"] = store.get_run(agent.run_id)["heartbeat_at"] > beat
            store.send_command(run_id=agent.run_id, command="resume")

    student_steps(agent, on_step)
    assert agent.run(Budget(max_teacher_steps=1)) == "1 teacher steps done"
    assert seen["ack"] == "pausing at the next step"
    assert seen["at_ack"] <= 4, seen  # held inside the training, not after its 30 steps
    assert seen["after_wait"] == seen["at_ack"] and seen["beat_went_on"], seen  # no step while paused
    assert steps[-1] == 30 and len(agent.store.trainings(agent.run_id, 1)) == 1


def test_a_command_sent_before_the_session_is_dropped_not_obeyed(tmp_path, hard_files, random_tiny_dir):
    """A stop queued while no agent was attached fired on the next resume, which then stopped (and exported)
    at once: the session drops it, says so in its log, its events and the command's acknowledgement, and
    goes on; the same command sent during the session is obeyed."""
    logged = []
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir, "run.mode=hard-only")
    agent.log = logged.append
    stale_stop, stale_pause = send(agent, "stop"), send(agent, "pause")
    time.sleep(0.01)  # the store's times have milliseconds
    assert agent.run(Budget(max_teacher_steps=1)) == "1 teacher steps done"
    assert len(agent.completed_steps()) == 1 and not agent.paused
    acks = {c["id"]: c["ack_message"] for c in agent.store.commands(agent.run_id)}
    assert acks[stale_stop].startswith("dropped: sent at") and acks[stale_stop].endswith("send it again to stop")
    assert acks[stale_pause].endswith("send it again to pause")
    notes = [line for line in logged if line.startswith("ignored a stop sent at")]
    assert len(notes) == 1 and "before this session started; send it again to stop" in notes[0]
    dropped = [e for e in agent.store.events(agent.run_id, limit=100) if e["kind"] == "command-dropped"]
    assert sorted(e["data"]["command"] for e in dropped) == ["pause", "stop"]

    real_poll = agent.poll_commands

    def stop_sent_now():
        if not agent.store.pending_commands(agent.run_id) and len(agent.completed_steps()) == 1:
            send(agent, "stop")
        real_poll()

    agent.poll_commands = stop_sent_now
    assert agent.run(Budget(max_teacher_steps=3)) == "stop command received"
    assert len(agent.completed_steps()) == 1


def test_the_teacher_update_has_a_bar_a_phase_and_answers_a_stop(tmp_path, hard_files, random_tiny_dir,
                                                                  monkeypatch):
    """The teacher update (minutes in one step) logs its start, so `soar status` says "updating the teacher"
    rather than "training students", reports its micro-batches as a bar, and reads commands between them: a
    stop sent during it ends the step there (the step is redone on resume)."""
    from soar_agent.status import format_status, run_status

    monkeypatch.setattr(control, "HEARTBEAT_S", 0.0)
    monkeypatch.setattr(teacher, "sample_items", fixed_items)
    # the tiny random students' rewards tie, and an update whose advantages are all zero takes no pass
    monkeypatch.setattr(teacher, "rloo_dataset_advantages", lambda rewards: [1.0, -1.0])
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir)
    bars, phases = {}, []

    def progress(label, done, total):
        bars.setdefault(label, []).append((done, total))
        if "teacher update" in label and done == 0:
            phases.append(format_status(run_status(tmp_path / "run")))
            send(agent, "stop")

    agent.progress = progress
    assert agent.run(Budget(max_teacher_steps=1)) == "stop command received"
    (label,) = [label for label in bars if "teacher update" in label]
    assert label.startswith("step 1: teacher update (") and bars[label][0] == (0, bars[label][0][1])
    assert "running: updating the teacher" in phases[0], phases
    assert not agent.completed_steps()  # stopped inside the update: the step is not complete
    assert [c["ack_message"] for c in agent.store.commands(agent.run_id)] == [
        "stopping after the current step; the unit it interrupts is redone on resume"]


def test_the_teacher_update_reports_each_micro_batch(random_tiny):
    model, tokenizer = random_tiny
    import torch

    from soar_agent.tasks import arith

    items = [teacher.check_item(arith, f"<question>{i}+{i}</question><answer>{2 * i}</answer>", "verified")
             for i in range(5)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    reports = []
    teacher.teacher_update(model, optimizer, tokenizer, arith, [items[:3], items[3:]], [1.0, 0.0], micro_batch=2,
                           progress=lambda done, total: reports.append((done, total)))
    assert reports == [(2, 5), (4, 5), (5, 5)]


def test_the_heartbeat_and_commands_come_inside_an_evaluation_batch(tmp_path, hard_files, random_tiny_dir,
                                                                    monkeypatch):
    """An evaluation batch of 256 rows takes minutes on a CPU, and the base model's reward scores had no
    progress at all: the engine ticks at every token, so the heartbeat (and a stop) come inside them."""
    monkeypatch.setattr(control, "HEARTBEAT_S", 0.0)
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir, "run.mode=hard-only", "reward.metric=sampled")
    agent.session_started = control.store_time()  # as `run` sets it: commands are read in a session
    beats = []
    real = agent.store.heartbeat
    monkeypatch.setattr(agent.store, "heartbeat", lambda run_id: beats.append(1) or real(run_id))
    reward_scores(agent, agent.model("baseline"), reward_questions(agent, 1), 1)  # no progress of its own
    assert len(beats) >= agent.config.eval.max_new_tokens // 2  # one per decoded token of its one batch
    send(agent, "stop")
    with pytest.raises(control.UnitStopped):
        reward_scores(agent, agent.model("baseline"), reward_questions(agent, 1), 1)
    assert agent.stop_reason == "stop command received"


def test_the_engine_ticks_at_every_decoded_token(random_tiny):
    from soar_agent.engine import HFEngine

    model, tokenizer = random_tiny
    ticks = []
    engine = HFEngine(model, tokenizer, tick=lambda: ticks.append(1))
    (row,) = engine.generate(["1+1="], n=1, temperature=0.0, max_new_tokens=6)
    assert len(ticks) == max(1, len(row[0].token_ids) + (row[0].finish_reason == "stop"))


def test_the_first_ctrl_c_says_how_to_stop_at_once_and_how_to_resume(tmp_path, hard_files, random_tiny_dir):
    logged = []
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir)
    agent.log = logged.append
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        control.install_signal_handlers(agent)
        signal.raise_signal(signal.SIGINT)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert agent.stop_reason == "SIGINT received: stopping after the current unit"
    (line,) = logged
    assert "Ctrl-C again: stop at once" in line and f"soar run --run-dir {tmp_path / 'run'}" in line, line


def test_a_resume_takes_the_budget_and_device_and_names_the_settings_it_ignores(tmp_path, hard_files,
                                                                               random_tiny_dir, monkeypatch, capsys):
    """`soar run --run-dir RUN --set ...` on an existing run said "the given one is ignored" for every --set:
    it applies those a resume may change (budget, device, engine, workers), names the experiment's settings
    it ignores (only those given: not every default that differs from the run's), and opens with a line
    saying what it is about to do."""
    tiny_agent(tmp_path, hard_files, random_tiny_dir, "run.mode=hard-only").store.close()
    run_dir = tmp_path / "run"
    configs = []
    monkeypatch.setattr(Agent, "run", lambda agent, budget: configs.append(agent.config) or "stopped by the test")
    assert cli.main(["run", "--run-dir", str(run_dir), "--set", "budget.pq_steps=7", "--set", 'model.device="cpu"',
                     "--set", "teacher.lr=0.5", "--set", "student.steps=1", "--no-export"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    (config,) = configs
    assert config.budget.pq_steps == 7 and config.model.device == "cpu"
    assert config.teacher.lr != 0.5
    assert "this session's model.device = 'cpu', budget.pq_steps = 7" in out, out
    assert "ignored on a resume" in out and "teacher.lr = 0.5" in out and "student.steps" not in out, out
    assert "model.path" not in out  # not given: the stored one is not "ignored"
    assert f"soar run: resuming {run_dir} after 0 teacher steps" in out and f"soar tui {run_dir}" in out, out
    assert "hard-only trainings" in out, out


def test_a_new_run_opens_with_its_dir_budget_plan_and_how_to_watch_it(tmp_path, hard_files, random_tiny_dir,
                                                                     monkeypatch, capsys):
    from tests.test_outer_loop import TINY

    monkeypatch.setattr(Agent, "run", lambda agent, budget: "stopped by the test")
    run_dir = tmp_path / "new"
    sets = [x for item in TINY + hard_files + [f"model.path={json.dumps(str(random_tiny_dir))}", "budget.pq_steps=5"]
            for x in ("--set", item)]
    assert cli.main(["run", "--run-dir", str(run_dir), "--max-teacher-steps", "4", "--no-export", *sets]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"soar run: new soar run in {run_dir}" in out, out
    assert "budget: 4 teacher steps in all" in out and "writes 2 datasets of 2 problems" in out, out
    assert "final training of 5 steps" in out and f"watch it with `soar tui {run_dir}`" in out, out


def test_soar_eval_draws_a_progress_bar(random_tiny_dir, monkeypatch, capsys):
    """`soar eval` printed nothing for minutes: it reports every finished batch to a bar with its total."""
    import contextlib

    reports = []

    @contextlib.contextmanager
    def recording(console):
        yield lambda label, done, total: reports.append((label, done, total))

    monkeypatch.setattr(cli, "_progress_bars", recording)
    assert cli.main(["eval", "--model", str(random_tiny_dir), "--domain", "arith", "--levels", "1", "--per-level",
                     "3", "--samples", "2", "--max-new-tokens", "6", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["problems"] == 3
    assert reports[0][1:] == (0, 9) and reports[-1][1:] == (9, 9)  # 3 problems x (greedy + 2 samples)
    assert reports[0][0].startswith("evaluating 3 problems")


def test_the_bars_eta_shows_when_updates_come_minutes_apart():
    """Rich's own ETA estimates the speed over the last 30 s and showed -:--:-- through every evaluation and
    the final training (batches and steps further apart than that); the bars' ETA is the average pace."""
    from rich.progress import Progress, TimeRemainingColumn

    clock = [0.0]
    progress = Progress(get_time=lambda: clock[0])
    task = progress.add_task("evaluation", total=10)
    for done in (1, 2):
        clock[0] += 60.0
        progress.update(task, completed=done)
    (state,) = progress.tasks
    assert str(TimeRemainingColumn().render(state)) == "-:--:--"  # what the bars showed
    assert str(cli._eta_column().render(state)) == "0:08:00"  # 2 done in 120 s: 8 left take 480 s
