"""SRL (soar_agent/rl/srl.py): step prompts, the step-similarity reward, dynamic sampling, learning."""

import difflib
import random

import pytest
import torch

from soar_agent.config import RunConfig, StudentSection
from soar_agent.rl import trainer
from soar_agent.rl import srl
from soar_agent.tasks import arith
from soar_agent.tasks.base import Problem


def test_step_prompts_walk_the_expert_solution():
    problem = arith.make_problem("2+(5+5)")
    examples = srl.step_prompts(arith, problem)
    assert [e.expert_step for e in examples] == ["1. **add** 5+5=10, 2+10", "2. **add** 2+10=12", "Answer: 12"]
    head = "Problem: 2+(5+5)\nSolution:\n"
    assert examples[0].prompt == head
    assert examples[1].prompt == head + "1. **add** 5+5=10, 2+10\n"
    assert examples[2].prompt == head + "1. **add** 5+5=10, 2+10\n2. **add** 2+10=12\n"
    assert srl.step_prompts(arith, Problem("x", "1", "math")) == []  # no expert steps: no SRL example


@pytest.mark.parametrize("text, expected", [
    ("1. Add 2 and 3 to get 5.\n2. Multiply by 4: 20.\n", ("Add 2 and 3 to get 5.", "Multiply by 4: 20.")),
    ("1) first\n   continued\n2) second", ("first continued", "second")),
    ("We add.\n\nThen we multiply.", ("We add.", "Then we multiply.")),
])
def test_split_solution(text, expected):
    assert srl.split_solution(text) == expected


@pytest.mark.parametrize("text", ["", "   \n  ", "1.\n2. something"])
def test_split_solution_rejects_unusable_solutions(text):
    with pytest.raises(ValueError):
        srl.split_solution(text)


def test_step_reward_is_sequence_matcher_ratio_and_minus_one_on_bad_format():
    expert = "1. **add** 5+5=10, 2+10"
    action = "1. **add** 5+5=11, 2+11"
    assert srl.step_reward(action, expert, think=False) == pytest.approx(
        difflib.SequenceMatcher(None, action, expert).ratio())
    assert srl.step_reward(expert, expert, think=False) == 1.0
    assert srl.step_reward(expert + "\n2. more", expert, think=False) == 1.0  # only the first line is the action
    assert srl.step_reward("", expert, think=False) == -1.0
    assert srl.step_reward(expert, expert, think=False, finished=False) == -1.0  # ran into the token budget
    # with think: only what follows </think> is scored; a missing </think> is a violation
    assert srl.step_reward("<think>5+5 is 10</think>\n" + expert, expert, think=True) == 1.0
    assert srl.step_reward("<think>unfinished " + expert, expert, think=True) == -1.0
    assert srl.step_reward(expert, expert, think=True) == -1.0


def test_dynamic_sampling_keeps_only_groups_with_spread():
    rewards = torch.tensor([[0.5, 0.5, 0.5], [0.2, 0.9, 0.4], [-1.0, -1.0, -1.0], [0.50, 0.505, 0.50]])
    assert srl.keep_informative(rewards, 0.01).tolist() == [False, True, False, False]
    assert srl.keep_informative(rewards, 0.0).tolist() == [False, True, False, True]


def _cfg(**overrides):
    base = dict(batch_prompts=4, group_size=4, max_new_tokens=40, lr=1e-3, kl_coef=0.0, steps=2)
    return StudentSection(**{**base, **overrides})


def test_dynamic_sampling_refills_and_skips_uninformative_steps(random_tiny, monkeypatch):
    model, tokenizer = random_tiny
    problems = [arith.generate(2, random.Random(i)) for i in range(6)]
    calls = []

    def constant_then_mixed(completion, expert_step, think, finished=True):
        calls.append(completion)
        return 0.0 if len(calls) <= 16 else float(len(calls) % 3)  # first round: every group flat

    monkeypatch.setattr(srl, "step_reward", constant_then_mixed)
    records = []
    srl.train_srl(model, tokenizer, problems, arith, _cfg(steps=1), log=records.append)
    (record,) = records
    assert record["sampled_prompts"] > 4, "the dropped prompts were refilled"
    assert record["dropped_prompts"] == 4 and record["updated"]

    monkeypatch.setattr(srl, "step_reward", lambda *args, **kwargs: 0.5)
    records = []
    student, metrics = srl.train_srl(model, tokenizer, problems, arith, _cfg(steps=1), log=records.append)
    assert records[0]["sampled_prompts"] == 4 * (1 + srl.MAX_REFILL_ROUNDS) and not records[0]["updated"]
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), model.parameters()))


def test_backend_dispatch_and_config():
    assert trainer("srl") is srl.train_srl and trainer("srl-rlvr") is srl.train_srl_then_rlvr
    cfg = RunConfig()
    assert cfg.student.srl_epsilon == 0.01 and not cfg.student.srl_think


def test_srl_raises_step_similarity_of_the_shipped_model():
    """The learning check: SRL on three level-6 arith problems (past the shipped model's edge) raises the
    mean step similarity of the student's samples over 12 steps; fails if the reward or update is wrong."""
    from soar_agent.models import load_model, load_tokenizer

    torch.manual_seed(0)
    model, tokenizer = load_model("default"), load_tokenizer("default")
    problems = [arith.generate(6, random.Random(i)) for i in range(3)]
    records = []
    cfg = _cfg(batch_prompts=6, group_size=6, lr=3e-4, steps=12, temperature=1.0)
    _, metrics = srl.train_srl(model, tokenizer, problems, arith, cfg, seed=0, log=records.append)
    rewards = [r["reward_mean"] for r in records]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert metrics.updates >= 10
    assert last > first + 0.04, f"step similarity did not rise: first 4 steps {first:.3f}, last 4 {last:.3f}"


def test_user_solutions_become_expert_steps_and_bad_ones_are_rejected_one_by_one(tmp_path, capsys):
    from soar_agent.tasks import math as math_domain

    rows = [{"question": "What is 2+3?", "answer": "5", "solution": "1. Add 2 and 3.\n2. The sum is 5."},
            {"question": "What is 4*2?", "answer": "8", "steps": ["Multiply 4 by 2.", "It is 8."]},
            {"question": "Bad list", "answer": "1", "steps": ["ok", "   "]},
            {"question": "Bad solution", "answer": "1", "solution": "   "},
            {"question": "Too long", "answer": "1", "steps": ["x" * (math_domain.MAX_STEP_CHARS + 1)]},
            {"question": "No steps", "answer": "2"}]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(__import__("json").dumps(r) for r in rows) + "\n")
    problems = math_domain.load_problems(path)
    assert [p.question for p in problems] == ["What is 2+3?", "What is 4*2?", "No steps"]
    assert problems[0].steps == ("Add 2 and 3.", "The sum is 5.") and problems[2].steps == ()
    err = capsys.readouterr().err
    for line in (3, 4, 5):
        assert f"{path}:{line}:" in err
    assert "3 item(s) rejected" in err


def test_steps_longer_than_the_token_budget_are_left_out(random_tiny):
    model, tokenizer = random_tiny
    problem = arith.make_problem("(3+1)*(13+(14+(6-4)))")
    records = []
    srl.train_srl(model, tokenizer, [problem], arith, _cfg(steps=1, max_new_tokens=12), log=records.append)
    assert records[0]["steps_over_budget"] == len(srl.step_prompts(arith, problem)) - 1  # only "Answer: 116" fits
