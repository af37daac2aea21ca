"""The outer loop's correctness (issue 7): the teacher's REINFORCE update, dataset advantages, promotion
below and above tau, which student is promoted, checkpoint selection without hard-test, labels that never
leak, garbage retries, and the hard-only, intrinsic and eval-pq paths."""

import datetime as dt
import json
from pathlib import Path

import pytest
import torch

import soar_agent.pq as pq
import soar_agent.rl as rl
import soar_agent.teacher as teacher
import soar_agent.baselines as baselines
import soar_agent.budget as budgets
from soar_agent.agent import Agent, Budget
from soar_agent.budget import final_training, no_time_for_a_step
from soar_agent.reporting import best_by_reward
from soar_agent.students import dataset_problems
from soar_agent.soar_step import promoted_student, promotion_decision, success_rates, write_curriculum
from soar_agent.config import load_config
from soar_agent.engine import Completion
from soar_agent.rl.train import sequence_logprobs
from soar_agent.tasks import arith, teacher_prompt
from tests.test_engine import forward_input_shapes

TINY = ["teacher.datasets_per_step=2", "teacher.items_per_dataset=2", "teacher.max_new_tokens=8",
        "student.students_per_dataset=2", "student.steps=1", "student.batch_prompts=2", "student.group_size=2",
        "student.max_new_tokens=8", "reward.questions=4", "eval.samples=1", "eval.every_teacher_steps=100",
        "eval.max_new_tokens=8", "promotion.tau=-1.0", "student.extra_steps_after_promotion=2",
        "budget.pq_steps=0"]  # the final training's tests set their own


# ---------------------------------------------------------------------------------------------- the teacher


def item_logprob(model, tokenizer, ids):
    prompt = tokenizer(teacher_prompt(arith))["input_ids"]
    with torch.no_grad():
        logprobs, _, _ = sequence_logprobs(model, [prompt], [ids], tokenizer.pad_token_id)
    return logprobs.sum().item()


def test_teacher_update_raises_the_log_prob_of_items_with_positive_advantage(random_tiny):
    model, tokenizer = random_tiny
    texts = ["<question>1+2</question><answer>3</answer>", "<question>4*5-1</question><answer>19</answer>"]
    items = [teacher.TeacherItem(t, None, "", None, tokenizer(t, add_special_tokens=False)["input_ids"])
             for t in texts]
    before = [item_logprob(model, tokenizer, i.token_ids) for i in items]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    stats = teacher.teacher_update(model, optimizer, tokenizer, arith, [[items[0]], [items[1]]], [1.0, 0.0],
                                   grad_clip=1e9)
    after = [item_logprob(model, tokenizer, i.token_ids) for i in items]
    assert stats["updated"] and stats["advantages"] == [1.0, -1.0]
    assert after[0] > before[0] and after[1] < before[1]
    # REINFORCE on the item: the loss is -mean(A * summed log-prob), not a per-token mean
    assert stats["loss"] == pytest.approx(-(before[0] - before[1]) / 2, rel=1e-4)
    # only the sampled tokens are trained on: no EOS appended
    assert stats["tokens"] == sum(len(i.token_ids) for i in items)


def test_the_teacher_update_pushes_its_rejected_completions_down(random_tiny):
    """teacher.reject_penalty: the step's rejected completions join the update with advantage -P x mean |A_k|
    (the loss says so exactly), so they end less likely than after the same step without the penalty; with
    P = 0 they are left out (the paper's rejection sampling)."""
    import copy

    model, tokenizer = random_tiny
    texts = ["<question>1+2</question><answer>3</answer>", "<question>4*5-1</question><answer>19</answer>"]
    items = [teacher.TeacherItem(t, None, "", None, tokenizer(t, add_special_tokens=False)["input_ids"])
             for t in texts]
    rejected = [tokenizer(t, add_special_tokens=False)["input_ids"]
                for t in ["<question>(1+2</question><answer>3</answer>", "<question>99*99</question><answer>1"]]
    results = {}
    for penalty in (0.0, 10.0):
        student = copy.deepcopy(model)
        before = [item_logprob(student, tokenizer, ids) for ids in rejected]
        optimizer = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.05)
        stats = teacher.teacher_update(student, optimizer, tokenizer, arith, [[items[0]], [items[1]]], [1.0, 0.0],
                                       grad_clip=1e9, rejected=rejected, reject_penalty=penalty)
        results[penalty] = (stats, before, [item_logprob(student, tokenizer, ids) for ids in rejected])
    stats, before, after = results[10.0]
    assert stats["rejected_items"] == 2 and stats["items"] == 4 and all(a < b for a, b in zip(after, before))
    kept = [item_logprob(model, tokenizer, i.token_ids) for i in items]
    # advantages +1 / -1 on the kept items, -10 x mean(|1|, |-1|) = -10 on each rejected one; mean over 4 rows
    assert stats["loss"] == pytest.approx(-(kept[0] - kept[1] - 10 * sum(before)) / 4, rel=1e-4)
    unpenalised, _, after_unpenalised = results[0.0]
    assert unpenalised["rejected_items"] == 0 and unpenalised["items"] == 2
    # the same step but for the penalty: each rejected completion ends less likely than without it
    assert all(a < b - 0.1 for a, b in zip(after, after_unpenalised)), (after, after_unpenalised)
    assert unpenalised["loss"] == pytest.approx(-(kept[0] - kept[1]) / 2, rel=1e-4)


def test_the_steps_rejected_completions_are_stored_and_reach_its_teacher_update(tmp_path, hard_files,
                                                                                random_tiny_dir, monkeypatch):
    """The sampler's rejected completions are kept with the step's curriculum (not in its logged stats), so
    that the update (here after a resume between sampling and update) penalises the same ones."""
    rejected = [[5, 6, 7], [8, 9]]

    def items_and_rejections(engine, domain, count, cfg, seed, progress=None, **_):
        items, stats = fixed_items(engine, domain, count, cfg, seed)
        return items, {**stats, "rejected_token_ids": rejected}

    monkeypatch.setattr(teacher, "sample_items", items_and_rejections)
    updates = []
    real_update = teacher.teacher_update
    monkeypatch.setattr(teacher, "teacher_update", lambda *args, **kwargs: updates.append(kwargs) or real_update(
        *args, **kwargs))
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir, "teacher.reject_penalty=0.5")
    agent._garbage_attempt = 0
    write_curriculum(agent, 1)  # sampled and stored; the process "dies" before the students
    (event,) = [e for e in agent.store.events(agent.run_id, limit=50) if e["kind"] == "teacher-sampled"]
    assert "rejected_token_ids" not in event["data"] and event["data"]["sampled"] > 0
    agent.store.close()
    resumed = tiny_agent(tmp_path, hard_files, random_tiny_dir, "teacher.reject_penalty=0.5")
    resumed.run(Budget(max_teacher_steps=1))
    (update,) = updates
    assert update["rejected"] == rejected and update["reject_penalty"] == 0.5
    (step,) = resumed.completed_steps()
    update = step["metrics"]["teacher_update"]  # the penalty is in units of the step's |advantages|
    assert update["rejected_items"] == (2 if any(update["advantages"]) else 0)


def test_teacher_update_in_micro_batches_takes_the_same_step(random_tiny):
    """Items go through the teacher update a few at a time (memory grows with g x n otherwise), and the
    accumulated gradient is the one-batch gradient: the same loss and the same weights after the step."""
    import copy

    model, tokenizer = random_tiny
    texts = [f"<question>{a}+{b}*{a}</question><answer>{a + b * a}</answer>" for a, b in [(1, 2), (3, 4), (5, 6),
                                                                                        (7, 8), (9, 1)]]
    items = [teacher.TeacherItem(t, None, "", None, tokenizer(t, add_special_tokens=False)["input_ids"])
             for t in texts]
    results = []
    for micro_batch in (len(items), 2):
        student = copy.deepcopy(model)
        optimizer = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.05)
        stats = teacher.teacher_update(student, optimizer, tokenizer, arith, [items[:3], items[3:]], [1.0, 0.0],
                                       grad_clip=1e9, micro_batch=micro_batch)
        results.append((stats, torch.cat([p.detach().flatten() for p in student.parameters()])))
    (whole, whole_weights), (chunked, chunked_weights) = results
    assert whole["updated"] and chunked["updated"]
    assert chunked["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert chunked["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-4)
    assert torch.allclose(chunked_weights, whole_weights, atol=1e-6)
    assert not torch.allclose(whole_weights, torch.cat([p.detach().flatten() for p in model.parameters()]))


