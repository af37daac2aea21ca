"""Student RL core: advantages and loss against hand-computed numbers, log-prob recomputation against the
engine, and short training runs on a tiny random model (every trainable parameter moves, nothing else)."""

import math
import random

import pytest
import torch

from soar_agent.config import StudentSection
from soar_agent.engine import HFEngine
from soar_agent.models import add_lora
from soar_agent.rl import (NonFiniteLoss, Rollout, clipped_surrogate, grpo_advantages, k3_kl, policy_step, reward_correct,
                           rloo_advantages, rollout, sequence_logprobs, train_student)
from soar_agent.tasks import arith

NAN = math.nan


def test_rloo_advantages_hand_computed():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 3.0]])
    expected = torch.tensor([[2 / 3, -2 / 3, -2 / 3, 2 / 3], [-1.0, -1.0, -1.0, 3.0]])
    assert torch.allclose(rloo_advantages(rewards), expected)
    assert torch.allclose(rloo_advantages(rewards).sum(-1), torch.zeros(2), atol=1e-6)


def test_grpo_advantages_use_sample_std():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    s = math.sqrt(1 / 3)  # sample std of [1, 0, 0, 1]
    expected = torch.tensor([[0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s], [0.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(grpo_advantages(rewards), expected, atol=1e-5)


def test_unscorable_rewards_get_zero_advantage_and_leave_the_baseline():
    rewards = torch.tensor([[1.0, NAN, 0.0, 1.0], [NAN, 1.0, NAN, NAN], [NAN, NAN, NAN, NAN]])
    rloo = rloo_advantages(rewards)
    assert torch.allclose(rloo, torch.tensor([[0.5, 0.0, -1.0, 0.5], [0.0] * 4, [0.0] * 4]))
    grpo = grpo_advantages(rewards)
    s = math.sqrt(1 / 3)  # sample std of [1, 0, 1]
    assert torch.allclose(grpo, torch.tensor([[(1 / 3) / s, 0.0, (-2 / 3) / s, (1 / 3) / s], [0.0] * 4, [0.0] * 4]),
                          atol=1e-5)
    assert not torch.isnan(rloo).any() and not torch.isnan(grpo).any()


def _surrogate_example():
    # ratios row 0: [1.5, 0.5] with A=+1; row 1: [0.5, 1.5] with A=-1; row 2: [1.1] (one token) with A=+1
    ratios = torch.tensor([[1.5, 0.5], [0.5, 1.5], [1.1, 1.0]])
    new = torch.log(ratios)
    new[2, 1] = 7.0  # padding: must not matter
    new.requires_grad_(True)
    old = torch.zeros(3, 2)
    mask = torch.tensor([[1, 1], [1, 1], [1, 0]])
    return new, old, torch.tensor([1.0, -1.0, 1.0]), mask


@pytest.mark.parametrize("aggregation, expected", [
    # per-token losses: row 0 [-1.28 (clipped high), -0.5], row 1 [0.8 (clipped low), 1.5], row 2 [-1.1]
    ("token", (-1.28 - 0.5 + 0.8 + 1.5 - 1.1) / 5),
    ("sequence", ((-1.28 - 0.5) / 2 + (0.8 + 1.5) / 2 - 1.1) / 3),
])
def test_clipped_surrogate_hand_computed(aggregation, expected):
    new, old, advantages, mask = _surrogate_example()
    loss, stats = clipped_surrogate(new, old, advantages, mask, eps_low=0.2, eps_high=0.28, aggregation=aggregation)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["clip_fraction"] == pytest.approx(2 / 5)
    assert stats["ratio_mean"] == pytest.approx((1.5 + 0.5 + 0.5 + 1.5 + 1.1) / 5, abs=1e-6)
    loss.backward()
    grad = new.grad
    assert grad[0, 0] == 0 and grad[1, 0] == 0, "clipped tokens carry no gradient"
    assert grad[2, 1] == 0, "padding carries no gradient"
    assert grad[0, 1] != 0 and grad[1, 1] != 0 and grad[2, 0] != 0


def test_k3_kl_zero_when_equal_positive_otherwise():
    new = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -4.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert torch.equal(k3_kl(new, new.clone(), mask), torch.zeros(2, 3))
    ref = new + torch.tensor([[1.0, -0.5, 0.2], [0.1, 2.0, 5.0]])
    kl = k3_kl(new, ref, mask)
    assert (kl[mask.bool()] > 0).all() and kl[1, 2] == 0
    assert kl[0, 0].item() == pytest.approx(math.e - 2, abs=1e-6)


def test_sequence_logprobs_match_the_engine(random_tiny):
    model, tokenizer = random_tiny
    prompts = [arith.student_prompt("3+4"), arith.student_prompt("(12-7)*3+100-2")]
    outputs = HFEngine(model, tokenizer).generate(prompts, n=3, temperature=1.0, max_new_tokens=10, seed=2)
    prompt_ids, completion_ids, recorded = [], [], []
    for prompt, row in zip(prompts, outputs):
        for completion in row:
            prompt_ids.append(tokenizer(prompt)["input_ids"])
            completion_ids.append(completion.token_ids)
            recorded.append(completion.logprobs)
    with torch.no_grad():
        logprobs, mask, entropy = sequence_logprobs(model, prompt_ids, completion_ids, tokenizer.pad_token_id)
    assert mask.sum(-1).tolist() == [len(c) for c in completion_ids]
    for row, expected in enumerate(recorded):
        assert torch.allclose(logprobs[row, :len(expected)], torch.tensor(expected), atol=1e-4)
    assert (entropy[mask] > 0).all() and (entropy[~mask] == 0).all()


# ---------------------------------------------------------------- training runs


def _cfg(**overrides):
    base = dict(batch_prompts=2, group_size=4, max_new_tokens=8, lr=1e-2, kl_coef=0.05, steps=3)
    return StudentSection(**{**base, **overrides})


def _problems():
    rng = random.Random(0)
    return [arith.generate(level, rng) for level in (1, 2, 3)]


def even_character_share(problems, completions):
    """Mixed rewards from a random model: the share of characters with an even code point."""
    return [sum(ord(ch) % 2 == 0 for ch in text) / max(1, len(text)) for text in completions]


def _snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _changed(model, before):
    return {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}


@pytest.mark.parametrize("backend, aggregation", [("rloo", "token"), ("grpo", "sequence")])
def test_train_student_moves_every_parameter_and_not_the_baseline(random_tiny, backend, aggregation):
    model, tokenizer = random_tiny
    before = _snapshot(model)
    records = []
    student, metrics = train_student(model, tokenizer, _problems(), arith, _cfg(backend=backend,
                                     loss_aggregation=aggregation), reward_fn=even_character_share, seed=1,
                                     log=records.append)
    assert student is not model
    assert _changed(model, before) == set(), "the baseline must not change"
    assert _changed(student, before) == set(before), "every trainable parameter must change"
    assert metrics.steps == 3 and metrics.updates == 3 and len(metrics.per_step) == 3 and records == metrics.per_step
    assert 0 < metrics.reward_mean < 1 and metrics.zero_std_fraction < 1
    assert 0 < metrics.completion_length <= 8 and metrics.entropy > 0 and metrics.tokens_per_second > 0
    assert metrics.kl >= 0 and math.isfinite(metrics.loss)
    assert metrics.per_step[0]["kl"] == pytest.approx(0, abs=1e-6), "first rollout is from the baseline itself"


def test_train_student_lora_moves_only_the_adapter(random_tiny):
    model, tokenizer = random_tiny
    lora = add_lora(model, rank=4, alpha=8)
    before = _snapshot(lora)
    trainable = {name for name, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    student, metrics = train_student(lora, tokenizer, _problems(), arith, _cfg(), reward_fn=even_character_share)
    assert _changed(lora, before) == set()
    assert _changed(student, before) == trainable
    assert metrics.updates == 3


def test_equal_rewards_change_nothing(random_tiny):
    model, tokenizer = random_tiny
    before = _snapshot(model)
    student, metrics = train_student(model, tokenizer, _problems(), arith, _cfg(steps=2),
                                     reward_fn=lambda problems, completions: [1.0] * len(completions))
    assert _changed(student, before) == set()
    assert metrics.updates == 0 and metrics.zero_std_fraction == 1.0 and metrics.reward_std == 0.0


def test_unscorable_rewards_are_ignored(random_tiny):
    model, tokenizer = random_tiny
    student, metrics = train_student(model, tokenizer, _problems(), arith, _cfg(steps=1),
                                     reward_fn=lambda problems, completions: [None] * len(completions))
    assert metrics.updates == 0 and metrics.reward_mean == 0.0


def test_non_finite_reward_raises_and_does_not_step(random_tiny):
    model, tokenizer = random_tiny
    before = _snapshot(model)

    def exploding(problems, completions):
        return [float("inf")] + [0.0] * (len(completions) - 1)

    with pytest.raises(NonFiniteLoss, match="step 0"):
        train_student(model, tokenizer, _problems(), arith, _cfg(), reward_fn=exploding)
    assert _changed(model, before) == set()


def test_reward_correct_uses_the_domain_verifier():
    problem = arith.make_problem("3+4")
    reward = reward_correct(arith)
    assert reward([problem] * 3, ["1. x\nAnswer: 7", "Answer: 8", "7"]) == [1.0, 0.0, 0.0]


def test_rollout_appends_eos_and_the_update_is_on_policy(random_tiny, monkeypatch):
    model, tokenizer = random_tiny
    engine = HFEngine(model, tokenizer)
    sample = engine.generate

    def first_of_each_group_stops(*args, **kwargs):
        outputs = sample(*args, **kwargs)
        for row in outputs:
            row[0].finish_reason = "stop"
        return outputs

    monkeypatch.setattr(engine, "generate", first_of_each_group_stops)
    batch = rollout(engine, tokenizer, arith, _problems()[:2], group_size=3, temperature=1.0, max_new_tokens=6,
                    seed=0)
    assert len(batch.texts) == 6 and batch.problems[2] is batch.problems[0]
    assert batch.problems[3] is not batch.problems[0]
    for row in (0, 3):
        assert batch.completion_ids[row][-1] == tokenizer.eos_token_id and math.isnan(batch.old_logprobs[row][-1])
    assert all(len(c) == len(lp) for c, lp in zip(batch.completion_ids, batch.old_logprobs))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stats = policy_step(model, optimizer, batch, torch.tensor([1.0, -1.0, 0.0, 1.0, -1.0, 0.0]), _cfg(kl_coef=0.0),
                        tokenizer.pad_token_id)
    assert stats["updated"] and stats["grad_norm"] > 0
    assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-4) and stats["clip_fraction"] == 0


def test_reward_rises_on_a_tiny_task(random_tiny):
    """The learning check of the suite (the fast sibling of bench/student_learns.py) for the RL recipe (rloo,
    and the default sft-rlvr's RL phase; its supervised phase has tests/test_sft.py's held-out check): RLOO,
    token aggregation, KL, clipping, only the learning rate scaled to the tiny random model, must
    raise the reward of a task the model can learn in seconds. Fails if the update's sign, the advantage
    or the log-prob alignment is wrong."""
    model, tokenizer = random_tiny
    records = []
    cfg = StudentSection(batch_prompts=4, group_size=8, max_new_tokens=8, lr=3e-3, steps=30)
    train_student(model, tokenizer, _problems(), arith, cfg, reward_fn=even_character_share, seed=0,
                  log=records.append)
    rewards = [r["reward_mean"] for r in records]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.25, f"reward did not rise: first 5 steps {first:.3f}, last 5 {last:.3f}"


def test_loss_uses_the_sampling_temperature(random_tiny):
    model, tokenizer = random_tiny
    prompt, completion = [[1, 5, 6, 7]], [[8, 9, 10]]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt[0] + completion[0]])).logits[0]  # (L, V)
        expected = torch.log_softmax(logits / 0.5, dim=-1)[torch.arange(3, 6), torch.tensor(completion[0])]
        tempered, _, _ = sequence_logprobs(model, prompt, completion, tokenizer.pad_token_id, temperature=0.5)
    assert torch.allclose(tempered[0], expected, atol=1e-5)
    batch = Rollout([None], prompt, completion, [[0.0, 0.0, 0.0]], [""], 1, 3, 1.0)  # wrong T=1 "old" values
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
    stats = policy_step(model, optimizer, batch, torch.tensor([1.0]), _cfg(temperature=0.5, kl_coef=0.0),
                        tokenizer.pad_token_id)
    assert stats["ratio_mean"] == pytest.approx(1.0), "at T != 1 the update is on-policy under the tempered policy"
