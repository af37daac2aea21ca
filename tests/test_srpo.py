"""SRPO (soar_agent/rl/srpo.py): History Resampling (in a training and across a resume through the
store), over-length masking, no KL by default, the stage switch, and a short training end to end."""

import json
import random

import pytest
import torch

from soar_agent.config import StudentSection, load_config
from soar_agent.engine import HFEngine
from soar_agent.rl import srpo, trainer
from soar_agent.rl.advantages import grpo_advantages
from soar_agent.students import record_training, student_job
from soar_agent.tasks import arith


def _cfg(**overrides):
    base = dict(batch_prompts=3, group_size=4, max_new_tokens=4, lr=1e-2, steps=4, srpo_stage1="all",
                srpo_mask_overlong=False)
    return StudentSection(**{**base, **overrides})


def _problems(levels=(2, 2, 2)):
    rng = random.Random(0)
    return [arith.generate(level, rng) for level in levels]


def by_question(correct: set, wrong: set):
    """A reward: 1 for the questions in `correct`, 0 for those in `wrong`, alternating 1/0 for the rest."""
    def reward(problems, completions):
        return [1.0 if p.question in correct else 0.0 if p.question in wrong else float(i % 2)
                for i, p in enumerate(problems)]

    return reward


def even_character_share(problems, completions):
    return [sum(ord(ch) % 2 == 0 for ch in text) / max(1, len(text)) for text in completions]


def questions_per_step(model, tokenizer, problems, cfg, reward_fn, **kwargs):
    steps = []
    trainer("srpo")(model, tokenizer, problems, arith, cfg, reward_fn=reward_fn,
                    on_rollout=lambda batch, scores: steps.append({p.question for p in batch.problems}), **kwargs)
    return steps


def test_resample_drops_exactly_the_all_correct_problems():
    a, b, c, d = _problems((1, 2, 3, 4))
    records = {a.question: [1.0, 1.0, 1.0], b.question: [1.0, 0.0, 1.0], c.question: [0.0, 0.0, 0.0]}
    assert srpo.resample([a, b, c, d], records) == [b, c, d]  # mixed, all-wrong and unrecorded stay
    assert srpo.resample([a, b], {}) == [a, b]


def test_history_resampling_at_the_end_of_each_pass(random_tiny):
    model, tokenizer = random_tiny
    solved, mixed, failed = _problems()
    reward = by_question({solved.question}, {failed.question})
    steps = questions_per_step(model, tokenizer, [solved, mixed, failed], _cfg(), reward)
    assert steps[0] == {solved.question, mixed.question, failed.question}  # one pass = one batch of 3
    assert all(s == {mixed.question, failed.question} for s in steps[1:])  # all-correct dropped, the rest kept
    # seeded history (an earlier training's rollouts): the solved problem is dropped before the first step
    history = {solved.question: [1.0, 1.0], mixed.question: [1.0, 0.0], "not in this dataset": [0.0]}
    steps = questions_per_step(model, tokenizer, [solved, mixed, failed], _cfg(steps=2), reward, history=history)
    assert all(solved.question not in s for s in steps) and mixed.question in steps[0]


def test_history_resampling_every_n_steps(random_tiny):
    model, tokenizer = random_tiny
    solved, mixed, failed = _problems()
    steps = questions_per_step(model, tokenizer, [solved, mixed, failed],
                               _cfg(batch_prompts=1, steps=9, srpo_resample_every=6, srpo_switch_step=100),
                               by_question({solved.question}, {failed.question}))
    # a boundary at step 6 only (no stage switch, itself a boundary): two whole passes (steps 0-5) hold the
    # solved problem twice, then never
    assert sum(solved.question in s for s in steps[:6]) == 2
    assert all(solved.question not in s for s in steps[6:])


