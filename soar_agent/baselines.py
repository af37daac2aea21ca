"""The baselines SOAR is measured against, as alternatives to its teacher step: Hard-Only (RL directly on
hard-train) and curated (the domain's own problems across its levels, or a given JSONL: the paper's "full
curated train set" ceiling). Each spends a SOAR step's student compute as one chain of trainings."""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from soar_agent.config import ConfigError
from soar_agent.hard_sets import hard_questions, load_problem_file, room_for_prompts
from soar_agent.reporting import prune_checkpoints
from soar_agent.seeds import derive_seed
from soar_agent.students import reward_questions, reward_scores, train_one, without_questions
from soar_agent.tasks import generate_problems
from soar_agent.tasks.base import Problem

if TYPE_CHECKING:
    from soar_agent.agent import Agent


def chain_step(agent: Agent, step: int) -> None:
    """The Hard-Only and curated baselines: the same student compute as a SOAR step (g * r trainings),
    spent as consecutive RL trainings of the baseline (each continues from the last), on hard-train
    (hard-only) or on curated problems (curated); the baseline is updated every step."""
    from soar_agent.reward import pooled_reward

    started, cfg = time.time(), agent.config
    mode = cfg.run.mode
    units = cfg.teacher.datasets_per_step * cfg.student.students_per_dataset
    # what `soar status` reads as the phase (a SOAR step's is "teacher-sampled")
    agent.store.log_event(run_id=agent.run_id, level="info", kind="chain-step",
                          message=f"step {step}: {units} {mode} trainings", data={"step": step})
    questions = reward_questions(agent, step)
    done = agent.store.trainings(agent.run_id, step)
    if done and done[-1]["checkpoint_path"]:
        from soar_agent.models import load_model

        agent._models["baseline"] = load_model(done[-1]["checkpoint_path"], cfg.model.dtype,
                                               device=cfg.model.device)
    scores = reward_scores(agent, agent.model("baseline"), questions, step)
    for unit in range(len(done), units):
        agent.poll_commands()
        if agent.stop_reason:
            return
        problems = agent.hard_train_for_students() if mode == "hard-only" else curated_problems(agent, step, unit)
        student, reward, after = train_one(agent, step, unit, None, unit, questions, scores,
                                           problems=problems, steps=cfg.student.steps,
                                           source="hard" if mode == "hard-only" else "seed")
        if student is not None:
            agent._models["baseline"] = student
            scores = after
    trainings = agent.store.trainings(agent.run_id, step)
    last = [t for t in trainings if t["checkpoint_path"]]
    checkpoints = []
    if last:
        target = agent.paths.checkpoints / f"baseline-step-{step}"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(last[-1]["checkpoint_path"], target)
        # the step's improvement over the previous baseline (best_by_reward sums these)
        checkpoints.append({"path": str(target), "role": "baseline",
                            "metrics": {"reward": sum(t["reward"] for t in trainings if t["reward"] is not None)}})
    rewards = [t["reward"] for t in trainings if t["reward"] is not None]
    mean_reward = sum(rewards) / len(rewards) if rewards else 0.0
    # consecutive differences: their question-wise mean is (last - first) / units, paired per question
    _, stderr = pooled_reward([t["metrics"].get("reward_differences") or [] for t in trainings])
    agent.store.complete_teacher_step(run_id=agent.run_id, step=step, dataset_rewards={}, mean_reward=mean_reward,
                                      moving_average=mean_reward, promoted_dataset_id=None,
                                      checkpoints=checkpoints,
                                      metrics={"mode": mode, "seconds": time.time() - started,
                                               "reward_metric": cfg.reward.metric, "reward_stderr": stderr})
    agent._models.pop("baseline", None)
    shutil.rmtree(agent.paths.checkpoints / f"step-{step}", ignore_errors=True)
    prune_checkpoints(agent)
    agent.log(f"[step {step}] {mode} done in {time.time() - started:.0f}s: mean reward {mean_reward:+.4f}"
              f" ± {stderr or 0:.4f}")


def curated_problems(agent: Agent, step: int, unit: int) -> list[Problem]:
    """One curated training's problems: the domain.curated JSONL, else as many fresh generator problems
    as a training draws (`rl.sft.problems_drawn`: steps x batch_prompts, x group_size on sft-rlvr's
    supervised steps), at levels drawn uniformly. Hard-set questions are removed either way (a reward
    question's answer must never reach a student)."""
    cfg = agent.config
    if cfg.domain.curated:
        problems = load_problem_file(Path(cfg.domain.curated), agent.domain)
        room = room_for_prompts(agent, cfg.student.max_new_tokens)
        if room is not None:  # problems too long for the students' context are left out
            from soar_agent.evaluation import prompt_lengths

            problems = [p for p, n in zip(problems, prompt_lengths(agent.domain, agent.tokenizer, problems))
                        if n <= room]
    else:
        rng = random.Random(derive_seed(cfg.run.seed, step, unit, 31))
        from soar_agent.rl.sft import problems_drawn

        count = problems_drawn(cfg.student, cfg.student.steps)
        levels = [rng.choice(agent.domain.LEVELS) for _ in range(count)]  # uniform over the levels
        problems = generate_problems(agent.domain, levels, rng)
    kept = without_questions(problems, hard_questions(agent))
    if not kept:
        raise ConfigError(f"domain.curated: no curated problem left once hard-set questions are removed"
                          f" ({len(problems)} given)")
    return kept
