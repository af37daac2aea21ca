"""A run's time budget: whether the next teacher step fits before the time kept for the final training, the
final training sized to what is left, and what units cost on this machine (measured in the run, and
remembered across runs of the same configuration: evalcache timings), so a budget too small is refused
before any work."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from soar_agent import evalcache
from soar_agent.config import config_to_dict
from soar_agent.seeds import derive_seed

if TYPE_CHECKING:
    from soar_agent.agent import Agent


@dataclass
class Budget:
    deadline: float | None = None  # epoch seconds
    max_teacher_steps: int = 0  # 0 = no limit (counts completed steps of the whole run)
    # the budget's start: the session's, or for a resumed budget (status.time_budget) that much earlier as the
    # run's earlier sessions used of it; budget.pq_share is of deadline - started, the whole budget
    started: float = field(default_factory=time.time)
    until: bool = False  # the deadline is a clock time (--until), which a resume keeps, not an amount of time

    def exhausted(self, completed_steps: int) -> str | None:
        if self.deadline is not None and time.time() >= self.deadline:
            return "time budget reached"
        if self.max_teacher_steps and completed_steps >= self.max_teacher_steps:
            return f"{self.max_teacher_steps} teacher steps done"
        return None


class BudgetTooSmall(ValueError):
    """A time budget that this machine's measurements say holds no teacher step (check_budget): one line
    naming the --hours that fits; `soar run` exits with status 2 before any work."""


def check_budget(agent: Agent, budget: Budget) -> None:
    """A session with a deadline and no teacher step yet: BudgetTooSmall, before any work, when what
    earlier runs of this configuration measured on this machine (evalcache timings) says one teacher step
    does not fit: the step-0 hard-test evaluation still to do (none when stored or cached), a teacher step,
    and the time _no_time_for_a_step keeps for the final training; the error names the --hours that fits.
    Without such measurements it says so, and the units are sized as they are measured."""
    if budget.deadline is None or agent.completed_steps():
        return
    timings, now = remembered_timings(agent), time.time()
    evaluation = 0.0 if missing_evaluation(agent) is None or base_evaluation_cached(agent) \
        else timings.get("evaluation")
    final, share = 0.0, 0.0
    if ends_with_final_training(agent):
        share = agent.config.budget.pq_share
        final = (timings["evaluation"] + timings["pq_step"] * agent.config.budget.pq_steps
                 if {"evaluation", "pq_step"} <= timings.keys() else None)
    if evaluation is None or final is None or "step" not in timings:
        note = ("no earlier run of this configuration measured its units on this machine: the budget is"
                " checked as they are measured (a first teacher step starts without an estimate)")
        agent.store.log_event(run_id=agent.run_id, level="info", kind="budget-unmeasured", message=note)
        agent.log(f"note: {note}")
        return
    work = evaluation + timings["step"]
    if now + work + max(share * (budget.deadline - budget.started), final) <= budget.deadline:
        return
    fits = max(work / (1 - share) if share < 1 else float("inf"), work + final) * 1.1  # 10% to spare
    hours = max(0.05, -(-fits // 180) * 0.05)  # rounded up to 3 minutes
    given = budget.deadline - budget.started
    message = (f"a time budget of {given / 3600:.2f} h is too small for one teacher step of this run on this"
               f" machine (measured by earlier runs of its configuration: "
               + (f"the base model's hard-test evaluation ~{evaluation / 60:.0f} min, " if evaluation else "")
               + f"a teacher step ~{timings['step'] / 60:.0f} min"
               + (f", the final training kept {max(share * given, final) / 60:.0f} min (budget.pq_share"
                  f" {share:g} or budget.pq_steps' time)" if final else "")
               + f"): --hours {hours:.2f} fits one; curricula/trial.toml is a short trial")
    agent.store.log_event(run_id=agent.run_id, level="error", kind="budget-too-small", message=message,
                          data={"hours": hours, "evaluation": evaluation, "step": timings["step"], "final": final})
    agent.store.set_run_status(agent.run_id, "stopped")
    raise BudgetTooSmall(message)


def missing_evaluation(agent: Agent) -> int | None:
    """The planned hard-test evaluation a kill or a stop left undone, or None: step 0's, or the last
    complete step's when it is an eval.every_teacher_steps-th step. Only that one can be redone as planned
    (its baseline is still the latest: no teacher step runs before it), and a session that redoes it
    first leaves no earlier one missing."""
    completed = agent.completed_steps()
    last = completed[-1]["step"] if completed else 0
    if last and last % agent.config.eval.every_teacher_steps:
        return None
    evaluated = {e["teacher_step"] for e in agent.store.evaluations(agent.run_id, set_name="hard-test")}
    return None if last in evaluated else last


def ends_with_final_training(agent: Agent) -> bool:
    return agent.config.run.mode in ("soar", "intrinsic") and agent.config.budget.pq_steps > 0


def base_evaluation_cached(agent: Agent) -> bool:
    """Whether the step-0 hard-test evaluation of the base model is in the evaluation cache."""
    from soar_agent.evaluation import unique_problems
    from soar_agent.reporting import base_evaluation_key

    if agent.latest_checkpoint("baseline") is not None:
        return False
    problems = unique_problems(agent.hard_set("test"))[0]
    key = base_evaluation_key(agent, problems, agent.config.eval.samples, derive_seed(agent.config.run.seed, 0, 7))
    return key is not None and evalcache.load_evaluation(key) is not None


def evaluation_seconds(agent: Agent) -> float:
    """What a hard-test evaluation costs: the run's latest (measured, or cached with its measured time),
    else earlier runs' on this machine, else 0 (unknown)."""
    measured = [e["summary"]["seconds"] for e in agent.store.evaluations(agent.run_id, set_name="hard-test")
                if e["summary"].get("seconds")]
    return measured[-1] if measured else remembered_timings(agent).get("evaluation", 0.0)