def test_rows_sharing_a_prompt_run_it_once_with_the_same_logprobs_and_gradient(random_tiny):
    """The teacher update's rows share one prompt: it runs once and its cache is copied to every row. The
    log-probs, entropies and the gradient through them equal those of each row run alone, prompt included."""
    model, tokenizer = random_tiny
    prompt = tokenizer(teacher_prompt(arith))["input_ids"]
    texts = ["<question>1+2</question><answer>3</answer>", "<question>4*5-11</question><answer>9</answer>", "<q"]
    completions = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    weights = [p for p in model.parameters() if p.requires_grad]

    def gradient(logprobs):
        grads = torch.autograd.grad(logprobs.sum(), weights)
        return torch.cat([g.flatten() for g in grads])

    with forward_input_shapes(model) as widths:
        shared, mask, entropy = sequence_logprobs(model, [prompt] * 3, completions, tokenizer.pad_token_id)
    assert widths == [torch.Size([1, len(prompt)]), torch.Size([3, max(map(len, completions))])]
    shared_gradient = gradient(shared)
    alone_gradient = torch.zeros_like(shared_gradient)
    for row, ids in enumerate(completions):
        alone, alone_mask, alone_entropy = sequence_logprobs(model, [prompt], [ids], tokenizer.pad_token_id)
        n = len(ids)
        assert torch.allclose(shared[row, :n], alone[0], atol=1e-5) and bool(mask[row, :n].all())
        assert not mask[row, n:].any() and bool((shared[row, n:] == 0).all())
        assert torch.allclose(entropy[row, :n], alone_entropy[0], atol=1e-5)
        alone_gradient += gradient(alone)
    assert torch.allclose(shared_gradient, alone_gradient, atol=1e-5)


def test_teacher_update_skips_when_all_datasets_score_alike(random_tiny):
    model, tokenizer = random_tiny
    item = teacher.TeacherItem("<question>1+2</question><answer>3</answer>", None, "", None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert not teacher.teacher_update(model, optimizer, tokenizer, arith, [[item], [item]], [0.2, 0.2])["updated"]


class FakeEngine:
    def __init__(self, tokenizer, completions):
        self.tokenizer, self.completions = tokenizer, completions

    def generate(self, prompts, n, **kwargs):
        return [self.completions]


def test_sampled_items_keep_exactly_the_sampled_tokens(char_tokenizer):
    tok = char_tokenizer
    ids = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    stopped = "<question>1+1</question><answer>2</answer>"  # ended by the stop string (sampled)
    eos = "<question>1+2</question><answer>3"  # ended by EOS before closing </answer>
    cut = "<question>1+3</question><answer"  # ran out of tokens
    engine = FakeEngine(tok, [Completion(ids(stopped), stopped[:-len("</answer>")], [], "stop", "</answer>"),
                              Completion(ids(eos), eos, [], "stop", None),
                              Completion(ids(cut), cut, [], "length", None)])
    cfg = load_config(None, ["teacher.max_sampling_rounds=1"]).teacher
    items, stats = teacher.sample_items(engine, arith, 2, cfg, seed=1)
    assert [i.problem.question for i in items] == ["1+1", "1+2"]
    assert items[0].token_ids == ids(stopped)  # the stop string, no EOS
    assert items[1].token_ids == ids(eos) + [tok.eos_token_id]  # the EOS it sampled, no </answer> it did not
    assert stats["rejected"]


def test_split_items_keeps_sampling_order_or_stratifies_by_question_length():
    questions = ["1+2*3-4", "5+1", "6+7", "8*9-1+2*3", "4-2", "3*3"]
    items = [teacher.check_item(arith, f"<question>{q}</question><answer>0</answer>", "verified") for q in questions]

    def question_lists(split):
        return [[i.problem.question for i in d] for d in teacher.split_items(items, 2, split)]

    assert question_lists("random") == [questions[:3], questions[3:]]
    # the 3 shortest questions (stable among equal lengths) form dataset 0, the 3 longest dataset 1
    assert question_lists("length") == [["5+1", "6+7", "4-2"], ["3*3", "1+2*3-4", "8*9-1+2*3"]]


def test_dataset_advantages_are_leave_one_out_and_sum_to_zero():
    advantages = teacher.rloo_dataset_advantages([0.4, 0.1, 0.1, 0.0])
    assert advantages == pytest.approx([0.4 - 0.2 / 3, 0.1 - 0.5 / 3, 0.1 - 0.5 / 3, 0.0 - 0.6 / 3])
    assert sum(advantages) == pytest.approx(0.0)
    assert teacher.rloo_dataset_advantages([0.3]) == [0.0]


# ---------------------------------------------------------------------------------------------- promotion


def test_promotion_below_and_above_tau():
    assert promotion_decision([0.0, 0.0], 0.02, tau=0.01, window=3) == (pytest.approx(0.02 / 3), False)
    assert promotion_decision([0.01, 0.02], 0.03, tau=0.01, window=3) == (pytest.approx(0.02), True)
    assert promotion_decision([0.5, -0.5], 0.011, tau=0.01, window=1) == (pytest.approx(0.011), True)
    assert promotion_decision([], -0.2, tau=0.01, window=3, force=True) == (pytest.approx(-0.2), True)


def test_the_promoted_student_is_the_upper_median():
    def t(reward, path="ckpt"):
        return {"reward": reward, "checkpoint_path": path}

    assert promoted_student([t(0.1), t(0.3)])["reward"] == 0.3  # r = 2: the better of two
    assert promoted_student([t(0.4), t(0.1), t(0.3), t(0.2)])["reward"] == 0.3
    assert promoted_student([t(0.1), t(0.2), t(0.3)])["reward"] == 0.2
    assert promoted_student([t(None), t(0.5, None)]) is None  # failed trainings are never promoted


def test_best_checkpoint_follows_the_summed_hard_train_reward():
    def c(id, reward, status="complete"):
        return {"id": id, "status": status, "metrics": {"reward": reward}}

    # +0.05 (pruned), -0.02, +0.04: cumulative 0.05, 0.03, 0.07
    assert best_by_reward([c(3, 0.04), c(1, 0.05, "deleted"), c(2, -0.02)])["id"] == 3
    assert best_by_reward([c(1, 0.05), c(2, -0.02)])["id"] == 1
    assert best_by_reward([c(1, 0.0), c(2, 0.0)])["id"] == 2  # ties: the later one
    assert best_by_reward([]) is None


# ---------------------------------------------------------------------------------------------- runs


def tiny_agent(tmp_path, hard_files, model_dir, *extra):
    config = load_config(None, TINY + hard_files + [f"model.path={json.dumps(str(model_dir))}", *extra])
    return Agent.open(config, tmp_path / "run", log=lambda m: None)


def record_trainings(monkeypatch) -> list:
    """Every student training the loop runs, whatever the backend: problems, steps, the model it started
    from and the student it returned, per call."""
    calls = []
    real = rl.trainer

    def spying_trainer(backend):
        train = real(backend)

        def spy(baseline, tokenizer, problems, domain, cfg, steps=None, **kwargs):
            student, metrics = train(baseline, tokenizer, problems, domain, cfg, steps=steps, **kwargs)
            calls.append({"problems": list(problems), "steps": steps, "baseline": baseline, "student": student})
            return student, metrics

        return spy

    monkeypatch.setattr(rl, "trainer", spying_trainer)
    return calls


def test_students_train_on_the_teachers_items_as_written_and_never_on_hard_questions(
        tmp_path, hard_files, random_tiny_dir, monkeypatch):
    # the datasets as sampled (random split): dataset 0 holds the first two texts
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir, "teacher.reward_target=teacher", 'teacher.split="random"')
    hard = agent.hard_set("train")[0]
    texts = [[f"<question>{hard.question}</question><answer>1</answer>", "<question>2+3</question><answer>9</answer>"],
             ["<question>2+3</question><answer>5</answer>", "<question>7+1</question><answer>8</answer>"]]

    def items(engine, domain, count, cfg, seed, progress=None, solution_tokens=None):
        return [teacher.check_item(domain, t, cfg.reward_target) for d in texts for t in d], {
            "sampled": count, "accepted": count, "rejected": {}}

    monkeypatch.setattr(teacher, "sample_items", items)
    calls = record_trainings(monkeypatch)
    agent.run(Budget(max_teacher_steps=1))
    assert len(calls) == 4
    trained = [{(p.question, p.answer) for p in c["problems"]} for c in calls]
    # dataset 0 keeps its own answer 9 for 2+3 although dataset 1 stored the same question first or later
    assert trained[0] == trained[1] == {("2+3", "9")}
    assert trained[2] == trained[3] == {("2+3", "5"), ("7+1", "8")}
    assert not any(q == hard.question for t in trained for q, _ in t)


