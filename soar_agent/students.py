"""A step's student units: which problems a student trains on, the job that trains it from the baseline (in
this process or on Ray workers), and its training stored with its grounded reward (paired with the
baseline's per-question scores on the step's reward questions)."""

from __future__ import annotations

import random
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING

from soar_agent.hard_sets import hard_questions
from soar_agent.seeds import derive_seed
from soar_agent.store import content_hash, to_problem
from soar_agent.tasks.base import Problem

if TYPE_CHECKING:
    from soar_agent.agent import Agent
    from soar_agent.config import RunConfig


def reward_questions(agent: Agent, step: int) -> list[Problem]:
    """The step's reward questions: reward.questions of hard-train, drawn with the step's seed."""
    hard_train = agent.hard_set("train")
    rng = random.Random(derive_seed(agent.config.run.seed, step, 99))
    return rng.sample(hard_train, min(agent.config.reward.questions, len(hard_train)))


def reward_scores(agent: Agent, model, problems: list[Problem], step: int) -> list[float]:
    """Per-question scores under reward.metric; one sampling seed per step, so a student and its
    baseline are scored on paired samples."""
    from soar_agent.student_job import reward_scores as scores

    return scores(model, agent.tokenizer, agent.domain, agent.config, problems, reward_seed(agent, step),
                  tick=agent.beat)


def reward_seed(agent: Agent, step: int) -> int:
    return derive_seed(agent.config.run.seed, step, 55)


def dataset_problems(agent: Agent, dataset: dict) -> list[Problem]:
    return curriculum_problems(dataset, agent.store.dataset_problems(dataset["id"]), agent.domain,
                               agent.config.teacher.reward_target, hard_questions(agent))


def student_dir(agent: Agent, step: int, index: int, j: int) -> Path:
    return agent.paths.checkpoints / f"step-{step}" / f"student-{index}-{j}"


def student_job(agent: Agent, step: int, index: int, dataset: dict | None, j: int, reward_questions,
                problems: list[Problem] | None = None, steps: int | None = None, source: str = "hard"):
    """The unit's job (see student_job), and the ids its rollouts map to; None when nothing is trainable."""
    from soar_agent.config import config_to_dict
    from soar_agent.rl.srpo import stored_history
    from soar_agent.student_job import StudentJob

    cfg = agent.config
    problems = problems or dataset_problems(agent, dataset)
    if not problems:  # every item repeated a hard-set question: nothing a student may train on
        return None, {}
    steps = steps or cfg.student.steps + (cfg.student.extra_steps_after_promotion if agent.promotions() else 0)
    row_ids = {content_hash(row["domain"], row["question"]): row["id"]
               for row in (agent.store.dataset_problems(dataset["id"]) if dataset else [])}
    ids = dict(zip((p.question for p in problems),
                   agent.store.add_problems(run_id=agent.run_id, problems=problems, source=source)
                   if dataset is None else [row_ids.get(content_hash(p.domain, p.question)) for p in problems]))
    checkpoint = agent.latest_checkpoint("baseline")
    job = StudentJob(key=(index, dataset and dataset["id"], j),
                     baseline_path=checkpoint["path"] if checkpoint else cfg.model.path,
                     config=config_to_dict(cfg), problems=problems, reward_questions=list(reward_questions),
                     steps=steps, seed=derive_seed(cfg.run.seed, step, index, j),
                     reward_seed=reward_seed(agent, step), out_dir=str(student_dir(agent, step, index, j)),
                     ref=f"step-{step}/student-{index}-{j}", add_lora=cfg.model.lora and checkpoint is None,
                     history=stored_history(agent.store, agent.run_id, ids, step)
                     if cfg.student.backend == "srpo" else {})
    return job, ids


def train_one(agent: Agent, step: int, index: int, dataset: dict, j: int, reward_questions, before: list[float],
              problems: list[Problem] | None = None, steps: int | None = None,
              source: str = "hard") -> tuple[object, float, list[float] | None]:
    """Train one student from the baseline in memory and score it against the baseline's per-question
    scores `before`: (student, reward, its per-question scores), or (None, nan, None) on a failure."""
    from soar_agent.student_job import train_and_score

    job, ids = student_job(agent, step, index, dataset, j, reward_questions, problems, steps, source)
    if job is None:
        record_training(agent, step, index, dataset, j, before, None, ids)
        return None, float("nan"), None
    step_done = agent._track(f"step {step}: student {index}-{j} ({agent.config.student.backend})", job.steps)
    student, result = train_and_score(agent.model("baseline"), agent.tokenizer, agent.domain, agent.config, job,
                                      on_step=step_done, tick=agent.beat)
    reward = record_training(agent, step, index, dataset, j, before, result, ids)
    return (student, reward, result.after) if result.after is not None else (None, float("nan"), None)


def train_on_workers(agent: Agent, step: int, units: list[tuple[int, dict, int]], reward_questions,
                     before: list[float]) -> None:
    """A SOAR step's student units as parallel jobs (run.workers > 1), each recorded when it finishes."""
    from soar_agent.student_job import run_on_ray

    jobs, ids, datasets = [], {}, {}
    for index, dataset, j in units:
        job, unit_ids = student_job(agent, step, index, dataset, j, reward_questions)
        if job is None:
            record_training(agent, step, index, dataset, j, before, None, unit_ids)
            continue
        jobs.append(job)
        ids[job.key], datasets[job.key] = unit_ids, dataset
    label = f"step {step}: {len(jobs)} students on {agent.config.run.workers} workers"
    finished = agent._track(label, len(jobs))
    for number, result in enumerate(run_on_ray(jobs, agent.config.run.workers, agent.config.run.ray_address,
                                               waiting=agent.beat), 1):
        index, _, j = result.key
        record_training(agent, step, index, datasets[result.key], j, before, result, ids[result.key])
        finished(number)