def no_time_for_a_step(agent: Agent, budget: Budget, done: list[dict]) -> str | None:
    """With a deadline: the reason not to start the next teacher step when it would end (taking as long
    as the longest of the last three, plus an evaluation when one is due) inside the time kept for the final
    training: budget.pq_share of the run's budget (a resumed budget's whole, not what is left), or
    budget.pq_steps' time (pq.measured_costs) when that is longer, so that the run ends with its model at
    the deadline rather than one step late. None
    while it fits, and before the first step when no earlier run of this configuration on this machine
    measured one (evalcache timings; this run's own measurements come first).
    The last three, not the median of all: steps grow longer as the teacher learns to write longer
    questions (5.8 -> 9.2 minutes over 7 steps of a default run on one thread), and a resumed step's
    time counts only its remainder."""
    from soar_agent.pq import chain_seconds, expert_solutions, measured_costs

    if budget.deadline is None:
        return None
    durations = [s["metrics"]["seconds"] for s in done[-3:] if s["metrics"].get("seconds")]
    remembered = {} if durations else remembered_timings(agent)
    if not durations and "step" not in remembered:
        return None
    costs = measured_costs(agent.store, agent.run_id, agent.config.promotion.tau)
    step_seconds = max(durations) if durations else remembered["step"]
    if costs and ((done[-1]["step"] if done else 0) + 1) % agent.config.eval.every_teacher_steps == 0:
        step_seconds += costs.evaluation
    reserved = 0.0
    if ends_with_final_training(agent):
        reserved = agent.config.budget.pq_share * (budget.deadline - budget.started)
        if costs:
            reserved = max(reserved, costs.evaluation + chain_seconds(
                costs, agent.config.student, agent.config.budget.pq_steps, expert_solutions(agent)))
        elif {"evaluation", "pq_step"} <= remembered.keys():
            reserved = max(reserved, remembered["evaluation"] + remembered["pq_step"] * agent.config.budget.pq_steps)
    if time.time() + step_seconds + reserved <= budget.deadline:
        return None
    return (f"time budget reached: a teacher step (~{step_seconds / 60:.0f} min) would not end before "
            + (f"the final training's ~{reserved / 60:.0f} min" if reserved else "the deadline"))


