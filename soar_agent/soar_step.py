"""One SOAR step, the paper's loop body: the teacher writes g datasets of n questions; r students train on each
from the current baseline; each dataset's reward is the students' measured improvement on hard-train's
reward questions; the teacher takes one RLOO step on those rewards; the best dataset's student becomes the
baseline when the rewards' moving average passes promotion.tau. Each phase is stored before the next
starts, so a step a kill interrupted redoes only what it lacks."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from statistics import fmean
from typing import TYPE_CHECKING

from soar_agent.hard_sets import room_for_prompts
from soar_agent.reporting import prune_checkpoints
from soar_agent.seeds import derive_seed
from soar_agent.students import dataset_problems, reward_questions, reward_scores, train_on_workers, train_one
from soar_agent.tasks.base import Problem

if TYPE_CHECKING:
    from soar_agent.agent import Agent


class StepSkipped(RuntimeError):
    """A teacher step that could not run (the teacher wrote no usable dataset)."""


def soar_step(agent: Agent, step: int) -> None:
    started = time.time()
    datasets = write_curriculum(agent, step)  # 1. the teacher writes the step's datasets
    questions = reward_questions(agent, step)
    before = score_baseline(agent, questions, step)  # 2. the baseline's scores, paired with each student's
    if not train_students(agent, step, datasets, questions, before):  # 3. r students per dataset
        return  # stopped between students: the rest are trained on resume
    rewards = step_rewards(agent, step, datasets)  # 4. each dataset's grounded reward
    update = update_teacher(agent, step, datasets, rewards)  # 5. the teacher learns from them
    complete_step(agent, step, datasets, before, rewards, update, started)  # 6. promotion, stored as one unit


def write_curriculum(agent: Agent, step: int) -> list[dict]:
    """The step's datasets: from the store when already sampled (resume), else sampled now (the teacher's
    questions, and its worked solutions when students learn from them: teacher.writes_solutions)."""
    from soar_agent.engine import HFEngine
    from soar_agent.teacher import TeacherGarbage, sample_items, split_items, writes_solutions

    existing = [d for d in agent.store.datasets(agent.run_id, kind="curriculum") if d["teacher_step"] == step]
    if existing:
        return existing
    t = agent.config.teacher
    teacher = agent.model("teacher")
    count = t.datasets_per_step * t.items_per_dataset
    sampling_started = time.time()
    try:
        items, stats = sample_items(HFEngine(teacher, agent.tokenizer, tick=agent.beat), agent.domain, count, t,
                                    seed=derive_seed(agent.config.run.seed, step, *([agent._garbage_attempt]
                                                                                    if agent._garbage_attempt else [])),
                                    progress=agent._track(f"step {step}: teacher writing problems", count),
                                    **({"solution_tokens": agent.config.student.max_new_tokens}
                                       if writes_solutions(agent.domain, t.reward_target) else {}),
                                    **({"fits": fits} if (fits := fits_students(agent)) else {}))
    except TeacherGarbage as error:
        raise StepSkipped(str(error)) from None
    stats["seconds"] = time.time() - sampling_started  # soar status --profile
    rejected = stats.pop("rejected_token_ids", [])  # kept with the first dataset: a resumed step's update
    datasets = [dataset_record(step, k, chunk, rejected if k == 0 else None)
                for k, chunk in enumerate(split_items(items, t.datasets_per_step, t.split))]
    agent.store.add_curriculum(run_id=agent.run_id, teacher_step=step, datasets=datasets)
    verified = sum(bool(i.verified) for i in items)
    checked = [i.verified for i in items if i.verified is not None]
    agent.store.log_event(run_id=agent.run_id, level="info", kind="teacher-sampled",
                          message=f"step {step}: {count} items ({verified} verified)",
                          data={"step": step, **stats, "teacher_right": verified, "teacher_checked": len(checked)})
    # without solutions the run is in the solver's setting (teacher.writes_solutions)
    solved = items[0].solution is not None
    answers = (f"the teacher's {'worked solution' if solved else 'answer'} was right for {verified},"
               f" wrong for {len(checked) - verified} (students train on the {'teacher' if solved else 'solver'}'s)"
               if checked else "answers unchecked (no solver for this domain)")
    agent.log(f"[step {step}] teacher: {count} items, {answers}; "
              f"{sum(stats['rejected'].values())} samples rejected")
    return [d for d in agent.store.datasets(agent.run_id, kind="curriculum") if d["teacher_step"] == step]


def dataset_record(step: int, k: int, chunk: list, rejected: list | None) -> dict:
    """One dataset of the teacher's items as store.add_curriculum takes it. The raw texts (and worked
    solutions, and their token ids for the teacher's update) live with the dataset: an item that repeats a
    stored problem maps to that row. The step's rejected samples are kept with its first dataset."""
    meta = {"index": k, "texts": [i.text for i in chunk], "token_ids": [i.token_ids for i in chunk]}
    if chunk and chunk[0].solution is not None:
        meta.update(solutions=[i.solution for i in chunk], solution_token_ids=[i.solution_token_ids for i in chunk])
    if rejected is not None:
        meta["rejected_token_ids"] = rejected
    return {"name": f"step-{step}-dataset-{k}", "problems": [i.problem for i in chunk],
            "provenance": [{"teacher_step": step, "dataset": k, "text": i.text, "teacher_answer": i.teacher_answer,
                            **({"teacher_solution": i.solution} if i.solution is not None else {})} for i in chunk],
            "answer_verified": [i.verified for i in chunk], "meta": meta}


