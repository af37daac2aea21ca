"""A short trial fits its budget, reaches a teacher step and says whether the model got better (issue "A
newcomer's first hour", item 2): the base model's hard-test evaluation is kept across runs (evalcache), a
budget too small for one teacher step is refused at the start with one that fits, the final training
measures its pace before it commits to a training, and `soar run` ends with `hard-test pass@K: base X ->
exported Y`, Y measured on the exported weights."""

import json
import random
import time
from pathlib import Path

import pytest

import soar_agent.evaluation as evaluation
import soar_agent.pq as pq
import soar_agent.rl as rl
import soar_agent.teacher as teacher
from soar_agent import evalcache
from soar_agent.agent import Agent, Budget, BudgetTooSmall
import soar_agent.budget as budgets
from soar_agent.budget import final_training, no_time_for_a_step
from soar_agent.reporting import watch_evaluation
from soar_agent.config import load_config
from soar_agent.mining import write_jsonl
from soar_agent.tasks import arith, generate_problems
from tests.test_outer_loop import TINY, fixed_items, record_trainings, tiny_agent

CURRICULA = Path(__file__).resolve().parent.parent / "curricula"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("SOAR_CACHE_DIR", str(directory))
    return directory


def counted_evaluations(monkeypatch) -> list:
    """The problem lists evaluate_problems is called on (report_evaluation imports it at call time)."""
    calls, real = [], evaluation.evaluate_problems

    def spy(engine, domain, problems, **kwargs):
        calls.append([p.question for p in problems])
        return real(engine, domain, problems, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_problems", spy)
    return calls


def test_the_base_evaluation_is_kept_across_runs_and_measured_again_for_another_set_or_k(
        tmp_path, hard_files, random_tiny_dir, cache, monkeypatch):
    calls = counted_evaluations(monkeypatch)
    first = tiny_agent(tmp_path / "a", hard_files, random_tiny_dir, "eval.samples=2")
    measured = first.report_evaluation(0)
    assert len(calls) == 2 and not measured["hard-test"].get("cached")  # hard-test and the easy levels
    calls.clear()
    second = tiny_agent(tmp_path / "b", hard_files, random_tiny_dir, "eval.samples=2")
    reused = second.report_evaluation(0)
    assert calls == []  # no second evaluation computed
    (stored,) = second.store.evaluations(second.run_id, set_name="hard-test")
    assert stored["summary"]["cached"] is True and stored["teacher_step"] == 0 and stored["checkpoint_id"] is None
    assert reused["hard-test"]["pass@2"] == measured["hard-test"]["pass@2"]
    assert stored["summary"]["seconds"] == measured["hard-test"]["seconds"]  # what an evaluation costs
    (original,) = first.store.evaluations(first.run_id, set_name="hard-test")
    counts = [(r["samples"], r["correct"], r["greedy_correct"]) for r in first.store.evaluation_results(original["id"])]
    assert [(r["samples"], r["correct"], r["greedy_correct"])
            for r in second.store.evaluation_results(stored["id"])] == counts
    assert len(second.store.rollouts(second.run_id, phase="eval", limit=1000)) == len(
        first.store.rollouts(first.run_id, phase="eval", limit=1000)) > 0
    # another k, or another hard-test set, is another evaluation
    other_k = tiny_agent(tmp_path / "c", hard_files, random_tiny_dir, "eval.samples=4")
    other_k.report_evaluation(0)
    assert [len(c) for c in calls] == [4]  # hard-test measured; the easy levels (greedy, no k) were cached
    calls.clear()
    write_jsonl(generate_problems(arith, [6] * 4, random.Random(99)), tmp_path / "other-test.jsonl")
    other_set = tiny_agent(tmp_path / "d", [hard_files[0], f"domain.hard_test={json.dumps(str(tmp_path / 'other-test.jsonl'))}"],
                           random_tiny_dir, "eval.samples=2")
    other_set.report_evaluation(0)
    assert [len(c) for c in calls] == [4] and not other_set.store.evaluations(
        other_set.run_id, set_name="hard-test")[0]["summary"].get("cached")
    # the key is the model's content: a copy of the model elsewhere hits, a changed weight file misses
    import shutil

    copy = shutil.copytree(random_tiny_dir, tmp_path / "copy")
    calls.clear()
    tiny_agent(tmp_path / "e", hard_files, copy, "eval.samples=2").report_evaluation(0)
    assert calls == []
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    tiny_agent(tmp_path / "f", hard_files, copy, "eval.samples=2").report_evaluation(0)
    assert len(calls) == 2
    # an unreadable entry is a miss, not an error
    for entry in (cache / "evaluations").iterdir():
        entry.write_text("{not json")
    calls.clear()
    tiny_agent(tmp_path / "g", hard_files, random_tiny_dir, "eval.samples=2").report_evaluation(0)
    assert len(calls) == 2


def test_a_final_training_without_a_measured_pace_measures_a_few_steps_before_sizing_its_first_training(
        tmp_path, hard_files, random_tiny_dir, monkeypatch):
    """No teacher step ran (the budget went to the base evaluation): nothing estimates a final-training step,
    and the first training of 100 steps must not run past the deadline. It trains a tenth of a training,
    then as many steps as its pace leaves before the deadline; with the deadline passed it trains nothing."""
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir, "budget.pq_steps=300")
    agent.report_evaluation(0)
    monkeypatch.setattr(budgets, "evaluation_seconds", lambda run: 50.0)
    calls = record_trainings(monkeypatch)
    spy = rl.trainer
    clock = [time.time()]
    monkeypatch.setattr(pq, "time", type("Clock", (), {"time": staticmethod(lambda: clock[0])}))

    def ten_seconds_a_step(backend):  # the chain's clock moves by 10 s per step trained, by nothing else
        def train(*args, steps=None, **kwargs):
            clock[0] += 10.0 * steps
            return spy(backend)(*args, steps=steps, **kwargs)
        return train

    monkeypatch.setattr(rl, "trainer", ten_seconds_a_step)
    summary = final_training(agent, Budget(deadline=clock[0] + 50 + 250 + 2, max_teacher_steps=1))
    assert [c["steps"] for c in calls] == [10, 15] and summary["steps"] == 25  # 300 s: 25 steps of 10 s
    messages = [e["message"] for e in agent.store.events(agent.run_id, limit=50)]
    assert "PQ student: measuring the chain's pace on 10 steps before sizing it to the deadline" in messages
    calls.clear()
    assert final_training(agent, Budget(deadline=time.time() - 1, max_teacher_steps=1)) is None
    assert calls == [] and agent.store.events(agent.run_id, limit=1)[0]["kind"] == "pq-skipped"
    # without a deadline the chain is the plan: no measuring split
    calls.clear()
    pq.evaluate_pq(agent, steps=3, training_steps=2, seed=5)
    assert [c["steps"] for c in calls] == [2, 1]