def test_over_length_completions_get_advantage_zero(random_tiny, monkeypatch):
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    overlong = torch.tensor([[False, False, True, True]])
    expected = torch.cat([grpo_advantages(torch.tensor([[1.0, 0.0]])), torch.zeros(1, 2)], dim=1)
    assert torch.allclose(srpo.srpo_advantages(rewards, overlong), expected)
    assert torch.equal(srpo.srpo_advantages(rewards, overlong, mask_overlong=False), grpo_advantages(rewards))

    # in training: two completions of each group finish, the rest run into max_new_tokens
    model, tokenizer = random_tiny
    sample = HFEngine.generate

    def two_of_each_group_stop(self, *args, **kwargs):
        outputs = sample(self, *args, **kwargs)
        for row in outputs:
            for completion in row:
                completion.finish_reason = "length"
            row[0].finish_reason = row[1].finish_reason = "stop"
        return outputs

    monkeypatch.setattr(HFEngine, "generate", two_of_each_group_stop)
    steps = []
    step = srpo.policy_step
    monkeypatch.setattr(srpo, "policy_step", lambda student, optimizer, batch, advantages, *args:
                        steps.append(advantages.view(-1, 4)) or step(student, optimizer, batch, advantages, *args))
    reward = by_question(set(), set())  # 1, 0, 1, 0 in every group
    records = []
    trainer("srpo")(model, tokenizer, _problems(), arith, _cfg(steps=1, srpo_mask_overlong=True), reward_fn=reward,
                    log=records.append)
    (advantages,) = steps
    assert (advantages[:, 2:] == 0).all() and (advantages[:, :2].abs() > 0.5).all()
    assert records[0]["overlong_fraction"] == 0.5 and records[0]["updated"]
    steps.clear()
    trainer("srpo")(model, tokenizer, _problems(), arith, _cfg(steps=1, srpo_mask_overlong=False), reward_fn=reward)
    assert (steps[0][:, 2:].abs() > 0.5).all()  # the same rollouts unmasked: the cut-off ones count


def test_kl_is_off_by_default_and_the_loss_is_token_level(random_tiny, monkeypatch):
    defaults = StudentSection()
    assert defaults.srpo_kl_coef == 0.0 and defaults.kl_coef > 0 and defaults.loss_aggregation == "token"
    assert defaults.srpo_mask_overlong
    model, tokenizer = random_tiny
    configs = []
    step = srpo.policy_step
    monkeypatch.setattr(srpo, "policy_step", lambda student, optimizer, batch, advantages, cfg, *args:
                        configs.append(cfg) or step(student, optimizer, batch, advantages, cfg, *args))
    records = []
    cfg = _cfg(steps=3, kl_coef=0.5)  # the other backends' KL, set high: srpo must not use it
    trainer("srpo")(model, tokenizer, _problems(), arith, cfg, reward_fn=even_character_share, log=records.append)
    assert all(c.kl_coef == 0 and c.loss_aggregation == "token" for c in configs)
    assert sum(r["updated"] for r in records) >= 2 and all(r["kl"] == 0 for r in records)
    records = []
    trainer("srpo")(model, tokenizer, _problems(), arith, _cfg(steps=3, srpo_kl_coef=0.5),
                    reward_fn=even_character_share, log=records.append)
    assert records[-1]["kl"] > 0  # srpo_kl_coef turns it on (the student has moved from the baseline)


def test_stage_switch_at_the_configured_step(random_tiny):
    model, tokenizer = random_tiny
    problems = _problems((1, 1, 1, 5, 5, 5))
    hard = {p.question for p in problems if p.level == 5}
    assert srpo.harder_half(problems) == problems[3:] and srpo.harder_half(_problems((3, 3))) == _problems((3, 3))
    records, steps = [], []
    trainer("srpo")(model, tokenizer, problems, arith, _cfg(steps=4, srpo_stage1="harder-half", srpo_switch_step=2),
                    reward_fn=lambda ps, cs: [0.0] * len(cs), log=records.append,
                    on_rollout=lambda batch, scores: steps.append({p.question for p in batch.problems}))
    assert [r["stage"] for r in records] == [1, 1, 2, 2] and [r["pool"] for r in records] == [3, 3, 6, 6]
    assert steps[0] | steps[1] == hard
    assert steps[2] | steps[3] == {p.question for p in problems}  # one fresh pass over all six
    # 0 = halfway; a plateau of the stage-1 reward switches earlier
    assert srpo.switch_step(_cfg(), 10) == 5
    assert srpo.plateaued([0.5, 0.5, 0.4, 0.4], 2) and not srpo.plateaued([0.1, 0.2, 0.3, 0.4], 2)
    records = []
    trainer("srpo")(model, tokenizer, problems, arith, _cfg(steps=4, srpo_stage1="harder-half", srpo_switch_step=10,
                                                          srpo_plateau_window=1),
                    reward_fn=lambda ps, cs: [0.0] * len(cs), log=records.append)
    assert [r["stage"] for r in records] == [1, 1, 2, 2]  # rewards flat after two steps