def record_training(agent: Agent, step: int, index: int, dataset: dict | None, j: int, before: list[float],
                    result, ids: dict) -> float:
    """Store one unit's training (the driver's side of a student job); returns its reward (nan if none)."""
    from soar_agent.reward import paired_reward

    def failed(message: str) -> float:
        agent.store.add_training(run_id=agent.run_id, teacher_step=step, dataset_id=dataset and dataset["id"],
                                 student_index=j, reward=None, accuracy_before=fmean(before),
                                 accuracy_after=None, checkpoint_path=None, metrics={"error": message})
        return float("nan")

    if result is None:
        return failed("no trainable item (all repeat hard-set questions)")
    if result.after is None:
        agent.store.log_event(run_id=agent.run_id, level="error", kind="non-finite-loss",
                              message=result.metrics["error"],
                              data={"step": step, "dataset": dataset["id"] if dataset else None, "student": j})
        return failed(result.metrics["error"])
    metrics, after = dict(result.metrics), result.after
    # accuracy_before/after hold the metric's mean score (nats/token for expert-logprob)
    accuracy_before, accuracy_after = fmean(before), fmean(after)
    if metrics["completion_length"] < 1.0:
        agent.store.log_event(run_id=agent.run_id, level="warning", kind="student-collapse",
                              message=f"step {step}: student {index}-{j} writes empty answers",
                              data={"step": step})
    if metrics.get("updates") == 0:
        # its weights are the baseline's, so its reward is exactly zero: say why instead of a quiet +0.000
        note = (f"step {step}: student {index}-{j} made no update in {metrics.get('steps', 0)} steps: no worked"
                f" solution to train on and every sampled answer scored alike (train reward"
                f" {metrics.get('reward_mean', 0.0):.2f})")
        agent.log(f"[step {step}] warning: {note[len(f'step {step}: '):]}")
        agent.store.log_event(run_id=agent.run_id, level="warning", kind="student-no-update", message=note,
                              data={"step": step, "dataset": dataset["id"] if dataset else None, "student": j})
    reward, stderr = paired_reward(before, after)
    # the per-question differences let a step pool its students' standard error (reward.pooled_reward)
    metrics.update(reward_metric=agent.config.reward.metric, reward_stderr=stderr,
                   reward_differences=[round(a - b, 6) for a, b in zip(after, before)])
    rollouts = [{**{k: v for k, v in row.items() if k != "question"}, "problem_id": ids.get(row["question"])}
                for row in result.rollouts]
    agent.store.add_training(run_id=agent.run_id, teacher_step=step, dataset_id=dataset and dataset["id"],
                             student_index=j, reward=reward, accuracy_before=accuracy_before,
                             accuracy_after=accuracy_after, checkpoint_path=result.checkpoint_path,
                             metrics=metrics, rollouts=rollouts)
    agent.log(f"[step {step}] student {index}-{j}: reward {reward:+.3f} ± {stderr or 0:.3f} "
              f"({agent.config.reward.metric} {accuracy_before:.3f} -> {accuracy_after:.3f}), "
              f"train reward {metrics['reward_mean']:.2f}, {metrics['tokens_per_second']:.0f} tok/s")
    return reward


def curriculum_problems(dataset: dict, rows: list[dict], domain, reward_target: str,
                        forbidden: set[str]) -> list[Problem]:
    """What students train on from one teacher dataset: each item as the teacher wrote it (re-checked from
    its text and its worked solution, so its own answer and steps, or the solver's per teacher.reward_target),
    never the stored row a
    repeated question maps to; items repeating a hard-set question are left out (a reward question's
    answer must never reach a student). Datasets without texts fall back to their rows."""
    from soar_agent.tasks.base import RejectedItem
    from soar_agent.teacher import check_item

    texts = (dataset.get("meta") or {}).get("texts")
    solutions = (dataset.get("meta") or {}).get("solutions") or []
    problems = []
    for index, row in enumerate(rows):
        problem = to_problem(row)
        if texts and index < len(texts):
            try:
                text = texts[index] if "</answer>" in texts[index] else texts[index] + "</answer>"  # EOS-ended
                problem = check_item(domain, text, reward_target,
                                     solutions[index] if index < len(solutions) else None).problem
            except RejectedItem:  # cannot happen for an accepted item; the row is all there is then
                pass
        problems.append(problem)
    return without_questions(problems, forbidden)


def without_questions(problems: list[Problem], forbidden: set[str]) -> list[Problem]:
    """The problems whose content hash is not in `forbidden` (hard-set questions must never be trained on
    with their answers outside hard-only)."""
    return [p for p in problems if content_hash(p.domain, p.question) not in forbidden]


def students_train_on(config: RunConfig, domain) -> str:
    """One line: what a soar run's students will learn from (said when a session starts)."""
    from soar_agent.teacher import writes_solutions

    target = config.teacher.reward_target
    hard = ("hard-train's answers (RL) and worked solutions" if target == "verified" else
            "hard-train's answers (RL only)")
    if not writes_solutions(domain, target):
        return (f"students train on the solver's answers and worked solutions to the teacher's questions"
                f" (teacher.reward_target = verified; \"teacher\" trains them on the teacher's own); the final"
                f" training adds {hard}")
    checked = ("a solver records whether each is right and changes nothing students see" if hasattr(domain, "make_problem")
               else "no solver checks them")
    kept = " (the right ones only: drop-unverified)" if target == "drop-unverified" else ", right or wrong"
    return (f"students train on the teacher's own worked solutions and answers{kept}; {checked}; the final"
            f" training adds {hard}")