def test_a_garbage_step_is_retried_with_another_seed(tmp_path, hard_files, random_tiny_dir, monkeypatch):
    seeds = []

    def garbage(engine, domain, count, cfg, seed, progress=None):
        seeds.append(seed)
        raise teacher.TeacherGarbage("nothing parses")

    monkeypatch.setattr(teacher, "sample_items", garbage)
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir)
    assert "garbage" in agent.run(Budget(max_teacher_steps=5))
    assert len(seeds) == 3 and len(set(seeds)) == 3


def fixed_items(engine, domain, count, cfg, seed, progress=None):
    return [teacher.check_item(domain, f"<question>{i}+{i}</question><answer>{2 * i}</answer>", "verified")
            for i in range(count)], {"sampled": count, "accepted": count, "rejected": {}}


def test_promotion_below_tau_keeps_the_baseline_and_extra_steps_follow_a_promotion(
        tmp_path, hard_files, random_tiny_dir, monkeypatch):
    monkeypatch.setattr(teacher, "sample_items", fixed_items)
    calls = record_trainings(monkeypatch)
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir, "promotion.tau=0.5")
    agent.run(Budget(max_teacher_steps=1))
    (step,) = agent.store.teacher_steps(agent.run_id)
    assert step["promoted_dataset_id"] is None and agent.store.checkpoints(agent.run_id, role="baseline") == []
    agent.force_promotion = True  # the TUI's promote command: above any tau
    agent.run(Budget(max_teacher_steps=2))
    assert agent.store.teacher_steps(agent.run_id)[1]["promoted_dataset_id"] is not None
    agent.run(Budget(max_teacher_steps=3))
    assert [c["steps"] for c in calls] == [1] * 8 + [3] * 4  # 1 step, then 1 + 2 once promoted


def test_length_split_stores_short_and_long_datasets_and_scores_each(tmp_path, hard_files, random_tiny_dir,
                                                                     monkeypatch):
    ones = [3, 9, 2, 7]  # sampling order: the random split would pair 3 with 9 and 2 with 7

    def items(engine, domain, count, cfg, seed, progress=None):
        return [teacher.check_item(domain, f"<question>{'+'.join(['1'] * n)}</question><answer>{n}</answer>",
                                   "verified") for n in ones], {"sampled": count, "accepted": count, "rejected": {}}

    monkeypatch.setattr(teacher, "sample_items", items)
    calls = record_trainings(monkeypatch)
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir, 'teacher.split="length"')
    agent.run(Budget(max_teacher_steps=1))
    datasets = agent.store.datasets(agent.run_id, kind="curriculum")
    stored = [sorted(len(p.question) for p in dataset_problems(agent, d)) for d in datasets]
    assert stored == [[3, 5], [13, 17]]  # "1+1", "1+1+1" | seven ones, nine ones
    # each dataset's students trained on that dataset's items only
    assert [sorted(len(p.question) for p in c["problems"]) for c in calls] == [stored[0]] * 2 + [stored[1]] * 2


def test_hard_only_trains_the_baseline_on_hard_train_every_step(tmp_path, hard_files, random_tiny_dir,
                                                                 monkeypatch):
    calls = record_trainings(monkeypatch)
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir, "run.mode=hard-only")
    agent.run(Budget(max_teacher_steps=2))
    hard = {p.question for p in agent.hard_set("train")}
    assert len(calls) == 2 * 4 and all({p.question for p in c["problems"]} == hard for c in calls)
    baselines = agent.store.checkpoints(agent.run_id, role="baseline")
    assert [c["teacher_step"] for c in baselines] == [1, 2]
    assert all("reward" in c["metrics"] for c in baselines)
    assert agent.store.datasets(agent.run_id, kind="curriculum") == []


def test_a_chain_step_stopped_after_one_training_resumes_in_a_fresh_process(tmp_path, hard_files, random_tiny_dir,
                                                                            monkeypatch):
    """A hard-only (or curated) step stopped between its trainings resumes from its last student: in a
    fresh process that student is put in place as the baseline before anything loaded the tokenizer
    (the 8-hour night's hard-only arm raised KeyError: 'tokenizer' there)."""
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir, "run.mode=hard-only")
    real_train_one = baselines.train_one

    def stop_after_one(*args, **kwargs):
        agent.stop_reason = "stopped by the test after one training"
        return real_train_one(*args, **kwargs)

    monkeypatch.setattr(baselines, "train_one", stop_after_one)
    agent.run(Budget(max_teacher_steps=1))
    monkeypatch.undo()
    assert len(agent.store.trainings(agent.run_id, 1)) == 1 and not agent.completed_steps()
    agent.store.close()
    fresh = tiny_agent(tmp_path, hard_files, random_tiny_dir, "run.mode=hard-only")
    assert fresh.run(Budget(max_teacher_steps=1)) == "1 teacher steps done"
    units = fresh.config.teacher.datasets_per_step * fresh.config.student.students_per_dataset
    assert len(fresh.store.trainings(fresh.run_id, 1)) == units and len(fresh.completed_steps()) == 1


def test_intrinsic_mode_rewards_the_teacher_with_seeded_success_rates(tmp_path, hard_files, random_tiny_dir,
                                                                      monkeypatch):
    monkeypatch.setattr(teacher, "sample_items", fixed_items)
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir, "run.mode=intrinsic")
    agent.run(Budget(max_teacher_steps=1))
    (step,) = agent.store.teacher_steps(agent.run_id)
    datasets = agent.store.datasets(agent.run_id, kind="curriculum")
    rates = [success_rates(agent, d, 1) for d in datasets]
    assert rates == [success_rates(agent, d, 1) for d in datasets]  # seeded: a redone step scores the same
    assert step["metrics"]["teacher_rewards"] == teacher.intrinsic_rewards(rates)
    assert step["metrics"]["mode"] == "intrinsic"


def test_eval_pq_trains_a_fresh_student_on_the_rewarded_questions_and_hard_train(
        tmp_path, hard_files, random_tiny_dir, monkeypatch):
    """The PQ student's questions are those the grounded reward measured as helpful: every dataset whose
    reward beat tau, and the promoted ones (a forced promotion may be below it), each as the teacher wrote
    it, plus hard-train."""
    from soar_agent.pq import evaluate_pq

    monkeypatch.setattr(teacher, "sample_items", fixed_items)
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir)
    agent.run(Budget(max_teacher_steps=1))  # tau -1: step 1 promotes one of its datasets
    agent.config.promotion.tau = 10.0
    agent.run(Budget(max_teacher_steps=2))  # step 2 none
    promoted_id = agent.store.datasets(agent.run_id, kind="promotion")[0]["meta"]["from_dataset"]
    datasets = agent.store.datasets(agent.run_id, kind="curriculum")
    rewarded = next(d for d in datasets if d["teacher_step"] == 2)
    agent.config.promotion.tau = 0.01
    for dataset in datasets:  # below tau but the promoted one and `rewarded`
        agent.store.set_dataset_reward(dataset["id"], 0.02 if dataset is rewarded else 0.01)
    calls = record_trainings(monkeypatch)
    summary = evaluate_pq(agent, steps=1)
    chosen = [d for d in agent.store.datasets(agent.run_id, kind="curriculum") if d["id"] in (promoted_id, rewarded["id"])]
    questions = [p for d in chosen for p in dataset_problems(agent, d)]
    assert summary["questions"] == len(questions) == 4 and summary["promotion_questions"] == 2
    (call,) = calls
    assert [(p.question, p.answer) for p in call["problems"]] == [
        (p.question, p.answer) for p in questions + agent.hard_set("train")]
    (evaluation,) = agent.store.evaluations(agent.run_id, set_name="hard-test-pq")
    assert "pass@1" in evaluation["summary"]


