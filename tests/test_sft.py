"""sft-rlvr (soar_agent/rl/sft.py): supervised steps on expert solutions, then RLOO from those weights."""

import math
import random

import pytest
import torch

from soar_agent.config import StudentSection, apply_overrides, RunConfig
from soar_agent.rl import sft, trainer, train as rl_train
from soar_agent.rl.train import pad_token_id, sequence_logprobs
from soar_agent.tasks import arith
from soar_agent.baselines import curated_problems
from soar_agent.tasks.base import Problem


def _cfg(**overrides):
    base = dict(batch_prompts=2, group_size=4, max_new_tokens=120, lr=1e-3, sft_lr=3e-3, kl_coef=0.0, steps=4)
    return StudentSection(**{**base, **overrides})


def _problems(count, seed=0, level=2):
    return [arith.generate(level, random.Random(seed + i)) for i in range(count)]


def expert_nll(model, tokenizer, problems) -> float:
    """Mean per-token negative log-likelihood of the problems' expert completions (+ EOS)."""
    batch = sft.expert_rows(tokenizer, arith, problems)
    with torch.no_grad():
        logprobs, mask, _ = sequence_logprobs(model, batch.prompt_ids, batch.completion_ids, pad_token_id(tokenizer))
    return -(logprobs.sum() / mask.sum()).item()