def test_a_budget_too_small_for_one_teacher_step_is_refused_at_the_start_naming_one_that_fits(
        tmp_path, hard_files, random_tiny_dir, cache, monkeypatch, capsys):
    from soar_agent import cli

    monkeypatch.setattr(teacher, "sample_items", fixed_items)
    overrides = TINY + hard_files + [f"model.path={json.dumps(str(random_tiny_dir))}", "budget.pq_steps=100"]
    args = [x for item in overrides for x in ("--set", item)]
    # an earlier run of the configuration measured on this machine: a 10-minute evaluation, a 15-minute
    # teacher step and 3 s per final-training step
    earlier = tiny_agent(tmp_path / "earlier", hard_files, random_tiny_dir, "budget.pq_steps=100")
    signature = budgets.cost_signature(earlier)
    evalcache.remember_timing(signature, evaluation=600, step=900, pq_step=3)
    calls = record_trainings(monkeypatch)
    assert cli.main(["run", "--run-dir", str(tmp_path / "short"), "--hours", "0.25", *args]) == 2
    error = capsys.readouterr().err
    # 25 min of evaluation and step, and the final training's 60% of the budget: 1.04 h, 10% to spare: 1.15 h
    assert error.startswith("soar: error: a time budget of 0.25 h is too small for one teacher step") and \
        "--hours 1.15 fits one" in error and "curricula/trial.toml" in error and error.count("\n") == 1, error
    assert calls == []  # nothing trained
    agent = Agent.open(None, tmp_path / "short", log=lambda m: None, existing_only=True)
    assert agent.store.evaluations(agent.run_id) == [] and agent.store.events(agent.run_id, limit=1)[0]["kind"] == \
        "budget-too-small"
    # the suggested budget passes the check; a cached base evaluation needs no time of it
    budgets.check_budget(agent, Budget(deadline=time.time() + 1.15 * 3600))
    with pytest.raises(BudgetTooSmall):
        budgets.check_budget(agent, Budget(deadline=time.time() + 1.0 * 3600))
    monkeypatch.setattr(budgets, "base_evaluation_cached", lambda run: True)
    budgets.check_budget(agent, Budget(deadline=time.time() + 1.0 * 3600))  # 900 s / 0.4 = 0.63 h
    # without a measurement of the configuration it says so and goes on
    fresh = tiny_agent(tmp_path / "fresh", hard_files, random_tiny_dir, "budget.pq_steps=100", "teacher.items_per_dataset=3")
    budgets.check_budget(fresh, Budget(deadline=time.time() + 60))
    assert fresh.store.events(fresh.run_id, limit=1)[0]["kind"] == "budget-unmeasured"
    # and the teacher steps that follow are sized by the earlier runs' step before the run has its own
    assert "teacher step (~15 min)" in no_time_for_a_step(agent, Budget(deadline=time.time() + 2000), [])
    assert no_time_for_a_step(agent, Budget(deadline=time.time() + 3600), []) is None