def fits_students(agent: Agent):
    """problem -> whether its student prompt leaves student.max_new_tokens in the model's context, for
    the teacher's items; None when every item fits anyway (the teacher writes at most
    teacher.max_new_tokens) or the context is unknown."""
    room = room_for_prompts(agent, agent.config.student.max_new_tokens)
    size = lambda problem: len(agent.tokenizer(agent.domain.student_prompt(problem.question))["input_ids"])
    if room is None or size(Problem("", "", agent.domain.NAME)) + agent.config.teacher.max_new_tokens <= room:
        return None
    return lambda problem: size(problem) <= room


def score_baseline(agent: Agent, questions: list[Problem], step: int) -> list[float]:
    started = time.time()
    before = reward_scores(agent, agent.model("baseline"), questions, step)
    agent._baseline_scoring_seconds = time.time() - started  # the step's metrics (soar status --profile)
    return before


def train_students(agent: Agent, step: int, datasets: list[dict], questions: list[Problem],
                   before: list[float]) -> bool:
    """The step's r students per dataset not trained yet (a resumed step has some), in this process one after
    another or on Ray workers (run.workers > 1); False when a stop came between two of them."""
    started, r = time.time(), agent.config.student.students_per_dataset
    units = [(index, d, j) for index, d in enumerate(datasets) for j in range(r)]
    done = {(t["dataset_id"], t["student_index"]) for t in agent.store.trainings(agent.run_id, step)}
    if agent.config.run.workers > 1:
        agent.poll_commands()
        if agent.stop_reason:
            return False
        train_on_workers(agent, step, [(i, d, j) for i, d, j in units if (d["id"], j) not in done], questions, before)
        return True
    for number, (index, dataset, j) in enumerate(units, 1):
        if (dataset["id"], j) in done:
            continue
        agent.poll_commands()
        if agent.stop_reason:
            return False
        train_one(agent, step, index, dataset, j, questions, before)
        eta = (time.time() - started) / number * (len(units) - number)
        agent.log(f"[step {step}] students {number}/{len(units)}  ETA {eta:.0f}s")
    return True


@dataclass
class StepRewards:
    trainings: list[dict]  # the step's student trainings, a reward or not
    by_dataset: dict[int, list[dict]]  # dataset id -> its students' trainings that have a reward
    rewards: dict[int, float]  # dataset id -> its students' mean reward (0 when none has one)
    dataset_stderr: dict[int, float | None]
    stderr: float | None  # of the step's mean, pooled over its datasets' per-question differences
    teacher_rewards: list[float]  # what the teacher's update takes: the rewards, or Intrinsic-T's scores

    @property
    def mean(self) -> float:
        return sum(self.rewards.values()) / len(self.rewards)


def step_rewards(agent: Agent, step: int, datasets: list[dict]) -> StepRewards:
    from soar_agent.reward import pooled_reward, question_means
    from soar_agent.teacher import intrinsic_rewards

    trainings = agent.store.trainings(agent.run_id, step)
    by_dataset = {d["id"]: [t for t in trainings if t["dataset_id"] == d["id"] and t["reward"] is not None]
                  for d in datasets}
    rewards = {d["id"]: (sum(t["reward"] for t in by_dataset[d["id"]]) / len(by_dataset[d["id"]])
                         if by_dataset[d["id"]] else 0.0) for d in datasets}
    differences = {d["id"]: question_means([t["metrics"].get("reward_differences") or []
                                            for t in by_dataset[d["id"]]]) for d in datasets}
    teacher_rewards = list(rewards.values())
    if agent.config.run.mode == "intrinsic":
        teacher_rewards = intrinsic_rewards([success_rates(agent, d, step) for d in datasets])
    return StepRewards(trainings, by_dataset, rewards, {k: pooled_reward([v])[1] for k, v in differences.items()},
                       pooled_reward(list(differences.values()))[1], teacher_rewards)