def test_expert_rows_are_the_expert_completion_and_eos(random_tiny):
    _, tokenizer = random_tiny
    problem = arith.make_problem("2+(5+5)")
    batch = sft.expert_rows(tokenizer, arith, [problem])
    assert tokenizer.decode(batch.prompt_ids[0], skip_special_tokens=True) == "Problem: 2+(5+5)\nSolution:\n"
    assert batch.completion_ids[0][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(batch.completion_ids[0][:-1]) == "1. **add** 5+5=10, 2+10\n2. **add** 2+10=12\nAnswer: 12"


def test_sft_steps_lower_the_expert_nll_on_held_out_problems(random_tiny):
    """The learning check: supervised steps on some problems' expert solutions make the expert solutions of
    other problems of the same level more likely; fails if the update's sign or its targets are wrong."""
    model, tokenizer = random_tiny
    train, held_out = _problems(32), _problems(16, seed=1000)
    before = expert_nll(model, tokenizer, held_out)
    records = []
    student, per_step = sft.train_sft(model, tokenizer, train, arith, _cfg(), steps=12, log=records.append)
    after = expert_nll(student, tokenizer, held_out)
    assert after < before - 0.5, f"held-out expert NLL {before:.3f} -> {after:.3f}"
    assert records == per_step and [r["phase"] for r in per_step] == ["sft"] * 12
    # the logged loss is the training NLL
    assert per_step[0]["loss"] == pytest.approx(expert_nll(model, tokenizer, train[:8]), rel=0.05)
    assert per_step[-1]["loss"] < per_step[0]["loss"] - 0.5
    assert expert_nll(model, tokenizer, held_out) == pytest.approx(before)  # the baseline is not mutated


def test_sft_warms_up_to_sft_lr_and_trains_batch_prompts_x_group_size_rows(random_tiny, monkeypatch):
    model, tokenizer = random_tiny
    seen = []

    def recording_step(student, optimizer, batch, advantages, cfg, pad_id, reference=None, surrogate=None):
        seen.append((optimizer.param_groups[0]["lr"], len(batch.completion_ids), advantages.tolist(), cfg.kl_coef))
        return {"loss": 1.0, "kl": 0.0, "entropy": 0.0, "clip_fraction": 0.0, "ratio_mean": 1.0, "grad_norm": 0.0,
                "updated": True}

    monkeypatch.setattr(sft, "policy_step", recording_step)
    sft.train_sft(model, tokenizer, _problems(12), arith, _cfg(sft_lr=1e-2, kl_coef=0.5), steps=20)
    lrs = [lr for lr, *_ in seen]
    assert lrs[0] == pytest.approx(5e-3) and lrs[1:] == pytest.approx([1e-2] * 19)  # warmup: 10% of 20 steps
    assert all(rows == 8 and adv == [1.0] * 8 and kl == 0.0 for _, rows, adv, kl in seen)
    seen.clear()  # fewer expert solutions than a step's rows: a step takes each once
    sft.train_sft(model, tokenizer, _problems(5), arith, _cfg(), steps=2)
    assert [rows for _, rows, *_ in seen] == [5, 5]


def test_sft_rlvr_makes_at_most_one_pass_over_the_expert_solutions(random_tiny, monkeypatch):
    """Supervised steps past one pass over the curriculum's expert solutions go to RL (recycling a small pool
    lowered held-out accuracy: -14.3 points for 7 steps on 16 problems, bench/README.md)."""
    model, tokenizer = random_tiny
    cfg = _cfg(steps=10, sft_share=0.9)  # 9 supervised steps of 2 x 4 rows wanted
    assert sft.sft_steps_of(cfg, 10) == 9 and sft.sft_steps_of(cfg, 10, 80) == 9
    assert sft.sft_steps_of(cfg, 10, 17) == 3 and sft.sft_steps_of(cfg, 10, 16) == 2
    assert sft.sft_steps_of(cfg, 10, 5) == 1 and sft.sft_steps_of(cfg, 10, 0) == 0
    rl_steps, trained = [], []
    monkeypatch.setattr(sft, "train_student",
                        lambda baseline, *a, steps, **k: rl_steps.append(steps) or (baseline, rl_train.StudentMetrics()))
    real_train_sft = sft.train_sft
    monkeypatch.setattr(sft, "train_sft", lambda *a, **k: trained.append(a[5]) or real_train_sft(*a, **k))
    _, metrics = sft.train_sft_then_rlvr(model, tokenizer, _problems(16), arith, cfg)
    assert trained == [2] and rl_steps == [8] and metrics.steps == 10


def test_sft_leaves_out_problems_without_a_writable_expert_solution(random_tiny):
    model, tokenizer = random_tiny
    long_one = arith.make_problem("(3+1)*(13+(14+(6-4)))")
    short_one = arith.make_problem("2+3")
    no_steps = Problem("What is two?", "2", "math")
    budget = len(sft.expert_rows(tokenizer, arith, [short_one]).completion_ids[0])
    kept = sft.writable_experts(tokenizer, arith, [long_one, short_one, no_steps], budget)
    assert kept.problems == [short_one]
    assert kept.completion_ids == sft.expert_rows(tokenizer, arith, [short_one]).completion_ids
    with pytest.raises(ValueError, match="sft-rlvr needs problems with expert steps"):
        sft.train_sft(model, tokenizer, [no_steps, long_one], arith, _cfg(max_new_tokens=budget), steps=1)


def test_sft_rlvr_runs_rl_from_the_sft_weights_with_them_as_reference(random_tiny, monkeypatch):
    model, tokenizer = random_tiny
    calls = {}
    real_train_student = rl_train.train_student

    def spy(baseline, *args, reference=None, **kwargs):
        calls.update(baseline=baseline, reference=reference, steps=kwargs["steps"])
        return real_train_student(baseline, *args, reference=reference, **kwargs)

    monkeypatch.setattr(sft, "train_student", spy)
    records, batches = [], []
    student, metrics = sft.train_sft_then_rlvr(model, tokenizer, _problems(24), arith, _cfg(steps=5, sft_share=0.6),
                                               seed=3, log=records.append,
                                               on_rollout=lambda batch, scores: batches.append(batch))
    assert calls["steps"] == 2 and calls["reference"] is calls["baseline"] and calls["baseline"] is not model
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert [r.get("phase") for r in records] == ["sft", "sft", "sft", None, None]
    assert len(batches) == 2  # rollouts come from the RL steps only
    assert metrics.steps == 5 and len(metrics.per_step) == 5
    assert metrics.updates == 3 + sum(r["updated"] for r in records[3:])
    assert not math.isnan(metrics.reward_mean)  # the reward figures are the RL steps'
    assert student is not model


def test_sft_rlvr_without_expert_solutions_trains_rl_for_every_step(random_tiny, monkeypatch):
    """A curriculum with no writable expert solution (a domain without a solver, reward_target = teacher)
    still trains: every step is RL from the baseline, as rloo would train it."""
    model, tokenizer = random_tiny
    calls = {}
    real_train_student = rl_train.train_student

    def spy(baseline, *args, **kwargs):
        calls.update(baseline=baseline, steps=kwargs["steps"], reference=kwargs["reference"])
        return real_train_student(baseline, *args, **kwargs)

    monkeypatch.setattr(sft, "train_student", spy)
    monkeypatch.setattr(sft, "train_sft", lambda *a, **k: pytest.fail("no expert solution to train on"))
    no_steps = [Problem(f"{i}+1", str(i + 1), "arith") for i in range(4)]
    student, metrics = sft.train_sft_then_rlvr(model, tokenizer, no_steps, arith, _cfg(steps=3, sft_share=0.9))
    assert calls == {"baseline": model, "steps": 3, "reference": None}
    assert metrics.steps == 3 and all("phase" not in r for r in metrics.per_step) and student is not model


def test_sft_rlvr_with_share_one_trains_supervised_only(random_tiny):
    model, tokenizer = random_tiny
    batches = []
    _, metrics = sft.train_sft_then_rlvr(model, tokenizer, _problems(16), arith, _cfg(steps=2, sft_share=1.0),
                                         on_rollout=lambda batch, scores: batches.append(batch))
    assert batches == [] and [r["phase"] for r in metrics.per_step] == ["sft", "sft"]
    assert metrics.loss == pytest.approx(sum(r["loss"] for r in metrics.per_step) / 2) and metrics.loss > 0


def test_backend_dispatch_and_config():
    assert trainer("sft-rlvr") is sft.train_sft_then_rlvr
    cfg = apply_overrides(RunConfig(), ["student.backend=sft-rlvr", "student.sft_share=0.75", "student.sft_lr=1e-4"])
    assert (cfg.student.backend, cfg.student.sft_share, cfg.student.sft_lr) == ("sft-rlvr", 0.75, 1e-4)


@pytest.mark.skipif(not (__import__("soar_agent.models").models.EMBEDDED_MODEL_DIR / "config.json").is_file(),
                    reason="embedded model not built")
def test_a_soar_step_trains_sft_rlvr_students_on_the_teachers_verified_items_only(tmp_path, monkeypatch):
    """In the loop, the SFT phase sees the teacher's items with the domain's expert steps (reward_target =
    verified) and never a hard-set question, whose expert solutions must not reach a student."""
    from soar_agent.agent import Agent, Budget
    from soar_agent.config import load_config

    seen = []
    real_train_sft = sft.train_sft

    def spy(baseline, tokenizer, problems, *args, **kwargs):
        seen.append(list(problems))
        return real_train_sft(baseline, tokenizer, problems, *args, **kwargs)

    monkeypatch.setattr(sft, "train_sft", spy)
    config = load_config(None, ["teacher.datasets_per_step=2", "teacher.items_per_dataset=4",
                                "teacher.max_new_tokens=60", "student.students_per_dataset=1", "student.steps=2",
                                "student.batch_prompts=2", "student.group_size=4", "student.max_new_tokens=120",
                                "reward.questions=6", "reward.samples=2", "eval.samples=2", "eval.max_new_tokens=120",
                                'student.backend="sft-rlvr"', "budget.pq_steps=0"])
    agent = Agent.open(config, tmp_path / "run", log=lambda m: None)
    agent.run(Budget(max_teacher_steps=1))
    (step,) = agent.store.teacher_steps(agent.run_id)
    assert step["status"] == "complete"
    hard = {p.question for split in ("train", "test") for p in agent.hard_set(split)}
    assert len(seen) == 2 and all(len(problems) == 4 for problems in seen)
    for problems in seen:
        assert all(p.steps and arith.solve(p.question) == p.answer for p in problems)
        assert not hard & {p.question for p in problems}


def test_a_curriculum_is_as_long_as_what_the_training_draws(tmp_path, random_tiny_dir):
    """problems_drawn: batch_prompts per RL step, batch_prompts x group_size per supervised step; curated mode
    generates that many fresh problems per training, so every one is trained on once."""
    import json

    from soar_agent.agent import Agent
    from soar_agent.config import load_config

    rloo = StudentSection(backend="rloo", steps=10, batch_prompts=3, group_size=4)
    assert sft.problems_drawn(rloo, 10) == 30
    mixed = StudentSection(backend="sft-rlvr", steps=10, batch_prompts=3, group_size=4, sft_share=0.7)
    assert sft.sft_steps_of(mixed, 10) == 7 and sft.problems_drawn(mixed, 10) == 7 * 12 + 3 * 3
    assert sft.sft_steps_of(mixed, 1) == 1 and sft.problems_drawn(mixed, 1) == 12
    config = load_config(None, [f"model.path={json.dumps(str(random_tiny_dir))}", "run.mode=curated",
                                "student.backend=sft-rlvr", "student.steps=10", "student.batch_prompts=3",
                                "student.group_size=4", "student.sft_share=0.7"])
    agent = Agent.open(config, tmp_path / "run", log=lambda m: None)
    problems = curated_problems(agent, 1, 0)
    assert len(problems) == 7 * 12 + 3 * 3  # this seed's draw repeats no hard-set question


def test_a_run_on_a_domain_without_expert_solutions_says_its_students_train_with_rl_only(tmp_path, random_tiny_dir):
    """sft-rlvr is the default backend: a run on a domain without `expert_completion` (math, whose rows may
    carry steps) starts, says once that its students train with RL only, and writes no expert rows."""
    import json

    from soar_agent.agent import Agent
    from soar_agent.config import load_config
    from soar_agent.models import load_tokenizer
    from soar_agent.tasks import math as math_domain

    rows = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i), "steps": [f"{i}+{i}={2 * i}"]}
            for i in range(1, 5)]
    for name in ("train", "test"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems = math_domain.load_problems(tmp_path / "train.jsonl")
    tokenizer = load_tokenizer(str(random_tiny_dir))
    assert problems[0].steps and not sft.writable_experts(tokenizer, math_domain, problems, 100).problems
    said = []
    config = load_config(None, [f"model.path={json.dumps(str(random_tiny_dir))}", 'domain.name="math"',
                                f"domain.hard_train={json.dumps(str(tmp_path / 'train.jsonl'))}",
                                f"domain.hard_test={json.dumps(str(tmp_path / 'test.jsonl'))}",
                                'student.backend="sft-rlvr"', "budget.pq_steps=0"])
    agent = Agent.open(config, tmp_path / "run", log=said.append)
    (event,) = [e for e in agent.store.events(agent.run_id) if e["kind"] == "no-expert-solutions"]
    assert event["level"] == "warning" and "math domain has no expert solutions" in event["message"]
    (metric_event,) = [e for e in agent.store.events(agent.run_id) if e["kind"] == "reward-metric-fallback"]
    assert "the math domain has no expert solutions" in metric_event["message"]  # the default expert-logprob
    assert agent.config.reward.metric == "sampled"
    assert said == [f"note: {event['message']}", f"note: {metric_event['message']}"]
    arith_run = Agent.open(apply_overrides(config, ['domain.name="arith"', 'domain.hard_train=""', 'domain.hard_test=""']),
                           tmp_path / "arith-run", log=said.append)
    assert not [e for e in arith_run.store.events(arith_run.run_id) if e["kind"] == "no-expert-solutions"]