def final_training(agent: Agent, budget: Budget) -> dict | None:
    """The run's last unit when its budget ends: the PQ student (pq.evaluate_pq) with budget.pq_steps, or,
    with a deadline, as many steps as the time left allows (more than budget.pq_steps when the teacher steps
    left more: the final training's length follows the budget); skipped, with the command that trains it
    later, when fewer than one training's worth fit and no interrupted chain of it is stored (which goes on
    from its last training: pq.evaluate_pq). Returns its hard-test summary (None when skipped or stopped)."""
    from soar_agent.pq import (PQ_TRAINING_STEPS, chain_seconds, evaluate_pq, expert_solutions,
                               interrupted_chain, measured_costs, rewarded_datasets)

    wanted = steps = agent.config.budget.pq_steps
    costs = measured_costs(agent.store, agent.run_id, agent.config.promotion.tau)
    evaluation, pace = (costs.evaluation if costs else evaluation_seconds(agent)), None
    if budget.deadline is not None and costs is not None:
        training = chain_seconds(costs, agent.config.student, PQ_TRAINING_STEPS, expert_solutions(agent))
        per_step = pace = training / PQ_TRAINING_STEPS
        steps = max(0, int((budget.deadline - time.time() - costs.evaluation) / per_step))
    elif budget.deadline is not None:  # no student measured here: earlier runs' pace, else the chain's own
        pace = remembered_timings(agent).get("pq_step")  # first few steps size it (pq.evaluate_pq)
        left = budget.deadline - time.time() - evaluation
        steps = max(0, int(left / pace)) if pace else (steps if left > 0 else 0)
    if steps < min(wanted, PQ_TRAINING_STEPS) and not interrupted_chain(agent, agent.config.run.seed):
        # (an interrupted chain is continued as far as the time allows, and evaluated)
        message = (f"no time left for the final training ({steps} of {wanted} steps fit):"
                   f" soar eval-pq {agent.paths.root} trains the PQ student later")
        agent.store.log_event(run_id=agent.run_id, level="warning", kind="pq-skipped", message=message)
        agent.log(message)
        return None
    promotions = agent.promotions()
    rewarded = len(rewarded_datasets(agent.store, agent.run_id, agent.config.promotion.tau))
    message = (f"final training: a fresh student, {steps} steps on the questions of the {rewarded} datasets"
               f" the reward found helpful ({promotions} promoted) plus hard-train (SOAR-PQ)")
    agent.store.log_event(run_id=agent.run_id, level="info", kind="pq-training", message=message,
                          data={"steps": steps, "promotions": promotions, "datasets": rewarded})
    agent.log(message)
    started = time.time()
    summary = evaluate_pq(agent, steps, seed=agent.config.run.seed, stop=lambda: agent.stop_reason,
                          deadline=budget.deadline, evaluation_seconds=evaluation, pace=pace,
                          fill=True)  # the estimate of steps may be short or long: the deadline ends it
    if summary is None:
        agent.log(f"final training stopped: {agent.stop_reason}")
        return None
    steps = summary["steps"]  # fewer when the chain met the deadline
    remember_timing(agent, pq_step=summary.get("seconds_per_step"))
    message = ("PQ student: hard-test " + " ".join(f"{k} {v:.3f}" for k, v in summary.items()
                                                   if k.startswith("pass@")) + f" ({time.time() - started:.0f}s)")
    agent.store.log_event(run_id=agent.run_id, level="info", kind="pq-done", message=message,
                          data={"steps": steps, "seconds": time.time() - started})
    agent.log(message)
    return summary


def cost_signature(agent: Agent) -> str:
    """What a teacher step's, an evaluation's and a final-training step's time follow besides the machine:
    the model's files, the hard sets and the settings of the work (evalcache's timings are kept under it)."""
    import hashlib
    import json

    import torch

    from soar_agent.evalcache import model_hash, problems_hash

    if "cost_signature" not in agent._models:
        cfg = config_to_dict(agent.config)
        payload = [model_hash(agent.config.model.path), agent.config.domain.name, torch.get_num_threads(),
                   *(problems_hash(agent.hard_set(split)) for split in ("train", "test")),
                   {name: cfg[name] for name in ("model", "teacher", "student", "reward", "eval")},
                   cfg["run"]["mode"], cfg["run"]["workers"]]
        agent._models["cost_signature"] = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str)
                                                         .encode()).hexdigest()
    return agent._models["cost_signature"]


def remember_timing(agent: Agent, **seconds: float) -> None:
    from soar_agent.evalcache import cache_dir, remember_timing

    if cache_dir() is not None:
        remember_timing(cost_signature(agent), **seconds)


def remembered_timings(agent: Agent) -> dict:
    from soar_agent.evalcache import cache_dir, remembered_timings

    return remembered_timings(cost_signature(agent)) if cache_dir() is not None else {}