def test_an_interrupted_final_training_goes_on_from_its_last_training(tmp_path, hard_files, random_tiny_dir,
                                                                     monkeypatch):
    """The final training is hours of one unit: after each training of its chain the student is kept as the
    run's `pq-chain` part, and a chain stopped (a stop, a crash, a reboot) goes on from it with the next
    training's seed, to the same student an uninterrupted chain trains; the parts go when the chain ends; a
    chain of other questions or another seed starts from the base model."""
    from safetensors.torch import load_file

    from soar_agent.pq import evaluate_pq

    monkeypatch.setattr(teacher, "sample_items", fixed_items)
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir, "student.max_new_tokens=64")
    agent.run(Budget(max_teacher_steps=1))
    calls = record_trainings(monkeypatch)

    def weights(path):
        return load_file(str(next(Path(path).glob("*.safetensors"))))

    evaluate_pq(agent, steps=5, training_steps=2, seed=7)  # uninterrupted: trainings of 2, 2 and 1 steps
    whole = weights(agent.latest_checkpoint("pq")["path"])
    assert [c["steps"] for c in calls] == [2, 2, 1] and not agent.store.checkpoints(agent.run_id, role="pq-chain",
                                                                                      status="complete")
    calls.clear()
    stops = iter([None, "stopped by the test"])  # the second training is never started
    assert evaluate_pq(agent, steps=5, training_steps=2, seed=7, stop=lambda: next(stops)) is None
    (part,) = agent.store.checkpoints(agent.run_id, role="pq-chain", status="complete")
    assert part["metrics"]["steps"] == 2 and part["metrics"]["trainings"] == 1 and Path(part["path"]).is_dir()
    assert [c["steps"] for c in calls] == [2]
    kept = weights(part["path"])
    from soar_agent.status import format_status, run_status

    status = run_status(tmp_path / "run")
    assert status["pq_chain"] == {"steps": 2, "checkpoint": part["id"]}
    shown = " ".join(format_status(status).split())  # the line wraps at the terminal's width
    assert f"final training interrupted after 2 steps (checkpoint {part['id']};" in shown
    calls.clear()
    summary = evaluate_pq(agent, steps=5, training_steps=2, seed=7)  # resumed: the 3 steps left
    assert [c["steps"] for c in calls] == [2, 1] and summary["steps"] == 5
    assert all(torch.equal(calls[0]["baseline"].state_dict()[name], value) for name, value in kept.items())
    resumed = weights(agent.latest_checkpoint("pq")["path"])
    assert all(torch.equal(resumed[name], whole[name]) for name in whole)  # the same student as uninterrupted
    assert not agent.store.checkpoints(agent.run_id, role="pq-chain", status="complete")
    assert not Path(part["path"]).exists()  # the parts go with the chain's end
    # a crash (no graceful stop) loses what was trained since the last kept part: parts are kept every
    # pq.KEEP_PART_S (a real model's checkpoint is gigabytes); here every training
    monkeypatch.setattr(pq, "KEEP_PART_S", 0.0)
    real_trainer = rl.trainer
    started = []

    def crashing(backend):
        def train(*args, **kwargs):
            started.append(1)
            if len(started) == 2:
                raise RuntimeError("the machine went down")
            return real_trainer(backend)(*args, **kwargs)
        return train

    monkeypatch.setattr(rl, "trainer", crashing)
    with pytest.raises(RuntimeError):
        evaluate_pq(agent, steps=5, training_steps=2, seed=9)
    (crashed,) = agent.store.checkpoints(agent.run_id, role="pq-chain", status="complete")
    assert crashed["metrics"]["steps"] == 2
    monkeypatch.setattr(rl, "trainer", real_trainer)
    calls = record_trainings(monkeypatch)
    # a kill in the chain's hard-test evaluation: the whole chain is kept until its evaluation is stored, so
    # the resume trains nothing again
    real_evaluate = pq.evaluate_problems
    monkeypatch.setattr(pq, "evaluate_problems", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError):
        evaluate_pq(agent, steps=3, training_steps=2, seed=9)  # continues seed 9's part: 1 step more
    monkeypatch.setattr(pq, "evaluate_problems", real_evaluate)
    (whole_chain,) = agent.store.checkpoints(agent.run_id, role="pq-chain", status="complete")
    assert whole_chain["metrics"]["steps"] == 3 and [c["steps"] for c in calls] == [1]
    calls.clear()
    assert evaluate_pq(agent, steps=3, training_steps=2, seed=9)["steps"] == 3 and calls == []
    assert not agent.store.checkpoints(agent.run_id, role="pq-chain", status="complete")
    # the run's final training, killed after one training and resumed with too little time for another: the
    # part is evaluated as the run's PQ student instead of the step being skipped
    import time

    agent.config.budget.pq_steps = 300
    monkeypatch.setattr(pq, "measured_costs", lambda store, run_id, tau: pq.Costs(10.0, 10.0, 0.0, 50.0))
    stops = iter([None, "killed"])
    assert evaluate_pq(agent, steps=300, seed=agent.config.run.seed, stop=lambda: next(stops)) is None
    calls.clear()
    # the time left is the evaluation's (50 s, measured_costs): no step fits, by the estimate or the chain's pace
    summary = final_training(agent, Budget(deadline=time.time() + 50, max_teacher_steps=1))
    assert calls == [] and summary is not None and summary["steps"] == 100  # the part's, evaluated
    assert agent.latest_checkpoint("pq")["metrics"]["steps"] == 100
    # another seed is another chain: a part of the first is not continued
    stops = iter([None, "stop"])
    evaluate_pq(agent, steps=5, training_steps=2, seed=7, stop=lambda: next(stops))
    calls.clear()
    evaluate_pq(agent, steps=3, training_steps=2, seed=8)
    assert [c["steps"] for c in calls] == [2, 1]
    base = weights(random_tiny_dir)
    assert all(torch.equal(calls[0]["baseline"].state_dict()[name], base[name]) for name in base)


def test_a_stop_inside_the_final_training_leaves_the_budget_to_a_resume(tmp_path, hard_files, random_tiny_dir,
                                                                        monkeypatch):
    """A stop (Ctrl-C, SIGTERM, the TUI) that lands in the final training is recorded as that stop, not as the
    budget's end: `soar run` on the run then continues the budget and the chain (status.time_budget)."""
    import time

    from soar_agent.status import time_budget

    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir, "budget.pq_steps=3")

    def stopped_inside(run, budget):
        run.stop_reason = "SIGTERM received: stopping after the current unit"

    monkeypatch.setattr(budgets, "final_training", stopped_inside)
    agent.report_evaluation(0)  # (a first evaluation would not start past the deadline: BudgetTooSmall)
    reason = agent.run(Budget(deadline=time.time() - 1))  # the budget is over: straight to the final training
    assert reason.startswith("SIGTERM") and agent.store.events(agent.run_id, limit=1)[0]["message"] == reason
    assert not time_budget(agent.store, agent.run_id).ended


