"""One SOAR step walked phase by phase through soar_step's functions, on a tiny model and a real store: what
each phase leaves stored, and that the phases in sequence are exactly the step the loop runs."""

import pytest
import torch

import soar_agent.teacher as teacher
from soar_agent.agent import Agent
from soar_agent.config import load_config
from soar_agent.soar_step import (complete_step, score_baseline, soar_step, step_rewards, train_students,
                                  update_teacher, write_curriculum)
from soar_agent.students import reward_questions

# 8 items per dataset: one pass over their worked solutions is 2 supervised steps (student.batch_prompts x group_size
# rows each; 48 new tokens hold a level-1 solution), so every student updates
TINY = ["teacher.datasets_per_step=2", "teacher.items_per_dataset=8", "teacher.max_new_tokens=8",
        "student.students_per_dataset=2", "student.steps=2", "student.batch_prompts=2", "student.group_size=2",
        "student.max_new_tokens=48", "reward.questions=4", "eval.samples=1", "eval.every_teacher_steps=100",
        "eval.max_new_tokens=8", "promotion.tau=-1.0", "budget.pq_steps=0"]


def open_run(run_dir, hard_files, *extra) -> Agent:
    """A run of the shipped model (a random one's students make no update, so its teacher would take none)."""
    config = load_config(None, TINY + hard_files + list(extra))
    return Agent.open(config, run_dir, log=lambda m: None)


def scripted_items(engine, domain, count, cfg, seed, progress=None, **kwargs):
    """The teacher's items without sampling, so that the test does not depend on what the model writes: a sum
    per item, its answer right for even i and wrong for odd i."""
    return [teacher.check_item(domain, f"<question>{i}+{i + 1}</question><answer>{2 * i + 1 + i % 2}</answer>",
                               cfg.reward_target) for i in range(count)], {"sampled": count, "accepted": count,
                                                                           "rejected": {}}


def weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_one_soar_step_phase_by_phase_is_the_step_the_loop_runs(tmp_path, hard_files, monkeypatch):
    monkeypatch.setattr(teacher, "sample_items", scripted_items)
    agent = open_run(tmp_path / "phases", hard_files)
    step, started = 1, 0.0

    datasets = write_curriculum(agent, 1)  # 1. the teacher writes g datasets of n items, stored at once
    assert [len(d["meta"]["texts"]) for d in datasets] == [8, 8]
    assert agent.store.datasets(agent.run_id, kind="curriculum") == datasets and not agent.store.trainings(agent.run_id, 1)
    assert write_curriculum(agent, 1) == datasets  # a resumed step reads them back instead of sampling again

    questions = reward_questions(agent, step)
    hard_train = {p.question for p in agent.hard_set("train")}
    assert len(questions) == 4 and {p.question for p in questions} <= hard_train
    before = score_baseline(agent, questions, step)  # 2. the baseline's per-question scores
    assert len(before) == 4

    assert train_students(agent, step, datasets, questions, before)  # 3. r = 2 students per dataset
    trainings = agent.store.trainings(agent.run_id, step)
    assert sorted((t["dataset_id"], t["student_index"]) for t in trainings) == \
        sorted((d["id"], j) for d in datasets for j in range(2))
    assert all(t["reward"] is not None and t["accuracy_before"] == pytest.approx(sum(before) / 4) for t in trainings)

    rewards = step_rewards(agent, step, datasets)  # 4. each dataset's reward: its students' mean improvement
    for dataset in datasets:
        own = [t["reward"] for t in trainings if t["dataset_id"] == dataset["id"]]
        assert rewards.rewards[dataset["id"]] == pytest.approx(sum(own) / len(own))
    assert rewards.teacher_rewards == list(rewards.rewards.values())  # soar: the teacher learns from these

    teacher_before = weights(agent.model("teacher")).clone()
    update = update_teacher(agent, step, datasets, rewards)  # 5. one RLOO step of the teacher
    assert update["updated"] is True and update["items"] == 16
    assert len(update["advantages"]) == 2 and sum(update["advantages"]) == pytest.approx(0.0, abs=1e-9)
    assert not torch.equal(weights(agent.model("teacher")), teacher_before)
    assert not agent.completed_steps()  # nothing of the step counts as done before its last unit

    complete_step(agent, step, datasets, before, rewards, update, started)  # 6. promotion, one transaction
    (done,) = agent.completed_steps()
    assert done["mean_reward"] == pytest.approx(rewards.mean)
    assert done["metrics"]["teacher_update"]["advantages"] == update["advantages"]
    assert agent.latest_checkpoint("teacher") is not None
    assert agent.latest_checkpoint("baseline") is not None  # tau = -1: the best dataset's student is promoted
    assert not (agent.paths.checkpoints / "step-1").exists()  # the students' weights are gone

    # the same seeds through the loop's own step give the same rewards, promotion and teacher
    loop = open_run(tmp_path / "loop", hard_files)
    soar_step(loop, 1)
    (looped,) = loop.completed_steps()
    assert [d["meta"]["texts"] for d in loop.store.datasets(loop.run_id, kind="curriculum")] == \
        [d["meta"]["texts"] for d in datasets]
    assert looped["mean_reward"] == pytest.approx(done["mean_reward"], abs=1e-6)
    assert looped["metrics"]["teacher_update"]["advantages"] == pytest.approx(update["advantages"], abs=1e-6)
    assert torch.allclose(weights(loop.model("teacher")), weights(agent.model("teacher")), atol=1e-6)


def test_a_frozen_teacher_takes_no_update_and_keeps_its_weights(tmp_path, hard_files, monkeypatch):
    monkeypatch.setattr(teacher, "sample_items", scripted_items)
    agent = open_run(tmp_path / "frozen", hard_files, "teacher.lr=0")
    datasets = write_curriculum(agent, 1)
    questions = reward_questions(agent, 1)
    before = score_baseline(agent, questions, 1)
    assert train_students(agent, 1, datasets, questions, before)
    teacher_before = weights(agent.model("teacher")).clone()
    update = update_teacher(agent, 1, datasets, step_rewards(agent, 1, datasets))
    assert update["frozen"] is True and update["updated"] is False and len(update["advantages"]) == 2
    assert torch.equal(weights(agent.model("teacher")), teacher_before)
