"""The grounded reward's metrics (greedy, sampled, expert-logprob) with their paired standard errors, the
curated mode, and where the reward and its standard error are shown (`soar status`)."""

import json
import math
import random

import pytest
import torch

import soar_agent.teacher as teacher
from soar_agent.agent import Agent, Budget, check_run_config
from soar_agent.config import ConfigError, load_config
from soar_agent.mining import write_jsonl
from soar_agent.models import EMBEDDED_MODEL_DIR
from soar_agent.reward import (expert_logprob_unusable, expert_logprobs, paired_reward, pooled_reward, question_means,
                               question_scores)
from soar_agent.status import format_status, run_status
from soar_agent.store import content_hash
from soar_agent.tasks import arith, generate_problems
from soar_agent.tasks.base import Problem

needs_embedded = pytest.mark.skipif(not (EMBEDDED_MODEL_DIR / "config.json").is_file(),
                                    reason="embedded model not built")

TINY = ["teacher.datasets_per_step=2", "teacher.items_per_dataset=2", "teacher.max_new_tokens=8",
        "student.students_per_dataset=2", "student.steps=1", "student.batch_prompts=2", "student.group_size=2",
        "student.max_new_tokens=8", "reward.questions=4", "reward.samples=2", "eval.samples=1",
        "eval.every_teacher_steps=100", "eval.max_new_tokens=8", "promotion.tau=-1.0", "budget.pq_steps=0"]


def test_paired_reward_is_the_mean_difference_with_its_standard_error():
    before, after = [0.0, 0.5, 1.0, 0.25], [0.5, 0.5, 1.0, 1.0]
    reward, stderr = paired_reward(before, after)
    diffs = [0.5, 0.0, 0.0, 0.75]
    assert reward == pytest.approx(sum(diffs) / 4)
    mean = sum(diffs) / 4
    assert stderr == pytest.approx(math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3) / 2)
    assert paired_reward([0.3] * 5, [0.3] * 5) == (0.0, 0.0)  # a student identical to its baseline
    assert paired_reward([0.1], [0.2])[1] is None
    with pytest.raises(ValueError):
        paired_reward([0.1, 0.2], [0.3])


def test_pooled_reward_averages_students_question_by_question():
    # two students whose errors cancel question by question: the pooled stderr is 0, their mean 0.25
    a, b = [0.5, 0.0, 0.5, 0.0], [0.0, 0.5, 0.0, 0.5]
    assert question_means([a, b, []]) == [0.25] * 4
    assert pooled_reward([a, b]) == (pytest.approx(0.25), pytest.approx(0.0))
    assert pooled_reward([[], []]) == (None, None)


def test_expert_logprob_needs_expert_steps():
    from soar_agent.tasks import math as math_domain

    with_steps = generate_problems(arith, [2, 3], random.Random(1))
    assert expert_logprob_unusable(arith, with_steps) is None
    assert expert_logprob_unusable(arith, with_steps + [Problem("1+1", "2", "arith")]) == (
        "1 of 3 hard-train questions have no expert steps")
    assert expert_logprob_unusable(math_domain, [Problem("1+1", "2", "math", steps=("1+1=2",))]) == (
        "the math domain has no expert solutions")


def test_a_run_with_expert_logprob_and_no_steps_is_scored_with_sampled_and_says_so(tmp_path):
    write_jsonl([Problem("1+2*3", "7", "arith", 3)], tmp_path / "train.jsonl")
    config = load_config(None, ["reward.metric=expert-logprob",
                                f"domain.hard_train={json.dumps(str(tmp_path / 'train.jsonl'))}"])
    said = []
    agent = Agent.open(config, tmp_path / "run", log=said.append)
    assert agent.config.reward.metric == "sampled"  # what runs is what the store records
    assert agent.store.latest_run()["config"]["reward"]["metric"] == "sampled"
    (event,) = [e for e in agent.store.events(agent.run_id) if e["kind"] == "reward-metric-fallback"]
    assert event["level"] == "warning" and "1 of 1 hard-train questions have no expert steps" in event["message"]
    assert f"note: {event['message']}" in said
    # with expert steps (the shipped hard set) nothing changes and nothing is said
    kept = Agent.open(load_config(None, ["reward.metric=expert-logprob"]), tmp_path / "shipped", log=said.append)
    assert kept.config.reward.metric == "expert-logprob"
    assert not [e for e in kept.store.events(kept.run_id) if e["kind"] == "reward-metric-fallback"]
    with pytest.raises(ConfigError, match="domain.curated"):
        check_run_config(load_config(None, ["run.mode=curated", "domain.name=math"]))
    with pytest.raises(ConfigError, match="no such file"):
        check_run_config(load_config(None, ["run.mode=curated", 'domain.curated="nope.jsonl"']))