def test_the_bench_trains_a_missing_pq_student_as_the_run_would_continuing_its_chain(
        tmp_path, hard_files, random_tiny_dir, monkeypatch, capsys):
    """bench/soar_effect.py's figure for a SOAR arm whose final training did not end (a crash in it): the PQ
    student is trained as the run trains it, with the run's seed, so the chain goes on from the part the run
    kept (not a new chain with another seed), and is evaluated like every arm (k samples, the common seed);
    the bench's report prints, per teacher step, what each dataset's questions were and whether they count."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import soar_effect

    monkeypatch.setattr(teacher, "sample_items", fixed_items)
    monkeypatch.setattr(pq, "KEEP_PART_S", 0.0)  # a part after every training of the chain
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir, f"budget.pq_steps={pq.PQ_TRAINING_STEPS + 1}")
    real_trainer = rl.trainer
    trainings = []

    def crashing(backend):
        def train(*args, **kwargs):
            if trainings and trainings[-1] == pq.PQ_TRAINING_STEPS:  # the chain's second training (100, then 1)
                raise RuntimeError("the machine went down")
            trainings.append(kwargs.get("steps"))
            return real_trainer(backend)(*args, **kwargs)
        return train

    monkeypatch.setattr(rl, "trainer", crashing)
    with pytest.raises(RuntimeError, match="went down"):
        agent.run(Budget(max_teacher_steps=1))
    monkeypatch.setattr(rl, "trainer", real_trainer)
    assert agent.latest_checkpoint("pq") is None
    (part,) = agent.store.checkpoints(agent.run_id, role="pq-chain", status="complete")
    assert part["metrics"]["steps"] == pq.PQ_TRAINING_STEPS
    calls = record_trainings(monkeypatch)
    figure = soar_effect.evaluate_final(("soar-pq", tmp_path / "run", 2, 2027, "test"))
    assert [c["steps"] for c in calls] == [1] and figure["steps"] == pq.PQ_TRAINING_STEPS + 1  # the chain went on
    assert len(figure["values"]) == len({p.question for p in agent.hard_set("test")})
    assert Path(figure["checkpoint"]) == Path(agent.latest_checkpoint("pq")["path"])
    # the report: the figures, and per teacher step each dataset's level and reward, marked when the final
    # training takes its questions, beside hard-train's level
    (tmp_path / "soar").symlink_to(tmp_path / "run")  # the bench's layout: OUT/<arm>
    (tmp_path / "final.json").write_text(json.dumps({"base": {**figure, "name": "base"}, "soar-pq": figure}))
    capsys.readouterr()
    soar_effect.report(tmp_path, 2)
    printed = capsys.readouterr().out
    hard_levels = [p.level for p in agent.hard_set("train")]
    assert f"hard-train's mean level {sum(hard_levels) / len(hard_levels):.2f}" in printed
    rewarded = {d["id"] for d in pq.rewarded_datasets(agent.store, agent.run_id, agent.config.promotion.tau)}
    shown = [f"1.00 {d['reward']:+.3f}" + ("*" if d["id"] in rewarded else "")  # fixed_items: i+i, level 1
             for d in agent.store.datasets(agent.run_id, kind="curriculum")]
    assert len(shown) == 2 and f"step   1: {shown[0]} | {shown[1]}" in printed, printed
    assert "*" in "".join(shown)  # the step's promoted dataset, at least, is in the final training


def test_the_benchs_evaluation_keeps_each_figure_and_measures_only_what_a_kill_left_or_training_changed(
        tmp_path, hard_files, random_tiny_dir, monkeypatch):
    """bench/soar_effect.py's final evaluation keeps each figure as it is measured: after a kill in it (the end
    of a machine's session) the rerun measures only the jobs that had not finished; a kept figure is used only
    while it measured what the job would (an arm that trained on since is measured again, as is another seed)."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import soar_effect

    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir, "run.mode=hard-only")
    agent.run(Budget(max_teacher_steps=1))
    measured, killed = [], []
    real_evaluate = soar_effect.evaluate_final

    def evaluate(job):
        if job[0] in killed:
            raise RuntimeError("killed")
        measured.append(job[0])
        return real_evaluate(job)

    monkeypatch.setattr(soar_effect, "evaluate_final", evaluate)
    monkeypatch.setattr(soar_effect, "ProcessPoolExecutor", ThreadPoolExecutor)  # the spy is seen by the workers
    out, run = tmp_path / "bench", tmp_path / "run"
    jobs = [("base", run, 2, 2027, "test"), ("hard-only", run, 2, 2027, "test")]
    killed.append("hard-only")
    with pytest.raises(RuntimeError, match="killed"):
        soar_effect.evaluate_all(out, jobs, workers=1)
    assert measured == ["base"] and (out / "final" / "base.json").is_file()
    killed.clear()
    figures = soar_effect.evaluate_all(out, jobs, workers=1)
    assert measured == ["base", "hard-only"] and list(figures) == ["base", "hard-only"]
    assert json.loads((out / "final.json").read_text()) == figures
    assert figures["hard-only"]["checkpoint"] == agent.latest_checkpoint("baseline")["path"]
    assert figures["base"]["checkpoint"] == soar_effect.BASE_MODEL
    assert soar_effect.evaluate_all(out, jobs, workers=1) == figures and len(measured) == 2  # all kept
    agent.run(Budget(max_teacher_steps=2))  # the arm trained on: a new baseline
    again = soar_effect.evaluate_all(out, jobs, workers=1)
    assert measured[2:] == ["hard-only"] and again["base"] == figures["base"]
    assert again["hard-only"]["checkpoint"] == agent.latest_checkpoint("baseline")["path"] != figures["hard-only"][
        "checkpoint"]
    soar_effect.evaluate_all(out, [(name, run, 2, 2028, "test") for name, *_ in jobs], workers=1)
    assert sorted(measured[3:]) == ["base", "hard-only"]  # another seed: nothing kept applies


def test_eval_pq_trains_a_chain_and_keeps_the_student_as_an_exportable_checkpoint(
        tmp_path, hard_files, random_tiny_dir, monkeypatch):
    """PQ's training is a chain of trainings, each from the last one's student (the
    teacher's data lifts hard-test only when trained on this long: bench/teacher_data.py), and the student
    evaluated is the run's `pq` checkpoint, which `soar export --checkpoint pq` writes."""
    from safetensors.torch import load_file

    from soar_agent.export import resolve_checkpoint
    from soar_agent.pq import PQ_TRAINING_STEPS, chain_lengths, evaluate_pq

    assert chain_lengths(load_config(None).budget.pq_steps, PQ_TRAINING_STEPS) == [100] * 8
    assert chain_lengths(7, 3) == [3, 3, 1] and chain_lengths(2, 5) == [2]
    monkeypatch.setattr(teacher, "sample_items", fixed_items)
    # room for the expert solutions, so that each training's supervised steps move the weights
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir, "student.max_new_tokens=64")
    agent.run(Budget(max_teacher_steps=1))
    with pytest.raises(ValueError, match="no SOAR-PQ student yet"):
        resolve_checkpoint(agent.store, agent.run_id, "pq", None)
    calls = record_trainings(monkeypatch)
    from soar_agent.rl import sft

    tokenized = []
    real_experts = sft.writable_experts
    monkeypatch.setattr(sft, "writable_experts", lambda *args: tokenized.append(len(args[2])) or real_experts(*args))
    evaluate_pq(agent, steps=5, training_steps=2)
    assert [call["steps"] for call in calls] == [2, 2, 1]
    assert len(tokenized) == 1  # the pool's expert solutions, tokenized once for the chain
    for before, after in zip(calls, calls[1:]):
        assert after["baseline"] is before["student"]
    (checkpoint,) = agent.store.checkpoints(agent.run_id, role="pq", status="complete")
    (evaluation,) = agent.store.evaluations(agent.run_id, set_name="hard-test-pq")
    assert evaluation["checkpoint_id"] == checkpoint["id"]
    saved = load_file(str(next(Path(checkpoint["path"]).glob("*.safetensors"))))
    trained = calls[-1]["student"].state_dict()
    assert saved and saved.keys() <= trained.keys()
    assert all(torch.equal(saved[name], trained[name]) for name in saved)
    base = load_file(str(next(Path(random_tiny_dir).glob("*.safetensors"))))
    assert saved.keys() == base.keys()
    assert any(not torch.equal(saved[name], base[name]) for name in saved)
    assert resolve_checkpoint(agent.store, agent.run_id, "pq", None)["id"] == checkpoint["id"]
    # a chain that meets its deadline keeps and evaluates the student it has: here one training fits, as
    # the evaluation takes all the time left
    import time

    calls.clear()
    summary = evaluate_pq(agent, steps=3, training_steps=1, deadline=time.time() + 600, evaluation_seconds=600)
    assert [call["steps"] for call in calls] == [1] and summary["steps"] == 1
    assert agent.store.checkpoints(agent.run_id, role="pq", status="complete")[-1]["metrics"]["steps"] == 1
    assert evaluate_pq(agent, steps=3, training_steps=1, deadline=time.time() + 600)["steps"] == 3
    # the training that would end after the deadline is shortened to the steps that fit at the chain's pace
    # (a clock that moves 10 s per step), and none starts once fewer than a tenth of a training's fit; the
    # first is sized by the caller's estimate of the pace (`pace`; without one it measures a few steps first:
    # tests/test_budget_trial.py)
    clock = [time.time()]
    monkeypatch.setattr(pq, "time", type("Clock", (), {"time": staticmethod(lambda: clock[0])}))
    lengths = []

    def ten_seconds_a_step(backend):
        def train(student, *args, steps, **kwargs):
            clock[0] += 10 * steps
            lengths.append(steps)
            return student, {}
        return train

    monkeypatch.setattr(rl, "trainer", ten_seconds_a_step)
    summary = evaluate_pq(agent, steps=60, training_steps=20, deadline=clock[0] + 470, evaluation_seconds=20,
                          pace=10.0)
    assert lengths == [20, 20, 5] and summary["steps"] == 45
    assert "PQ student: 45 steps fit before the deadline (60 planned) (the last training shortened to 5);" \
        " evaluating it after them" in [e["message"] for e in agent.store.events(agent.run_id, limit=3)]
    assert agent.store.checkpoints(agent.run_id, role="pq", status="complete")[-1]["metrics"]["steps"] == 45
    lengths.clear()
    assert evaluate_pq(agent, steps=60, training_steps=20, deadline=clock[0] + 235, evaluation_seconds=20,
                       pace=10.0)["steps"] == 20
    assert lengths == [20]  # room for one step after the first training: less than a tenth of one
    assert "PQ student: 20 steps fit before the deadline (60 planned); evaluating it now" in [
        e["message"] for e in agent.store.events(agent.run_id, limit=3)]
    # the final training's chain (fill) goes on past its estimate while trainings fit, to the deadline
    lengths.clear()
    summary = evaluate_pq(agent, steps=20, training_steps=20, deadline=clock[0] + 470, evaluation_seconds=20,
                          fill=True, pace=10.0)
    assert lengths == [20, 20, 5] and summary["steps"] == 45
    # its progress counts towards the steps the deadline leaves, not the plan it has passed
    progress = [e["message"] for e in agent.store.events(agent.run_id, limit=20) if "steps trained" in e["message"]]
    assert progress[-3:] == [f"PQ student: {done} of 45 steps trained, ETA {eta} min (then its hard-test"
                             f" evaluation)" for done, eta in ((20, 4), (40, 1), (45, 0))]
    lengths.clear()
    assert evaluate_pq(agent, steps=20, training_steps=20, deadline=clock[0] + 470, evaluation_seconds=20,
                          pace=10.0)["steps"] == 20
    assert lengths == [20]
    evaluate_pq(agent, steps=1)  # a second PQ replaces the first: `pq` names the newest
    (newest,) = agent.store.checkpoints(agent.run_id, role="pq", status="complete")
    assert newest["id"] != checkpoint["id"]
    out = agent.export("pq", str(tmp_path / "exported"))
    exported = load_file(str(next(Path(out).glob("*.safetensors"))))
    saved = load_file(str(next(Path(newest["path"]).glob("*.safetensors"))))
    assert all(torch.equal(exported[name], saved[name]) for name in saved)


