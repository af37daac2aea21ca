"""A full teacher step, evaluations included, for seeds whose easy evaluation set repeats questions, in
both built-in domains, with a hard-test file that repeats a line (issue 8: UNIQUE constraint failed)."""

import json
import random

import pytest

import soar_agent.teacher as teacher
from soar_agent.agent import Agent, Budget
from soar_agent.reporting import EASY_LEVELS, EASY_PER_LEVEL
from soar_agent.seeds import derive_seed as _seed
from soar_agent.config import load_config
from soar_agent.mining import write_jsonl
from soar_agent.store import content_hash
from soar_agent.tasks import generate_problems, get_domain

TINY = ["teacher.datasets_per_step=2", "teacher.items_per_dataset=2", "teacher.max_new_tokens=8",
        "student.students_per_dataset=1", "student.steps=1", "student.batch_prompts=2", "student.group_size=2",
        "student.max_new_tokens=8", "reward.questions=2", "eval.samples=1", "eval.every_teacher_steps=1",
        "eval.max_new_tokens=8", "promotion.tau=-1.0", "budget.pq_steps=0"]

# Seeds whose generated easy set repeats questions (checked below, so the test cannot silently go stale).
SEEDS = {"arith": (1, 7, 14), "program": (0, 4, 5)}


def easy_set_repeats(domain, seed: int) -> int:
    problems = generate_problems(domain, [lv for lv in EASY_LEVELS for _ in range(EASY_PER_LEVEL)],
                                 random.Random(_seed(seed, 4242)))
    return len(problems) - len({content_hash(p.domain, p.question) for p in problems})


@pytest.mark.parametrize("domain_name", sorted(SEEDS))
def test_full_teacher_step_for_seeds_with_repeated_questions(tmp_path, random_tiny_dir, monkeypatch, domain_name):
    domain = get_domain(domain_name)
    rng = random.Random(11)
    train, test = generate_problems(domain, [4] * 4, rng), generate_problems(domain, [4] * 3, rng)
    write_jsonl(train, tmp_path / "train.jsonl")
    write_jsonl(test + test[:1], tmp_path / "test.jsonl")  # a user's file with a repeated line

    # a random model writes no usable items: give the teacher well-formed ones from the domain's generator
    def generated_items(engine, domain_, count, cfg, seed, progress=None):
        problems = generate_problems(domain_, [1] * count, random.Random(seed))
        items = [teacher.check_item(domain_, f"<question>{p.question}</question><answer>{p.answer}</answer>",
                                    "verified") for p in problems]
        return items, {"sampled": count, "accepted": count, "rejected": {}}

    monkeypatch.setattr(teacher, "sample_items", generated_items)
    for seed in SEEDS[domain_name]:
        assert easy_set_repeats(domain, seed) > 0
        notes = []
        config = load_config(None, TINY + [
            f"domain.name={domain_name}", f"run.seed={seed}", f"model.path={json.dumps(str(random_tiny_dir))}",
            f"domain.hard_train={json.dumps(str(tmp_path / 'train.jsonl'))}",
            f"domain.hard_test={json.dumps(str(tmp_path / 'test.jsonl'))}"])
        agent = Agent.open(config, tmp_path / f"run-{domain_name}-{seed}", log=notes.append)
        reason = agent.run(Budget(max_teacher_steps=1))
        assert "1 teacher steps" in reason, (seed, reason)
        store, run = agent.store, agent.run_id
        (step,) = store.teacher_steps(run)
        assert step["status"] == "complete"
        assert [e["teacher_step"] for e in store.evaluations(run, set_name="easy")] == [0, 1]
        hard_tests = store.evaluations(run, set_name="hard-test")
        assert [e["teacher_step"] for e in hard_tests] == [0, 1]
        # the repeated line was skipped with a note, so the set holds each question once
        assert all(len(store.evaluation_results(e["id"])) == 3 for e in hard_tests)
        assert len(store.dataset_problems(store.datasets(run, kind="hard-test")[0]["id"])) == 3
        assert any("test.jsonl: 1 repeated question(s) skipped" in n for n in notes)
        assert any(e["kind"] == "hard-set-repeats" for e in store.events(run, level="warning"))
        store.close()


def test_store_refuses_two_results_for_one_problem_and_stores_nothing(tmp_path):
    from soar_agent.store import Store
    from soar_agent.tasks.base import Problem

    with Store(tmp_path / "soar.db") as store:
        run = store.create_run(name="r", mode="soar")
        (pid,) = store.add_problems(run_id=run, problems=[Problem("1+1", "2", "arith", 1)], source="seed")
        rows = [{"problem_id": pid, "samples": 0, "correct": 0, "greedy_correct": 1}] * 2
        with pytest.raises(ValueError, match=r"results\[1\]: problem .* is already results\[0\]"):
            store.add_evaluation(run_id=run, set_name="easy", results=rows, summary={}, samples_per_problem=0,
                                 temperature=1.0)
        assert store.evaluations(run) == []