def teacher_items(agent: Agent, datasets: list[dict]) -> list[list]:
    """The step's items as the teacher wrote them (texts, token ids, worked solutions), per dataset."""
    from soar_agent.teacher import TeacherItem

    return [[TeacherItem(text, agent.store.to_problem(row), "", None, ids, solution, solution_ids)
             for text, row, ids, solution, solution_ids in zip(
                 d["meta"]["texts"], agent.store.dataset_problems(d["id"]),
                 *(d["meta"].get(key) or [None] * len(d["meta"]["texts"])
                   for key in ("token_ids", "solutions", "solution_token_ids")))]
            for d in datasets]


def update_teacher(agent: Agent, step: int, datasets: list[dict], rewards: StepRewards) -> dict:
    """One RLOO step of the teacher on its datasets' rewards (teacher.teacher_update); a non-finite loss
    takes no step and is logged, and the run goes on. A frozen teacher (teacher.lr = 0, the ablation that
    shows what the teacher's learning adds) takes none."""
    from soar_agent.teacher import rloo_dataset_advantages, teacher_update

    cfg, teacher_rewards = agent.config, rewards.teacher_rewards
    if cfg.teacher.lr == 0:
        return {"advantages": rloo_dataset_advantages(teacher_rewards), "updated": False, "frozen": True}
    items = teacher_items(agent, datasets)
    # minutes in one step: `soar status` and the TUI say so (the last event is the phase), and a bar follows
    # its micro-batches, with the heartbeat and the commands (beat)
    message = f"step {step}: updating the teacher on its {sum(len(d) for d in items)} items"
    agent.store.log_event(run_id=agent.run_id, level="info", kind="teacher-update", message=message,
                          data={"step": step})
    agent.log(f"[step {step}] {message[len(f'step {step}: '):]}")
    bar = []

    def progress(done: int, rows: int) -> None:
        if not bar:
            bar.append(agent._track(f"step {step}: teacher update ({rows} rows)", rows))
        bar[0](done)

    try:
        rejected = [ids for d in datasets for ids in d["meta"].get("rejected_token_ids") or []]
        return teacher_update(agent.model("teacher"), agent._models["teacher_optimizer"], agent.tokenizer, agent.domain, items,
                              teacher_rewards, cfg.student.grad_clip, rejected=rejected,
                              reject_penalty=cfg.teacher.reject_penalty, progress=progress)
    except FloatingPointError as error:  # NaN/inf teacher loss: no step taken, the run goes on
        agent.store.log_event(run_id=agent.run_id, level="error", kind="non-finite-loss",
                              message=f"teacher: {error}", data={"step": step})
        return {"error": str(error), "updated": False}