def test_a_run_ends_with_the_final_training_and_the_cli_exports_its_student(
        tmp_path, hard_files, random_tiny_dir, monkeypatch, capsys):
    """When the budget ends, the run's last unit is the PQ student (budget.pq_steps on the rewarded
    questions plus hard-train, from the base model), kept as `pq`, reported by `soar status` and exported by
    `soar run`; a stop skips it, and so do the modes without a teacher."""
    from safetensors.torch import load_file

    from soar_agent import cli
    from soar_agent.status import format_status, run_status

    monkeypatch.setattr(teacher, "sample_items", fixed_items)
    calls = record_trainings(monkeypatch)
    overrides = TINY + hard_files + [f"model.path={json.dumps(str(random_tiny_dir))}", "budget.pq_steps=3"]
    run_dir = tmp_path / "run"
    assert cli.main(["run", "--run-dir", str(run_dir), "--max-teacher-steps", "1",
                     *[x for item in overrides for x in ("--set", item)]]) == 0
    output = capsys.readouterr().out
    assert [c["steps"] for c in calls] == [1] * 4 + [3]  # 2 datasets x 2 students, then the final training
    final = calls[-1]
    agent = Agent.open(None, run_dir, log=lambda m: None, existing_only=True)
    assert [(p.question, p.answer) for p in final["problems"]] == [
        (p.question, p.answer) for p in pq.rewarded_problems(agent)[0] + agent.hard_set("train")]
    base = load_file(str(next(Path(random_tiny_dir).glob("*.safetensors"))))
    assert all(torch.equal(final["baseline"].state_dict()[name], base[name]) for name in base)  # a fresh student
    (checkpoint,) = agent.store.checkpoints(agent.run_id, role="pq", status="complete")
    assert checkpoint["metrics"] == {"steps": 3, "questions": 4, "promotion_questions": 2}
    (evaluation,) = agent.store.evaluations(agent.run_id, set_name="hard-test-pq")
    assert evaluation["checkpoint_id"] == checkpoint["id"]
    events = agent.store.events(agent.run_id, limit=100)
    kinds = [e["kind"] for e in events]
    assert kinds.index("pq-training") < kinds.index("pq-done") < kinds.index("stopped")
    assert any(e["message"].startswith("PQ student: 3 of 3 steps trained") for e in events)  # its progress
    exported = sorted((run_dir / "exports").iterdir())[-1]
    assert "exported the PQ student" in output and "eval-pq" not in output, output
    saved = load_file(str(next(Path(checkpoint["path"]).glob("*.safetensors"))))
    assert all(torch.equal(load_file(str(next(exported.glob("*.safetensors"))))[name], saved[name]) for name in saved)
    status = run_status(run_dir)
    assert status["pq"]["steps"] == 3 and "pass@1" in status["pq"]
    assert status["pq"]["questions"] == 4 and "PQ student (3 steps, 4 questions)" in format_status(status)
    # the same budget again is refused; when the final training did not finish (a crash), the refusal names
    # the command that trains it
    assert cli.main(["run", "--run-dir", str(run_dir), "--max-teacher-steps", "1"]) == 2
    assert "--more-steps" in (refusal := "".join(capsys.readouterr())) and "eval-pq" not in refusal, refusal
    agent.store.mark_checkpoint(checkpoint["id"], "deleted")
    assert cli.main(["run", "--run-dir", str(run_dir), "--max-teacher-steps", "1"]) == 2
    assert f"soar eval-pq {run_dir}" in "".join(capsys.readouterr())

    stopped = tiny_agent(tmp_path / "stopped", hard_files, random_tiny_dir, "budget.pq_steps=3")
    stopped.stop_reason = "SIGINT received: stopping after the current unit"
    stopped.run(Budget(max_teacher_steps=1))
    hard_only = tiny_agent(tmp_path / "hard-only", hard_files, random_tiny_dir, "budget.pq_steps=3", "run.mode=hard-only")
    hard_only.run(Budget(max_teacher_steps=1))
    for agent in (stopped, hard_only):
        assert agent.final_summary is None and not agent.store.checkpoints(agent.run_id, role="pq")


