"""Students learn from the teacher's own items: under teacher.reward_target = teacher the teacher solves each
of its questions in the students' format, students train supervised on that solution and with RL on its
answer (right or wrong), a solver only records which, and the teacher's update covers the solution too."""

import json
import os
import sqlite3
import subprocess
import sys

import torch

import soar_agent.teacher as teacher
from soar_agent.agent import Agent, Budget
from soar_agent.students import curriculum_problems
from soar_agent.config import TeacherSection
from soar_agent.engine import Completion
from soar_agent.tasks import arith, teacher_prompt
from soar_agent.rl.train import sequence_logprobs
from tests.test_outer_loop import tiny_agent

QUESTION = "(3+4)*5-6"  # the solver's answer is 29
WRONG_SOLUTION = "1. **add** 3+4=7, 7*5-6\n2. **mul** 7*5=35, 35-6\n3. **sub** 35-6=28\nAnswer: 28"
RIGHT_SOLUTION = "1. **add** 3+4=7, 7*5-6\n2. **mul** 7*5=35, 35-6\n3. **sub** 35-6=29\nAnswer: 29"


def test_a_teacher_solution_is_what_students_train_on_right_or_wrong_and_the_solver_only_records_it():
    text = f"<question>{QUESTION}</question><answer>1</answer>"
    wrong = teacher.check_item(arith, text, "teacher", WRONG_SOLUTION)
    assert wrong.verified is False and wrong.teacher_answer == "28"
    assert wrong.problem.answer == "28"  # the teacher's, not the solver's 29 nor the inline 1
    assert arith.expert_completion(wrong.problem) == WRONG_SOLUTION  # its own steps, exactly as it wrote them
    right = teacher.check_item(arith, text, "teacher", RIGHT_SOLUTION)
    assert right.verified is True and arith.expert_completion(right.problem) == RIGHT_SOLUTION
    # the solver's setting keeps today's behaviour: the solver's answer and steps, whatever the teacher wrote
    verified = teacher.check_item(arith, text, "verified", WRONG_SOLUTION)
    assert verified.problem.answer == "29" and verified.problem.steps == arith.make_problem(QUESTION).steps
    # drop-unverified keeps the teacher's right solutions only
    assert teacher.check_item(arith, text, "drop-unverified", RIGHT_SOLUTION).problem.answer == "29"
    try:
        teacher.check_item(arith, text, "drop-unverified", WRONG_SOLUTION)
        raise AssertionError("a wrong solution was kept under drop-unverified")
    except teacher.RejectedItem:
        pass


def test_a_solution_without_an_answer_line_is_rejected_and_its_question_not_penalized(char_tokenizer):
    class Engine:
        tokenizer = char_tokenizer

        def generate(self, prompts, n=1, **kwargs):
            if prompts[0] == teacher_prompt(arith):  # the teacher's items
                return [[Completion([5], f"<question>{i}+{i}</question><answer>0", [0.0], "stop", "</answer>")
                         for i in range(1, n + 1)]]
            # its solutions: every other one has no answer line
            return [[Completion([6], f"1. **add** x\nAnswer: {p.count('+')}" if k % 2 else "I do not know",
                                [0.0], "stop", None)] for k, p in enumerate(prompts)]

    cfg = TeacherSection(reward_target="teacher")
    items, stats = teacher.sample_items(Engine(), arith, 3, cfg, seed=0, solution_tokens=16)
    assert len(items) == 3 and all(item.solution.startswith("1. ") for item in items)
    assert all(item.problem.answer == "1" and item.verified is False for item in items)  # 1+1 answered 1
    assert stats["rejected"] == {"the teacher's worked solution has no final answer line": 3}
    assert stats["rejected_token_ids"] == []  # the question parsed: no penalty on it


def test_the_teacher_update_raises_the_log_prob_of_its_solutions_with_positive_advantage(random_tiny):
    model, tokenizer = random_tiny
    text = f"<question>{QUESTION}</question><answer>29</answer>"
    good = teacher.check_item(arith, text, "teacher", RIGHT_SOLUTION)
    bad = teacher.check_item(arith, text.replace("29", "28"), "teacher", WRONG_SOLUTION)
    prompt = tokenizer(arith.student_prompt(good.problem.question))["input_ids"]

    def solution_logprob(solution):
        with torch.no_grad():
            logprobs, _, _ = sequence_logprobs(model, [prompt], [tokenizer(solution, add_special_tokens=False)[
                "input_ids"]], tokenizer.pad_token_id)
        return logprobs.sum().item()

    before = solution_logprob(RIGHT_SOLUTION), solution_logprob(WRONG_SOLUTION)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stats = teacher.teacher_update(model, optimizer, tokenizer, arith, [[good], [bad]], [1.0, 0.0])
    assert stats["updated"] and stats["solution_rows"] == 2 and stats["items"] == 4
    after = solution_logprob(RIGHT_SOLUTION), solution_logprob(WRONG_SOLUTION)
    assert after[0] > before[0] and after[1] < before[1]