def test_expert_logprob_is_the_mean_token_logprob_of_the_expert_solution(random_tiny):
    model, tokenizer = random_tiny
    problems = generate_problems(arith, [2, 4, 3], random.Random(2))
    scores = expert_logprobs(model, tokenizer, arith, problems, batch_size=2)  # padding across batches
    for problem, got in zip(problems, scores):
        prompt = tokenizer(arith.student_prompt(problem.question), add_special_tokens=True)["input_ids"]
        target = tokenizer(arith.expert_completion(problem), add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + target])).logits[0]
        logp = torch.log_softmax(logits[len(prompt) - 1:-1].float(), -1).gather(-1, torch.tensor(target)[:, None])
        assert got == pytest.approx(logp.mean().item(), abs=1e-4)


@needs_embedded
def test_expert_logprob_tells_a_trained_model_from_a_random_one(random_tiny):
    from soar_agent.models import load_model, load_tokenizer

    problems = generate_problems(arith, [3] * 4, random.Random(3))
    trained = expert_logprobs(load_model("default"), load_tokenizer("default"), arith, problems)
    untrained = expert_logprobs(*random_tiny, arith, problems)
    assert min(trained) > max(untrained) + 1.0


@needs_embedded
def test_sampled_scores_are_paired_by_the_seed():
    from soar_agent.models import load_model, load_tokenizer

    model, tokenizer = load_model("default"), load_tokenizer("default")
    problems = generate_problems(arith, [4] * 6, random.Random(4))
    kwargs = dict(samples=4, temperature=1.0, max_new_tokens=200)
    first = question_scores(model, tokenizer, arith, problems, "sampled", seed=11, **kwargs)
    assert 0.0 < sum(first) < len(first)  # neither all right nor all wrong: the scores can move
    assert question_scores(model, tokenizer, arith, problems, "sampled", seed=11, **kwargs) == first
    others = [question_scores(model, tokenizer, arith, problems, "sampled", seed=s, **kwargs) for s in (12, 13)]
    assert any(o != first for o in others)  # the seed, not luck, makes the repeat identical


def fixed_items(engine, domain, count, cfg, seed, progress=None):
    items = [teacher.check_item(domain, f"<question>{i}+{seed % 7}</question><answer>0</answer>", "verified")
             for i in range(count)]
    return items, {"sampled": count, "accepted": count, "rejected": {}}