def test_with_a_deadline_the_run_keeps_the_final_trainings_time_free(tmp_path, hard_files, random_tiny_dir,
                                                                      monkeypatch, capsys):
    """No teacher step starts that would end inside the time the final training needs (estimated from the
    run's own measurements); the final training takes as many steps as still fit, and none when fewer than
    one training's worth do, saying how to train it later."""
    import time

    monkeypatch.setattr(teacher, "sample_items", fixed_items)
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir, "budget.pq_steps=0")
    agent.run(Budget(max_teacher_steps=1))  # measures a step, the students' steps and a hard-test evaluation
    costs = pq.measured_costs(agent.store, agent.run_id, agent.config.promotion.tau)
    trainings = agent.store.trainings(agent.run_id)
    assert 0 < costs.rl_step < 100 and all(t["metrics"]["train_seconds"] > 0 for t in trainings)
    # student.max_new_tokens 8 fits no expert solution: every step is RL, which stands for both phases
    assert all(t["metrics"]["sft_steps"] == 0 and t["metrics"]["rl_seconds"] > 0 for t in trainings)
    assert costs.sft_step == costs.rl_step
    assert costs.evaluation == agent.store.evaluations(agent.run_id, set_name="hard-test")[-1]["summary"]["seconds"] > 0
    # the PQ student's questions are the rewarded datasets' (here the promoted one): its students' step times
    # count, not the others', supervised and RL steps apart, and a training's work outside its steps apart
    agent.config.promotion.tau = 0.5
    (promotion,) = agent.store.datasets(agent.run_id, kind="promotion")
    other = next(t["dataset_id"] for t in trainings if t["dataset_id"] != promotion["meta"]["from_dataset"])
    for index, (dataset_id, seconds) in enumerate([(promotion["meta"]["from_dataset"], 100.0)] * 3 + [(other, 1.0)] * 5):
        agent.store.add_training(run_id=agent.run_id, teacher_step=99, dataset_id=dataset_id, student_index=index,
                                 reward=0.0, accuracy_before=0.0, accuracy_after=0.0, checkpoint_path=None,
                                 metrics={"train_seconds": 5.1 * seconds, "steps": 3, "sft_steps": 2,
                                          "sft_seconds": 2 * seconds, "rl_seconds": 3 * seconds})
    costs = pq.measured_costs(agent.store, agent.run_id, agent.config.promotion.tau)  # the promoted dataset's five
    assert (costs.sft_step, costs.rl_step, round(costs.per_training, 6)) == (100.0, 300.0, 10.0)
    # each training of the chain has its own supervised phase, at most one pass over the expert solutions:
    # few of them (one promotion) leave most of its steps to RL, several times a supervised step's cost
    student = agent.config.student  # sft-rlvr, sft_share 0.9, 2 x 2 solutions per supervised step
    assert pq.chain_seconds(pq.Costs(1.0, 5.0, 2.0, 0.0), student, 250, experts=1000) == 2 * (90 + 10 * 5 + 2) + (45 + 5 * 5 + 2)
    assert pq.chain_seconds(pq.Costs(1.0, 5.0, 2.0, 0.0), student, 100, experts=120) == 30 + 70 * 5 + 2
    # the estimate's expert solutions: those of the questions the final training will train on
    questions, _ = pq.rewarded_problems(agent)
    assert pq.expert_solutions(agent) == sum(1 for p in questions + agent.hard_set("train") if p.steps) > 0
    # pretend a student step costs 10 s and an evaluation 50 s, so that the test does not depend on the clock
    monkeypatch.setattr(pq, "measured_costs", lambda store, run_id, tau: pq.Costs(10.0, 10.0, 0.0, 50.0))
    agent.config.budget.pq_steps = 300  # ~51 minutes kept free
    calls = record_trainings(monkeypatch)
    # ... and the chain's own pace is 10 s a step too: its clock moves on by 10 s per step trained and by
    # nothing else, so the tiny trainings' real seconds (more on a loaded machine) do not count
    started, ahead, pace = [time.time()], [0.0], [10.0]

    def restart_clock():
        started[0], ahead[0] = time.time(), 0.0

    monkeypatch.setattr(pq, "time", type("Clock", (), {"time": staticmethod(lambda: started[0] + ahead[0])}))
    spy = rl.trainer

    def ten_seconds_a_step(backend):
        def train(*args, steps=None, **kwargs):
            ahead[0] += pace[0] * steps
            return spy(backend)(*args, steps=steps, **kwargs)
        return train

    monkeypatch.setattr(rl, "trainer", ten_seconds_a_step)
    reason = agent.run(Budget(deadline=time.time() + 50 + 150 * 10 + 5, max_teacher_steps=5))
    assert "final training" in reason and len(agent.completed_steps()) == 1  # no step started
    assert 145 <= sum(c["steps"] for c in calls) <= 150  # the steps that still fit, not the 300 wanted
    assert [c["steps"] for c in calls][:1] == [100] and agent.final_summary is not None

    in_50_minutes = Budget(deadline=time.time() + 3000)  # less than the 300 steps' 3,050 s
    assert "final training's ~51 min" in no_time_for_a_step(agent, in_50_minutes, agent.completed_steps())
    agent.config.budget.pq_steps = 0  # without a final training only the step's own time counts
    assert no_time_for_a_step(agent, in_50_minutes, agent.completed_steps()) is None
    # steps grow longer as the teacher writes longer questions: the next is taken to last as the longest of
    # the last three
    growing = [{"step": n, "metrics": {"seconds": seconds}} for n, seconds in enumerate([900, 10, 10, 10, 100], 1)]
    assert no_time_for_a_step(agent, Budget(deadline=time.time() + 90), growing)
    assert no_time_for_a_step(agent, Budget(deadline=time.time() + 90), growing[:4]) is None
    # the final training's length follows the budget: with more time left than budget.pq_steps need, it
    # takes every step that fits (here ~245 of 10 s, not the 100 asked for) ...
    agent.config.budget.pq_steps = 100
    calls.clear()
    restart_clock()
    agent.run(Budget(deadline=time.time() + 50 + 250 * 10 + 5, max_teacher_steps=1))
    assert 240 <= sum(c["steps"] for c in calls) <= 250 and [c["steps"] for c in calls][:2] == [100, 100]
    assert agent.final_summary["steps"] == sum(c["steps"] for c in calls)
    # the estimate is only the plan: a chain twice as fast goes on to the deadline ((2,555 - 50) s / 5 s = 501
    # steps, its evaluation's 50 s kept)
    calls.clear()
    restart_clock()
    pace[0] = 5.0
    agent.run(Budget(deadline=time.time() + 50 + 250 * 10 + 5, max_teacher_steps=1))
    trained = sum(c["steps"] for c in calls)
    assert 491 <= trained <= 501 and agent.final_summary["steps"] == trained
    # ... and budget.pq_share of the session's budget is kept for it when that is longer than pq_steps' time
    half_of_an_hour = Budget(deadline=time.time() + 3600, started=time.time())
    agent.config.budget.pq_share = 0.5
    assert no_time_for_a_step(agent, half_of_an_hour, growing[:4]) is None  # 15 min steps: 30 min fit
    two_minutes_short = [{"step": 1, "metrics": {"seconds": 1800 + 120}}]
    assert "final training's ~30 min" in no_time_for_a_step(agent, half_of_an_hour, two_minutes_short)
    agent.config.budget.pq_share = 0.0
    assert no_time_for_a_step(agent, half_of_an_hour, two_minutes_short) is None  # pq_steps' ~18 min only
    agent.config.budget.pq_steps = 300
    calls.clear()
    agent.run(Budget(deadline=time.time() + 60, max_teacher_steps=5))  # one step of the 300 would fit: none
    assert calls == [] and agent.store.events(agent.run_id, limit=2)[0]["kind"] == "pq-skipped"
    assert "soar eval-pq" in agent.store.events(agent.run_id, limit=2)[0]["message"]
    # the run's stored config has no final training: eval-pq asks for the steps, in one line, training nothing
    from soar_agent import cli

    pq_students = len(agent.store.checkpoints(agent.run_id, role="pq"))
    assert cli.main(["eval-pq", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert f"{tmp_path / 'run'}: budget.pq_steps is 0" in error and "--steps N" in error and error.count("\n") == 1
    assert len(agent.store.checkpoints(agent.run_id, role="pq")) == pq_students


def test_the_time_budget_counts_each_sessions_work_not_the_time_the_run_was_down(tmp_path, monkeypatch):
    """status.time_budget: a killed session used the time to its last stored write; the next session records
    what was used before it; a session that stopped at its budget's end ended it; an --until keeps its clock
    time; a session stored before sessions recorded their use is a budget of its own."""
    import soar_agent.store as store_module
    from soar_agent.status import time_budget
    from soar_agent.store import Store

    clock = [0.0]
    monkeypatch.setattr(store_module, "_now", lambda: dt.datetime.fromtimestamp(clock[0], dt.timezone.utc)
                        .isoformat(timespec="milliseconds"))
    start = 1_800_000_000.0
    with Store(tmp_path / "soar.db") as store:
        run = store.create_run(name="night", mode="soar")
        assert time_budget(store, run) is None  # no session yet

        def event(at, kind, **data):
            clock[0] = start + at
            store.log_event(run_id=run, level="info", kind=kind, message=data.pop("message", kind), data=data)

        event(0, "session", deadline=start + 8 * 3600, max_teacher_steps=0)  # as stored before 2026-12-03
        event(3600, "teacher-sampled")
        clock[0] = start + 5400  # the last write: a training; then the process is killed
        store.add_training(run_id=run, teacher_step=1, dataset_id=None, student_index=0, reward=0.0,
                           accuracy_before=0.0, accuracy_after=0.0, checkpoint_path=None, metrics={})
        budget = time_budget(store, run)
        assert (budget.seconds, budget.used, budget.until, budget.ended) == (8 * 3600, 5400, False, False)
        assert budget.left(now=start + 10 * 3600) == 8 * 3600 - 5400  # down for hours: none of it counts
        # resumed 10 hours later with 6.5 h left: recorded as 1.5 h used before it
        resumed = start + 10 * 3600
        event(10 * 3600, "session", deadline=resumed + 6.5 * 3600, max_teacher_steps=0, until=False, used_s=5400)
        event(10 * 3600 + 1800, "teacher-sampled")
        budget = time_budget(store, run)
        assert (budget.seconds, budget.used, budget.ended) == (8 * 3600, 5400 + 1800, False)
        event(16.5 * 3600, "stopped", message="time budget reached: a teacher step (~9 min) would not end ...")
        assert time_budget(store, run).ended and time_budget(store, run).left(now=resumed) == 0.0
        # --until 07:00: the clock time is kept, however long the run was down
        event(20 * 3600, "session", deadline=start + 22 * 3600, max_teacher_steps=0, until=True, used_s=0.0)
        budget = time_budget(store, run)
        assert budget.until and not budget.ended and budget.left(now=start + 21 * 3600) == 3600
        event(21 * 3600, "session", deadline=None, max_teacher_steps=3, until=False, used_s=0.0)
        assert time_budget(store, run) is None  # the last session had no time budget


def test_the_heartbeat_is_written_inside_units_of_work(tmp_path, hard_files, random_tiny_dir, monkeypatch):
    """The agent's heartbeat comes with its progress inside a unit (students' steps, evaluations, the teacher's
    sampling), not only between units, which take minutes: the TUI and `soar status` tell a run at work from
    a killed one by it."""
    import soar_agent.control as control

    monkeypatch.setattr(teacher, "sample_items", fixed_items)
    monkeypatch.setattr(control, "HEARTBEAT_S", 0.0)
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir)
    reports, beats, polls = [], [], []
    agent.progress = lambda label, done, total: reports.append(label)
    real_heartbeat, real_poll = agent.store.heartbeat, agent.poll_commands
    monkeypatch.setattr(agent.store, "heartbeat", lambda run_id: beats.append(len(reports)) or real_heartbeat(run_id))
    monkeypatch.setattr(agent, "poll_commands", lambda: polls.append(1) or real_poll())
    agent.run(Budget(max_teacher_steps=1))
    assert any("student" in label for label in reports) and any("evaluation" in label for label in reports)
    assert len(beats) >= len(reports) + len(polls) > 2 * len(polls)  # one with every report, one with every poll


def test_a_resumed_run_continues_its_budget_and_refuses_one_that_is_over(tmp_path, hard_files, random_tiny_dir,
                                                                           monkeypatch, capsys):
    """`soar run --run-dir DIR` without a limit of its own goes on with the rest of its last session's time
    budget (the budget's start moved back by what was used, so budget.pq_share stays a share of the whole)
    and its step limit; a limit given on the command line replaces them; a budget that ended is refused in
    one line naming what gives more."""
    import time

    from soar_agent import cli
    from soar_agent.store import Store

    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir)
    run_dir = str(tmp_path / "run")
    budgets = []
    monkeypatch.setattr(Agent, "run", lambda self, budget: budgets.append(budget) or "stopped: spied")
    # a session of 2 hours with a limit of 5 steps started an hour ago, killed half an hour in (its last write)
    session = agent.store.log_event(run_id=agent.run_id, level="info", kind="session", message="session started",
                                    data={"deadline": time.time() + 3600, "max_teacher_steps": 5, "until": False,
                                          "used_s": 0.0})
    last = agent.store.log_event(run_id=agent.run_id, level="info", kind="teacher-sampled", message="step 1")
    for event, ago in ((session, 3600), (last, 1800)):
        agent.store._write(lambda c: c.execute("UPDATE events SET ts = ? WHERE id = ?", (
            dt.datetime.fromtimestamp(time.time() - ago, dt.timezone.utc).isoformat(timespec="milliseconds"), event)))
    agent.store.close()
    assert cli.main(["run", "--run-dir", run_dir, "--no-export"]) == 0
    (budget,) = budgets
    assert budget.max_teacher_steps == 5 and not budget.until
    # an hour and a half left: the half hour the run was down does not count, nor does the resume's own event
    assert abs(budget.deadline - (time.time() + 5400)) < 60
    assert abs(budget.deadline - budget.started - 2 * 3600) < 60  # the whole budget, for budget.pq_share
    assert "continuing the run's time budget: 1.50 h left of 2.00 h" in capsys.readouterr().out
    # a limit on the command line is a new budget, from now
    assert cli.main(["run", "--run-dir", run_dir, "--no-export", "--hours", "3"]) == 0
    assert abs(budgets[-1].deadline - (time.time() + 3 * 3600)) < 60 and budgets[-1].max_teacher_steps == 0
    # the budget reached: refused, naming --hours and (no final training was trained) eval-pq; no session
    with Store(tmp_path / "run" / "soar.db") as store:
        store.log_event(run_id=agent.run_id, level="info", kind="stopped", message="time budget reached")
    assert cli.main(["run", "--run-dir", run_dir, "--no-export"]) == 2
    error = capsys.readouterr().err
    assert "the run's time budget is over" in error and "--hours H" in error and "eval-pq" not in error
    assert error.count("\n") == 1 and len(budgets) == 2
    with Store(tmp_path / "run" / "soar.db") as store:
        assert store.last_session(agent.run_id)["id"] == session