def complete_step(agent: Agent, step: int, datasets: list[dict], before: list[float], rewards: StepRewards,
                  update: dict, started: float) -> None:
    """The step's end as one store transaction: the teacher's checkpoint, the promotion (the best dataset's
    upper-median student becomes the baseline) and the step's metrics; then the students' weights go."""
    cfg, mean_reward = agent.config, rewards.mean
    trainings = rewards.trainings
    updated = sum(1 for t in trainings if (t["metrics"] or {}).get("updates", 1) > 0)
    if trainings and not updated:
        note = (f"step {step}: no student could update (no worked solution and no reward signal), so the"
                f" step's reward {mean_reward:+.3f} measures nothing the teacher wrote")
        agent.log(f"[step {step}] warning: {note[len(f'step {step}: '):]}")
        agent.store.log_event(run_id=agent.run_id, level="warning", kind="no-student-update", message=note,
                              data={"step": step})
    # promotion is on the grounded reward in every mode: the intrinsic ablation replaces the teacher's
    # reward only (as the paper's Intrinsic-T), so that arm differs from SOAR in one thing
    moving_average, promote = promotion_decision([s["mean_reward"] for s in agent.completed_steps()],
                                                 mean_reward, cfg.promotion.tau, cfg.promotion.window,
                                                 agent.force_promotion)
    checkpoints = [{"path": save_teacher(agent, step, agent.model("teacher")), "role": "teacher", "metrics": update}]
    best = max(datasets, key=lambda d: rewards.rewards[d["id"]])
    promoted = promote_student(agent, step, best, rewards.by_dataset[best["id"]], checkpoints) if promote else None
    agent.store.complete_teacher_step(
        run_id=agent.run_id, step=step, dataset_rewards=rewards.rewards, mean_reward=mean_reward,
        moving_average=moving_average, promoted_dataset_id=promoted, checkpoints=checkpoints,
        metrics={"teacher_update": update, "teacher_rewards": rewards.teacher_rewards,
                 "accuracy_before": fmean(before), "reward_metric": cfg.reward.metric, "reward_stderr": rewards.stderr,
                 "dataset_reward_stderr": {str(k): v for k, v in rewards.dataset_stderr.items()},
                 "seconds": time.time() - started, "mode": cfg.run.mode,
                 "students_updated": updated, "students": len(trainings),
                 "baseline_scoring_seconds": agent._baseline_scoring_seconds})
    agent.force_promotion = False
    if promoted is not None:
        agent._models.pop("baseline", None)  # reload the promoted student on next use
        agent.store.log_event(run_id=agent.run_id, level="info", kind="promotion",
                              message=f"step {step}: {best['name']} promoted",  # the name Curricula shows
                              data={"step": step, "dataset_id": promoted})
    shutil.rmtree(agent.paths.checkpoints / f"step-{step}", ignore_errors=True)
    prune_checkpoints(agent)
    agent.log(f"[step {step}] done in {time.time() - started:.0f}s: mean reward {mean_reward:+.4f}"
              f" ± {rewards.stderr or 0:.4f}, "
              f"moving average {moving_average:+.4f}{', PROMOTED' if promoted else ''}")


def promote_student(agent: Agent, step: int, best: dict, trainings: list[dict], checkpoints: list[dict]) -> int | None:
    """Copy the best dataset's promoted student to the step's baseline checkpoint (added to `checkpoints`);
    its dataset's id, or None when no student of it has weights."""
    chosen = promoted_student(trainings)
    if chosen is None:
        return None
    target = agent.paths.checkpoints / f"baseline-step-{step}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(chosen["checkpoint_path"], target)
    checkpoints.append({"path": str(target), "role": "baseline",
                        "metrics": {"reward": chosen["reward"], "from_dataset": best["id"]}})
    return best["id"]


def promotion_decision(history: list[float], mean_reward: float, tau: float, window: int,
                       force: bool = False) -> tuple[float, bool]:
    """(moving average of the last `window` step rewards including this one, promote?): promote when the
    moving average exceeds tau, or when forced (the TUI's promote command)."""
    recent = (history[-(window - 1):] if window > 1 else []) + [mean_reward]
    moving_average = sum(recent) / len(recent)
    return moving_average, force or moving_average > tau


def promoted_student(trainings: list[dict]) -> dict | None:
    """The student of the best dataset that becomes the baseline: the upper median by reward (the paper's
    "median" student; with r = 2 the lower median would always be the worse of two, so the upper one,
    i.e. the better of two, is taken)."""
    ranked = sorted((t for t in trainings if t["reward"] is not None and t["checkpoint_path"]),
                    key=lambda t: t["reward"])
    return ranked[len(ranked) // 2] if ranked else None


def success_rates(agent: Agent, dataset: dict, step: int) -> list[float]:
    """Baseline success rate per item (group_size samples against the item's target answer), seeded per
    (run, step, dataset) so a redone step scores the same."""
    from soar_agent.engine import HFEngine
    from soar_agent.evaluation import evaluate_problems

    s = agent.config.student
    results = evaluate_problems(HFEngine(agent.model("baseline"), agent.tokenizer, tick=agent.beat), agent.domain,
                                dataset_problems(agent, dataset), samples=s.group_size, greedy=False,
                                temperature=s.temperature, max_new_tokens=s.max_new_tokens,
                                seed=derive_seed(agent.config.run.seed, step, dataset["id"], 77))
    return [r.correct / r.samples for r in results]


def save_teacher(agent: Agent, step: int, teacher) -> str:
    """The teacher's weights and optimizer state (so a resumed run's teacher goes on as it was)."""
    from soar_agent.models import save_checkpoint, save_torch

    directory = save_checkpoint(teacher, agent.tokenizer, agent.paths.checkpoints / f"teacher-step-{step}")
    temporary = directory / "optimizer.pt.tmp"
    save_torch(agent._models["teacher_optimizer"].state_dict(), temporary, "saving the teacher's optimizer")
    temporary.replace(directory / "optimizer.pt")
    return str(directory)