def test_history_survives_a_resume_through_the_store(tmp_path, random_tiny_dir, hard_files, monkeypatch):
    """A first training runs as the driver's job and is recorded by the driver; after a restart, the
    StudentJob the driver builds for the next teacher step carries its rollouts as history, and that job
    drops the problem those rollouts solved."""
    from soar_agent.agent import Agent
    from soar_agent.student_job import train_and_score

    small = ["student.batch_prompts=3", "student.group_size=4", "student.max_new_tokens=4", "student.lr=0.01",
             'student.srpo_stage1="all"', "student.srpo_mask_overlong=false", "reward.samples=2",
             "eval.max_new_tokens=4"]
    config = load_config(None, hard_files + small + ['student.backend="srpo"', 'run.mode="hard-only"',
                                                     f"model.path={json.dumps(str(random_tiny_dir))}"])
    agent = Agent.open(config, tmp_path / "run", log=lambda m: None)
    problems = agent.hard_set("train")[:3]
    solved, mixed, failed = problems
    monkeypatch.setattr(srpo, "reward_correct", lambda domain: by_question({solved.question}, {failed.question}))
    job, ids = student_job(agent, 1, 0, None, 0, problems[:1], problems=problems, steps=1)
    assert job.history == {}  # nothing stored yet
    _, result = train_and_score(agent.model("baseline"), agent.tokenizer, agent.domain, agent.config, job)
    record_training(agent, 1, 0, None, 0, [0.0], result, ids)
    agent.store.close()

    resumed = Agent.open(None, tmp_path / "run", log=lambda m: None)
    job, _ = student_job(resumed, 2, 0, None, 0, problems[:1], problems=problems, steps=2)
    expected = {}
    for row in result.rollouts:
        expected.setdefault(row["question"], []).append(float(row["correct"]))
    assert job.history == expected and set(expected) == {p.question for p in problems}
    assert job.history[solved.question] == [1.0] * 4 and set(job.history[mixed.question]) == {0.0, 1.0}
    assert student_job(resumed, 1, 0, None, 0, [], problems=problems, steps=1)[0].history == {}  # earlier steps only
    _, result = train_and_score(resumed.model("baseline"), resumed.tokenizer, resumed.domain, resumed.config, job)
    assert {row["question"] for row in result.rollouts} == {mixed.question, failed.question}


def test_stored_history_is_the_latest_earlier_step_per_question(tmp_path):
    from soar_agent.store import Store

    a, b, c = _problems((1, 2, 3))
    with Store(tmp_path / "soar.db") as store:
        run = store.create_run(name="t", mode="hard-only")
        ida, idb, idc = store.add_problems(run_id=run, problems=[a, b, c], source="hard")
        rows = [(ida, "step-1/student-0-0", 0), (ida, "step-1/student-0-1", 0),  # a: unsolved at step 1,
                (ida, "step-2/student-0-0", 1), (ida, "step-2/student-0-0", 1),  # solved at step 2,
                (ida, "step-3/student-0-0", 0),                                  # the current step: ignored
                (idb, "step-1/student-0-0", 1), (idb, "step-1/student-0-0", None),  # unscored: left out
                (idc, "step-1/student-0-0/srl-0", 1)]  # an SRL step rollout (phase srl): not history
        store.add_rollouts(run_id=run, rows=[{"problem_id": pid, "phase": "srl" if "srl" in ref else "student",
                                              "ref": ref, "completion": "x", "correct": ok} for pid, ref, ok in rows])
        ids = {a.question: ida, b.question: idb, c.question: idc, "unknown": None}
        assert srpo.stored_history(store, run, ids, step=3, page=2) == {a.question: [1.0, 1.0], b.question: [1.0]}
        assert srpo.stored_history(store, run, ids, step=2) == {a.question: [0.0, 0.0], b.question: [1.0]}


def test_short_srpo_training_end_to_end_raises_the_reward(random_tiny):
    """trainer("srpo") with its defaults (stage 1 = levels 2-3, stage 2 = all from step 15, no KL) but
    over-length masking off (the random model never finishes within 8 tokens): the reward of a task the
    tiny model can learn in seconds rises, as the core's learning check asks of RLOO."""
    model, tokenizer = random_tiny
    records = []
    cfg = StudentSection(batch_prompts=4, group_size=8, max_new_tokens=8, lr=3e-3, steps=30, srpo_mask_overlong=False)
    student, metrics = trainer("srpo")(model, tokenizer, _problems((1, 2, 3)), arith, cfg,
                                       reward_fn=even_character_share, seed=0, log=records.append)
    rewards = [r["reward_mean"] for r in records]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert metrics.steps == 30 and metrics.updates >= 25 and metrics.kl == 0
    assert last > first + 0.25, f"reward did not rise: first 5 steps {first:.3f}, last 5 {last:.3f}"


@pytest.mark.parametrize("key, value", [("srpo_resample_every", "-1"), ("srpo_switch_step", "-2"),
                                        ("srpo_plateau_window", "-1"), ("srpo_kl_coef", "-0.1"),
                                        ("srpo_stage1", '"easy"'), ("srpo_stage2", '"none"')])
def test_srpo_options_are_validated(key, value):
    from soar_agent.config import ConfigError

    with pytest.raises(ConfigError, match=f"student.{key}"):
        load_config(None, [f"student.{key}={value}"])
    assert load_config(None, ['student.backend="srpo"']).student.backend == "srpo"