def test_a_first_evaluation_that_would_end_after_the_deadline_is_given_up_early(
        tmp_path, hard_files, random_tiny_dir, monkeypatch):
    """No measurement of an evaluation's time yet: the step-0 evaluation projects its end from its first
    completions and, past the deadline, stops the run at once (nothing stored) instead of an evaluation later."""
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir, "eval.samples=4")
    clock = [time.time()]
    monkeypatch.setattr("soar_agent.reporting.time", type("Clock", (), {"time": staticmethod(lambda: clock[0]),
                                                                    "monotonic": staticmethod(time.monotonic)}))
    watched = watch_evaluation(agent, lambda count: None, total=100, deadline=clock[0] + 1000)
    clock[0] += 40.0
    watched(4)  # 4% done: no projection yet
    clock[0] += 10.0
    watched(6)  # 10% in 50 s: ends at 500 s, before the deadline
    clock[0] += 250.0
    with pytest.raises(BudgetTooSmall, match=r"hard-test evaluation alone would take ~25 min"):
        watched(10)  # 20% in 300 s: ends at 1,500 s, past the deadline
    monkeypatch.setattr("soar_agent.reporting.time", time)
    calls = counted_evaluations(monkeypatch)
    with pytest.raises(BudgetTooSmall):
        agent.run(Budget(deadline=time.time() + 0.01))
    assert len(calls) == 1 and agent.store.evaluations(agent.run_id) == []
    assert agent.store.events(agent.run_id, limit=1)[0]["kind"] == "budget-too-small"


def test_soar_run_ends_with_the_hard_test_before_and_after_of_the_exported_model(
        tmp_path, hard_files, random_tiny_dir, cache, monkeypatch, capsys):
    from soar_agent import cli

    monkeypatch.setattr(teacher, "sample_items", fixed_items)
    overrides = TINY + hard_files + [f"model.path={json.dumps(str(random_tiny_dir))}", "budget.pq_steps=3",
                                     "eval.samples=4"]
    run_dir = tmp_path / "run"
    assert cli.main(["run", "--run-dir", str(run_dir), "--max-teacher-steps", "1",
                     *[x for item in overrides for x in ("--set", item)]]) == 0
    output = capsys.readouterr().out
    agent = Agent.open(None, run_dir, log=lambda m: None, existing_only=True)
    base = agent.store.evaluations(agent.run_id, set_name="hard-test")[0]["summary"]["pass@4"]
    (pq_student,) = agent.store.evaluations(agent.run_id, set_name="hard-test-pq")
    exported = sorted((run_dir / "exports").iterdir())[-1]
    # the exported directory holds the PQ student's weights (the same content hash): its evaluation is the PQ's
    assert evalcache.model_hash(exported, weights_only=True) == evalcache.model_hash(
        agent.latest_checkpoint("pq")["path"], weights_only=True)
    line = f"hard-test pass@4: base {base:.3f} -> exported {pq_student['summary']['pass@4']:.3f}"
    assert line in output.splitlines(), output
    # an export that matches no evaluated checkpoint says how to measure it instead of a figure
    other = tmp_path / "other"
    other.mkdir()
    for file in exported.iterdir():
        (other / file.name).write_bytes(file.read_bytes())
    weights = bytearray((other / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (other / "model.safetensors").write_bytes(bytes(weights))
    assert f"base {base:.3f} -> exported not evaluated" in agent.before_and_after(other)
    assert f"soar eval --model {other}" in agent.before_and_after(other)


def test_the_trial_config_runs_one_teacher_step_and_a_final_training_with_pass_at_32():
    config = load_config(CURRICULA / "trial.toml")
    assert config.budget.max_teacher_steps == 1 and config.budget.pq_steps > 0 and config.run.mode == "soar"
    assert config.eval.samples == 32 and config.model.path == "default" and config.domain.name == "arith"
    assert config.domain.hard_test == ""  # the shipped hard-test, whose base evaluation every run shares (cached)
    readme = (CURRICULA.parent / "README.md").read_text()
    first = next(line for line in readme.splitlines() if line.startswith("python3 -m venv"))
    assert first.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install --extra-index-url"
                            " https://download.pytorch.org/whl/cpu -c constraints-cpu.txt -e . && ")
    assert first.endswith(" soar run curricula/trial.toml"), first