def test_teacher_items_carry_the_domains_difficulty_as_their_level():
    """A teacher-written question gets the level the generator would give it (the TUI shows it), and the
    check of its answer against the solver is kept."""
    from soar_agent.tasks import arith, program

    item = teacher.check_item(arith, "<question>(3+4)*5-6</question><answer>30</answer>", "verified")
    assert item.problem.level == 3 and item.problem.answer == "29" and item.verified is False
    code = "a=2\nb=a*3\nprint(b)"
    item = teacher.check_item(program, f"<question>{code}</question><answer>6</answer>", "verified")
    assert item.problem.level == 1 and item.verified is True  # two statements before the print: level 1


def test_a_wrong_teacher_answer_keeps_no_expert_steps():
    """Under reward_target = teacher, a student trains against the teacher's answer; the solver's steps end at
    the solver's answer, so a wrong teacher answer keeps none (sft-rlvr and srl would otherwise train on
    steps that contradict it). A right answer, or the verified target, keeps them."""
    from soar_agent.tasks import arith

    wrong = teacher.check_item(arith, "<question>(3+4)*5-6</question><answer>30</answer>", "teacher")
    assert wrong.problem.answer == "30" and wrong.problem.steps == ()
    right = teacher.check_item(arith, "<question>(3+4)*5-6</question><answer>29</answer>", "teacher")
    assert right.problem.answer == "29" and right.problem.steps == arith.make_problem("(3+4)*5-6").steps != ()
    verified = teacher.check_item(arith, "<question>(3+4)*5-6</question><answer>30</answer>", "verified")
    assert verified.problem.answer == "29" and verified.problem.steps == right.problem.steps


def test_a_periodic_evaluation_a_kill_or_a_stop_left_undone_is_redone_first_on_resume(
        tmp_path, hard_files, random_tiny_dir, monkeypatch):
    """The hard-test evaluation after an eval.every_teacher_steps-th step is planned: a kill inside it, or a stop
    that skips it, leaves it to the next session, which does it before anything else (the baseline is still
    the one it was planned for), even when the step budget is already spent."""
    monkeypatch.setattr(teacher, "sample_items", fixed_items)
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir, "eval.every_teacher_steps=1")
    real = Agent.report_evaluation

    def killed_in_step_1(self, step):
        if step == 1:
            raise KeyboardInterrupt  # as a kill -9 in the evaluation: nothing of it is stored
        return real(self, step)

    monkeypatch.setattr(Agent, "report_evaluation", killed_in_step_1)
    with pytest.raises(KeyboardInterrupt):
        agent.run(Budget(max_teacher_steps=1))
    assert [e["teacher_step"] for e in agent.store.evaluations(agent.run_id, set_name="hard-test")] == [0]
    monkeypatch.setattr(Agent, "report_evaluation", real)
    resumed = Agent.open(None, tmp_path / "run", log=lambda m: None, existing_only=True)
    resumed.run(Budget(max_teacher_steps=1))  # the budget is spent: only the missing evaluation runs
    assert [e["teacher_step"] for e in resumed.store.evaluations(resumed.run_id, set_name="hard-test")] == [0, 1]
    assert len(resumed.completed_steps()) == 1
    # a graceful stop during step 2 skips its evaluation; the next session does it first
    resumed.store.send_command(run_id=resumed.run_id, command="stop")
    monkeypatch.setattr(Agent, "poll_commands", lambda self: None)  # the stop lands after the step, not before
    real_step = Agent.teacher_step

    def step_then_stop(self, step):
        real_step(self, step)
        self.stop_reason = "stop command received"

    monkeypatch.setattr(Agent, "teacher_step", step_then_stop)
    resumed.run(Budget(max_teacher_steps=2))
    assert [e["teacher_step"] for e in resumed.store.evaluations(resumed.run_id, set_name="hard-test")] == [0, 1]
    monkeypatch.setattr(Agent, "teacher_step", real_step)
    again = Agent.open(None, tmp_path / "run", log=lambda m: None, existing_only=True)
    again.run(Budget(max_teacher_steps=2))
    assert [e["teacher_step"] for e in again.store.evaluations(again.run_id, set_name="hard-test")] == [0, 1, 2]