def test_a_step_whose_students_cannot_update_says_so(tmp_path, hard_files, random_tiny_dir, monkeypatch):
    """A random model never matches the teacher's answers and a stored item without a solution has no steps
    to train on: no student updates, and the console and the store say so instead of a quiet +0.000."""
    def items(engine, domain, count, cfg, seed, progress=None, solution_tokens=None):
        return [teacher.check_item(domain, f"<question>{i}+{i}</question><answer>7</answer>", cfg.reward_target)
                for i in range(count)], {"sampled": count, "accepted": count, "rejected": {}}

    monkeypatch.setattr(teacher, "sample_items", items)
    lines = []
    agent = tiny_agent(tmp_path, hard_files, random_tiny_dir, "teacher.reward_target=teacher")
    agent.log = lines.append
    agent.run(Budget(max_teacher_steps=1))
    kinds = [e["kind"] for e in agent.store.events(agent.run_id)]
    assert kinds.count("student-no-update") == 4 and "no-student-update" in kinds
    assert any("no student could update" in line for line in lines)
    (step,) = agent.completed_steps()
    assert step["metrics"]["students_updated"] == 0 and step["metrics"]["students"] == 4
    from soar_agent.status import format_status, run_status

    status = run_status(tmp_path / "run")
    assert status["steps"][0]["students_updated"] == 0
    assert "no student updated" in format_status(status)


def test_soar_run_with_teacher_labels_trains_students_on_the_teachers_solutions_and_updates_the_teacher(tmp_path):
    """The paper's setting on the shipped model, through the CLI: students make updates (supervised steps on
    the teacher's own solutions, RL on its answers), the teacher's update covers its solutions, and what
    students train on is the teacher's answer and steps for every item, right or wrong."""
    run_dir = tmp_path / "run"
    settings = ['teacher.reward_target="teacher"', "teacher.items_per_dataset=48", "student.steps=4",
                "student.students_per_dataset=1", "reward.questions=8", "eval.samples=1",
                "eval.every_teacher_steps=100", "budget.pq_steps=0", "student.batch_prompts=8",
                "student.group_size=4"]
    result = subprocess.run([sys.executable, "-m", "soar_agent.cli", "run", "--run-dir", str(run_dir),
                             "--max-teacher-steps", "1", "--no-export",
                             *[x for s in settings for x in ("--set", s)]],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "students train on the teacher's own worked solutions" in result.stdout
    db = sqlite3.connect(run_dir / "soar.db")
    trainings = [json.loads(m) for (m,) in db.execute("select metrics_json from trainings")]
    assert len(trainings) == 2 and all(t["updates"] > 0 and t["sft_steps"] > 0 for t in trainings)
    (metrics,) = [json.loads(m) for (m,) in db.execute("select metrics_json from teacher_steps")]
    assert metrics["teacher_update"]["updated"] and metrics["teacher_update"]["solution_rows"] == 96
    db.close()
    agent = Agent.open(None, run_dir, log=lambda m: None, existing_only=True)
    right = wrong = 0
    for dataset in agent.store.datasets(agent.run_id, kind="curriculum"):
        problems = curriculum_problems(dataset, agent.store.dataset_problems(dataset["id"]), agent.domain,
                                       "teacher", set())
        solutions = dataset["meta"]["solutions"]
        assert len(problems) == len(solutions) == 48
        for problem, solution in zip(problems, solutions):
            assert problem.answer == arith.extract_answer(solution)
            if problem.answer == arith.solve(problem.question):
                right += 1
            else:  # a wrong solution is trained on as the teacher wrote it, never with the solver's steps
                wrong += 1
                assert problem.steps and problem.steps == teacher.solution_parts(arith, solution)[1]
                assert problem.steps != arith.make_problem(problem.question).steps
                # its steps are the solution's lines (renumbered 1..N where the teacher miscounted)
                assert [line.split(". ", 1)[1] for line in solution.splitlines()[:-1]] == list(problem.steps)
    assert right and wrong  # right and wrong teacher solutions both reach the students
    # soar status shows the share of the teacher's answers the solver confirmed
    from soar_agent.status import run_status

    assert run_status(run_dir)["steps"][0]["teacher_right"] == right / (right + wrong)


def test_the_problem_view_shows_the_teachers_worked_solution_and_whether_it_was_right():
    from tui.problem import describe

    problem = {"id": 7, "domain": "arith", "level": 3, "source": "teacher", "answer": "28", "question": QUESTION,
               "answer_verified": 0, "datasets": [], "phases": {},
               "provenance": {"teacher_step": 2, "dataset": 1, "teacher_answer": "28",
                              "teacher_solution": WRONG_SOLUTION}}
    text = describe(problem)
    assert "teacher's answer 28: wrong (students train on it as written)" in text
    assert "teacher's worked solution: 1. **add** 3+4=7, 7*5-6 | 2. **mul** 7*5=35, 35-6 |" in text
    assert "Answer: 28" in text