@pytest.mark.parametrize("metric", ["sampled", "expert-logprob"])
def test_a_teacher_step_stores_each_reward_with_its_standard_error(tmp_path, hard_files, random_tiny_dir,
                                                                   monkeypatch, metric):
    monkeypatch.setattr(teacher, "sample_items", fixed_items)
    config = load_config(None, TINY + hard_files + [f"model.path={json.dumps(str(random_tiny_dir))}",
                                                    f"reward.metric={metric}"])
    agent = Agent.open(config, tmp_path / "run", log=lambda m: None)
    agent.run(Budget(max_teacher_steps=1))
    store, run = agent.store, agent.run_id
    (step,) = store.teacher_steps(run)
    trainings = store.trainings(run, 1)
    assert len(trainings) == 4
    for t in trainings:
        assert t["metrics"]["reward_metric"] == metric and len(t["metrics"]["reward_differences"]) == 4
        reward, stderr = paired_reward([0.0] * 4, t["metrics"]["reward_differences"])
        assert t["reward"] == pytest.approx(reward, abs=1e-5)
        assert t["metrics"]["reward_stderr"] == pytest.approx(stderr, abs=1e-5)
    # a random model never solves a problem, so no student took an update: paired scores make their reward
    # exactly 0 (sampled: the same seed before and after), not noise around 0
    assert all(t["metrics"]["updates"] == 0 and t["reward"] == 0.0 and t["metrics"]["reward_stderr"] == 0.0
               for t in trainings)
    expected = pooled_reward([question_means([t["metrics"]["reward_differences"] for t in trainings
                                              if t["dataset_id"] == d]) for d in {t["dataset_id"] for t in trainings}])
    assert step["metrics"]["reward_metric"] == metric
    assert step["mean_reward"] == pytest.approx(expected[0], abs=1e-5)
    assert step["metrics"]["reward_stderr"] == pytest.approx(expected[1], abs=1e-5)
    assert set(step["metrics"]["dataset_reward_stderr"]) == {str(t["dataset_id"]) for t in trainings}

    status = json.loads(json.dumps(run_status(tmp_path / "run")))  # what `soar status --json` prints
    texts = [t for d in store.datasets(run, kind="curriculum") for t in d["meta"]["texts"]]
    right = sum(bool(teacher.check_item(arith, t, "verified").verified) for t in texts) / len(texts)
    assert status["reward_metric"] == metric
    assert status["steps"] == [{"step": 1, "reward": step["mean_reward"], "reward_stderr": step["metrics"]["reward_stderr"],
                                "moving_average": step["moving_average"], "promoted": True,
                                "kept": 1.0,  # the test's sampler keeps every sample
                                # its teacher answers are checked by the solver; the random model's students
                                # neither match them nor have worked solutions to imitate
                                "teacher_right": right, "students_updated": 0, "students": len(trainings)}]
    text = format_status(status)
    assert f"{step['mean_reward']:+.4f} ± {step['metrics']['reward_stderr']:.4f}" in text and "promoted" in text


@pytest.mark.parametrize("source", ["generator", "jsonl"])
def test_curated_mode_trains_the_baseline_on_curated_problems_only(tmp_path, hard_files, random_tiny_dir, source):
    extra = []
    hard_train = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    if source == "jsonl":
        curated = generate_problems(arith, [1, 2, 3] * 3, random.Random(9))
        # a hard-train question in the user's file must not reach a student with its answer
        curated.append(Problem(hard_train[0]["question"], hard_train[0]["answer"], "arith", 6))
        write_jsonl(curated, tmp_path / "curated.jsonl")
        extra = [f"domain.curated={json.dumps(str(tmp_path / 'curated.jsonl'))}"]
    config = load_config(None, TINY + hard_files + extra + [f"model.path={json.dumps(str(random_tiny_dir))}",
                                                            "run.mode=curated", "reward.metric=expert-logprob"])
    agent = Agent.open(config, tmp_path / "run", log=lambda m: None)
    agent.run(Budget(max_teacher_steps=2))
    store, run = agent.store, agent.run_id
    steps = store.teacher_steps(run)
    assert [s["status"] for s in steps] == ["complete", "complete"]
    # each step logs the event `soar status` reads as the phase while it runs (not the session start's)
    assert [e["data"]["step"] for e in store.events(run, limit=10_000) if e["kind"] == "chain-step"] == [1, 2]
    running = {**run_status(tmp_path / "run"), "status": "running", "phase": "chain-step"}
    assert "running: training the baseline (no teacher in this mode)" in format_status(running)
    assert all(s["metrics"]["mode"] == "curated" and s["metrics"]["reward_stderr"] is not None for s in steps)
    assert len(store.trainings(run)) == 2 * 4  # g * r trainings per step: the compute of a SOAR step
    assert store.datasets(run, kind="curriculum") == []  # no teacher
    assert [c["teacher_step"] for c in store.checkpoints(run, role="baseline")] == [1, 2]  # updated every step
    hard = {content_hash("arith", q["question"]) for q in hard_train}
    trained = {r["problem_id"] for r in store.rollouts(run, phase="student", limit=100_000)}
    questions = {store.get_problem(pid)["question"] for pid in trained}
    assert trained and not hard & {content_hash("arith", q) for q in questions}
    if source == "jsonl":
        assert questions <= {p.question for p in curated}
    else:
        levels = {store.get_problem(pid)["level"] for pid in trained}
        assert len(levels) >= 4  # drawn across the domain's levels, not the hard levels only
