"""The model a run ends with (SOAR-PQ, grown): a *fresh* base student trained long on the questions the
run's grounded reward measured as helpful (rewarded_problems: every dataset whose reward beat tau, the
promoted ones among them; the paper's PQ is the promoted ones alone) plus hard-train, evaluated on hard-test
(reported, never used for reward) and kept as the run's `pq` checkpoint. `soar run` trains it when its budget
ends (budget.final_training: budget.pq_steps, or with --hours every step that fits in the time the teacher
steps leave, at least budget.pq_share of the budget) and exports it; `soar eval-pq` trains it on demand.

The training is long, as the curated ceiling's is: a chain of trainings of PQ_TRAINING_STEPS each, every
one continuing from the last (each makes its own pass over the expert solutions, rl.sft), budget.pq_steps
(800) in all by default: the chains of bench/teacher_data.py, whose figures (bench/README.md, "What the
teacher's data is worth": a long PQ far above the 50-step promoted student and a 200-step PQ) were measured
before hard-val existed; `bench/teacher_data.py --eval-set val` re-measures them where settings are chosen."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import json
import shutil
import time
from dataclasses import dataclass

from soar_agent.evaluation import default_ks, evaluate_problems, summarize, unique_problems
from soar_agent.students import dataset_problems


def promoted_problems(agent) -> list:
    """The run's promotion questions: the items of every promoted dataset as the teacher wrote them (its own
    answers or the solver's, per teacher.reward_target), never a hard-set question (agent.curriculum_problems)."""
    store, problems = agent.store, []
    for promotion in store.datasets(agent.run_id, kind="promotion"):
        source = store.get_dataset(promotion["meta"]["from_dataset"]) if promotion["meta"].get("from_dataset") else None
        problems += dataset_problems(agent, source) if source else [
            store.to_problem(row) for row in store.dataset_problems(promotion["id"])]
    return problems


def rewarded_problems(agent) -> tuple[list, int]:
    """(the questions the run's grounded reward measured as helpful, how many of them are promotion questions):
    the items of every curriculum dataset whose reward beat promotion.tau, that is whose students, trained on
    it from their step's baseline, moved the reward on hard-train by more than a promotion's bar, and of every
    promoted dataset (a forced promotion may be below it); each dataset once, its items as the teacher wrote
    them (agent.curriculum_problems). The promoted datasets are the paper's PQ: a step promotes only when
    the moving average of its datasets' mean reward beats tau, so with the length split, whose short
    dataset's reward is below zero at every step, one run of 9 steps promoted once while its long dataset beat
    tau at all 9 (runs/night-s1). The rewarded datasets beat the promoted ones alone, and every dataset
    (those scored below zero included) did worse, in the final-training benchmarks of bench/README.md ("The
    final training's questions", "What the reward's selection is worth"), measured before hard-val existed."""
    promoted = promoted_dataset_ids(agent.store, agent.run_id)
    problems, promotion_questions = [], 0
    for dataset in rewarded_datasets(agent.store, agent.run_id, agent.config.promotion.tau):
        items = dataset_problems(agent, dataset)
        problems += items
        promotion_questions += len(items) if dataset["id"] in promoted else 0
    return problems, promotion_questions


def promoted_dataset_ids(store, run_id: int) -> set[int]:
    return {d["meta"].get("from_dataset") for d in store.datasets(run_id, kind="promotion")}


def rewarded_datasets(store, run_id: int, tau: float) -> list[dict]:
    """The curriculum datasets rewarded_problems takes: those whose reward beat tau, and the promoted ones."""
    promoted = promoted_dataset_ids(store, run_id)
    return [d for d in store.datasets(run_id, kind="curriculum")
            if d["id"] in promoted or (d["reward"] is not None and d["reward"] > tau)]


PQ_TRAINING_STEPS = 100  # bench/teacher_data.py's chains: trainings of 100 steps (budget.pq_steps in all)


def chain_lengths(steps: int, per_training: int) -> list[int]:
    """`steps` RL steps as consecutive trainings of `per_training` steps (the last one shorter)."""
    full, rest = divmod(steps, per_training)
    return [per_training] * full + ([rest] if rest else [])


@dataclass(frozen=True)
class Costs:
    """What the final training costs on this run's machine, in seconds (measured_costs)."""
    sft_step: float  # one supervised step (sft-rlvr's first phase)
    rl_step: float  # one RL step: it samples group_size completions per prompt, several supervised steps' cost
    per_training: float  # a training's own work outside its steps (copying the model, tokenizing solutions)
    evaluation: float  # one hard-test evaluation


def _median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def measured_costs(store, run_id: int, tau: float) -> Costs | None:
    """The final training's costs as this run measured them: medians over its students' trainings on the
    rewarded datasets, which are the PQ student's questions (rewarded_problems; over all its trainings before
    one), and its latest hard-test evaluation. None until both are measured (a run's first teacher step measures them).
    Estimated from the run's own machine and load rather than a constant, which would be wrong on any other
    machine; from the rewarded datasets' students rather than all, because a step's cost follows its
    questions' length (with the length split, a long dataset's student took twice the short one's time: 1.9
    against 0.9 s per step on 2 cores); supervised and RL steps apart, because the final training's mix of
    them is not a student's (see chain_seconds). Trainings stored before the phases were timed count their
    mean step time for both."""
    rewarded = {d["id"] for d in rewarded_datasets(store, run_id, tau)}
    timed = [t for t in store.trainings(run_id) if t["metrics"].get("train_seconds") and t["metrics"].get("steps")]
    timed = [t["metrics"] for t in ([t for t in timed if t["dataset_id"] in rewarded] or timed)]
    evaluations = [e for e in store.evaluations(run_id, set_name="hard-test") if e["summary"].get("seconds")]
    if not timed or not evaluations:
        return None
    mean_step = _median([m["train_seconds"] / m["steps"] for m in timed])
    phased = [m for m in timed if "sft_seconds" in m]
    sft_step = _median([m["sft_seconds"] / m["sft_steps"] for m in phased if m["sft_steps"]])
    rl_step = _median([m["rl_seconds"] / (m["steps"] - m["sft_steps"]) for m in phased if m["steps"] > m["sft_steps"]])
    return Costs(sft_step=sft_step or rl_step or mean_step, rl_step=rl_step or sft_step or mean_step,
                 per_training=_median([max(0.0, m["train_seconds"] - m["sft_seconds"] - m["rl_seconds"])
                                       for m in phased]) or 0.0,
                 evaluation=evaluations[-1]["summary"]["seconds"])


def _chain_key(problems: list, seed: int, training_steps: int, student) -> str:
    """What a stored part of the PQ chain must match to be continued: the same questions and answers, seed,
    trainings' length and student settings (another teacher step or `soar eval-pq --seed` is a new chain)."""
    payload = json.dumps([[[p.question, p.answer] for p in problems], seed, training_steps,
                          dataclasses.asdict(student)], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _part(store, run_id: int, key: str) -> dict | None:
    return next((c for c in reversed(store.checkpoints(run_id, role="pq-chain", status="complete"))
                 if c["metrics"].get("key") == key), None)


def interrupted_chain(agent, seed: int, training_steps: int = PQ_TRAINING_STEPS) -> dict | None:
    """The stored part of the PQ chain that evaluate_pq(agent, seed=seed) would continue, if any."""
    questions, _ = rewarded_problems(agent)
    key = _chain_key(questions + agent.hard_train_for_students(), seed, training_steps, agent.config.student)
    return _part(agent.store, agent.run_id, key)


PROBE_SHARE = 0.1  # of a training: what the final training measures its pace on when nothing else has
KEEP_PART_S = 600  # at most every ten minutes: a real model's checkpoint is gigabytes, a training minutes


def _keep_part(agent, student, key: str, steps: int, trainings: int, seconds_per_step: float) -> None:
    """The chain's student after one of its trainings, stored as the newest `pq-chain` checkpoint (the older
    parts deleted): what a resumed final training continues from."""
    from soar_agent.models import save_checkpoint

    store, run_id = agent.store, agent.run_id
    directory = agent.paths.checkpoints / f"pq-chain-{key[:12]}-{trainings}"  # a chain's own: not another's
    checkpoint_id = store.add_checkpoint(run_id=run_id, path=directory, role="pq-chain", metrics={
        "key": key, "steps": steps, "trainings": trainings, "seconds_per_step": seconds_per_step})
    save_checkpoint(student, agent.tokenizer, directory)
    store.mark_checkpoint(checkpoint_id, "complete")
    _drop_parts(store, run_id, keep=checkpoint_id)


def _drop_parts(store, run_id: int, keep: int | None = None) -> None:
    kept = {part["path"] for part in store.checkpoints(run_id, role="pq-chain") if part["id"] == keep}
    for part in store.checkpoints(run_id, role="pq-chain", status="complete"):
        if part["id"] != keep:
            if part["path"] not in kept:  # a part written again to the same place is the kept one now
                shutil.rmtree(part["path"], ignore_errors=True)
            store.mark_checkpoint(part["id"], "deleted")


def chain_seconds(costs: Costs, student, steps: int, experts: int) -> float:
    """Seconds the final training's chain of `steps` takes at `costs` (the evaluation not included), with
    `experts` expert solutions among its questions: each training of the chain makes its own supervised
    phase (sft-rlvr: sft_share of its steps, at most one pass over the solutions), the rest are RL steps. A
    run with few promotion questions spends most of each training on RL: measured, night-s2's 2,986
    questions gave 47 supervised and 53 RL steps per 100 and 3.3 s per step, against its students' 2.0
    (45 and 5 of 50)."""
    from soar_agent.rl.sft import sft_steps_of

    total = 0.0
    for length in chain_lengths(steps, PQ_TRAINING_STEPS):
        supervised = sft_steps_of(student, length, experts) if student.backend == "sft-rlvr" and experts else 0
        total += supervised * costs.sft_step + (length - supervised) * costs.rl_step + costs.per_training
    return total


def expert_solutions(agent) -> int:
    """How many expert solutions the PQ student's questions have (chain_seconds' `experts`), counted on the
    stored rows, not re-checked item by item as rewarded_problems does (an estimate made before every teacher
    step: 0.8 against 9.5 s for 25,920 items)."""
    store, run_id = agent.store, agent.run_id
    rows = sum(1 for dataset in rewarded_datasets(store, run_id, agent.config.promotion.tau)
               for row in store.dataset_problems(dataset["id"]) if row.get("steps"))
    return rows + sum(1 for problem in agent.hard_train_for_students() if problem.steps)


def evaluate_pq(agent, steps: int | None = None, seed: int = 0, training_steps: int = PQ_TRAINING_STEPS,
                stop=lambda: None, deadline: float | None = None, evaluation_seconds: float = 0.0,
                fill: bool = False, pace: float | None = None) -> dict | None:
    """Train the PQ student (`steps` RL steps, default budget.pq_steps), keep it as the run's `pq` checkpoint
    and evaluate it on hard-test: the evaluation's summary, or None when `stop()` returned a reason between
    two trainings of the chain (nothing is stored then; a stop command inside a training, agent.UnitStopped,
    keeps the trainings before it and is raised on). With a `deadline` (epoch seconds), a training of the
    chain that would not end `evaluation_seconds` before it (at the pace of the ones before) is shortened to
    the steps that fit, and not started when fewer than a tenth of a training's fit: the student trained so
    far is kept and evaluated, and its steps are what the summary reports; with `fill` as well, the chain
    goes on past `steps` (then only an estimate) while trainings fit, so that it ends at the deadline. The pace
    of the chain's own trainings is the one exact measure of its cost (the run's students only estimate it):
    before it has one, the first training is sized by `pace` (estimated seconds per step), and without that
    it is split, its first PROBE_SHARE of steps trained alone to measure the pace the rest is sized by, so
    that no training runs past the deadline unmeasured."""
    from soar_agent.models import load_model

    cfg = agent.config
    questions, promotion_questions = rewarded_problems(agent)
    problems = questions + agent.hard_train_for_students()
    steps = steps or cfg.budget.pq_steps
    if not steps:
        raise ValueError(f"{agent.paths.root}: budget.pq_steps is 0 in the run's config: give the number of"
                         f" steps (soar eval-pq --steps N)")
    extra = _chain_experts(agent, problems)
    key = _chain_key(problems, seed, training_steps, cfg.student)
    part = _part(agent.store, agent.run_id, key)
    # a chain that a crash, a reboot or a stop interrupted goes on from its last training: hours of a night's
    # final training are not trained again (budget.final_training resumes it with the time that is left)
    student = load_model(part["path"] if part else cfg.model.path, cfg.model.dtype, device=cfg.model.device)
    chain = _start_chain(agent, key, part, steps, len(problems), seed, training_steps, deadline,
                         evaluation_seconds, fill, pace)
    student = _train_chain(agent, chain, student, problems, stop, extra)
    if student is None:
        return None
    steps = chain.done  # what was trained: the plan, or fewer or more when the deadline ended the chain
    train_seconds = time.time() - chain.started
    if chain.unkept:  # the whole chain, kept until its evaluation is stored: a kill in the evaluation retrains nothing
        _keep_part(agent, student, key, *chain.unkept, _seconds_per_step(chain))
    checkpoint_id = _store_pq_checkpoint(agent, student, steps, len(questions), promotion_questions)
    summary_extra = dict(questions=len(questions), promotion_questions=promotion_questions, steps=steps,
                         **({"seconds_per_step": round(train_seconds / chain.done_here, 4)} if chain.done_here else {}))
    return _evaluate_pq_student(agent, student, seed, checkpoint_id, summary_extra)


def _chain_experts(agent, problems: list) -> dict:
    """The trainer's extra arguments for the whole chain: sft-rlvr's expert solutions, tokenized once."""
    cfg = agent.config
    extra = {}
    if cfg.student.backend == "sft-rlvr":  # one tokenization of the pool's expert solutions for the whole
        # chain, not one per training (measured: 10 s for 26,000 on one busy thread; a night's pool is 200,000)
        from soar_agent.rl.sft import writable_experts

        extra["experts"] = writable_experts(agent.tokenizer, agent.domain, problems, cfg.student.max_new_tokens)
    return extra


@dataclass
class _Chain:
    """The PQ chain evaluate_pq trains: its settings, and how far it is (the stored part's steps included)."""
    key: str
    part: dict | None  # the stored part it continues, if any
    seed: int
    training_steps: int
    deadline: float | None
    evaluation_seconds: float
    fill: bool
    pace: float | None  # the caller's estimate of seconds per step
    queue: collections.deque  # the lengths of the trainings left
    first: int  # the index of its next training
    planned: int
    probe: int
    step_done: object  # agent._track's progress callback
    started: float
    kept_at: float
    done: int
    done_here: int = 0  # steps trained by this call
    unkept: tuple[int, int] | None = None  # (steps, trainings) trained since the last kept part


def _start_chain(agent, key: str, part: dict | None, steps: int, problems: int, seed: int, training_steps: int,
                 deadline: float | None, evaluation_seconds: float, fill: bool, pace: float | None) -> _Chain:
    done, first = (part["metrics"]["steps"], part["metrics"]["trainings"]) if part else (0, 0)
    if part:
        agent.log(f"PQ student: continuing its chain after {done} steps ({first} trainings)")
    step_done = agent._track(f"PQ student: {max(steps, done)} steps on {problems} problems", max(steps, done))
    step_done(done)
    started, planned = time.time(), max(steps, done)
    return _Chain(key=key, part=part, seed=seed, training_steps=training_steps, deadline=deadline,
                  evaluation_seconds=evaluation_seconds, fill=fill, pace=pace,
                  queue=collections.deque(chain_lengths(planned - done, training_steps)), first=first,
                  planned=planned, probe=max(1, int(training_steps * PROBE_SHARE)), step_done=step_done,
                  started=started, kept_at=started, done=done)


def _chain_trainings(chain: _Chain):
    """(index, steps) of each training left."""
    for index in itertools.count(chain.first):
        if chain.queue:
            yield index, chain.queue.popleft()
        elif chain.fill and chain.deadline is not None:  # past the estimate while trainings fit: the deadline ends it
            yield index, chain.training_steps
        else:
            return


def _seconds_per_step(chain: _Chain) -> float:
    """The chain's own pace: this call's trainings, else the stored part's (or, before either, the caller's
    estimate)."""
    if chain.done_here:
        return (time.time() - chain.started) / chain.done_here
    return chain.part["metrics"]["seconds_per_step"] if chain.part else chain.pace


def _steps_that_fit(chain: _Chain) -> int:
    """Steps before the deadline, at the pace of the chain's trainings so far."""
    return int((chain.deadline - time.time() - chain.evaluation_seconds) / _seconds_per_step(chain))


def _train_chain(agent, chain: _Chain, student, problems: list, stop, extra: dict):
    """The chain's trainings, one after another until the plan or the deadline ends it: the student trained,
    or None when `stop()` returned a reason between two trainings (what was trained is kept for the resume)."""
    for index, length in _chain_trainings(chain):
        if stop():
            if chain.unkept:  # a stop is graceful: what was trained is kept for the resume
                _keep_part(agent, student, chain.key, *chain.unkept, _seconds_per_step(chain))
            return None
        length, last = _size_training(agent, chain, length)
        if last and not length:
            break
        student = _train_once(agent, chain, student, problems, index, length, extra)
        chain.done += length
        chain.done_here += length
        chain.unkept = (chain.done, index + 1)
        if time.time() - chain.kept_at >= KEEP_PART_S:  # a kill loses at most this much of the chain
            _keep_part(agent, student, chain.key, *chain.unkept, _seconds_per_step(chain))
            chain.kept_at, chain.unkept = time.time(), None
        _log_chain_progress(agent, chain, last)
        if last:
            break
    return student


def _size_training(agent, chain: _Chain, length: int) -> tuple[int, bool]:
    """(steps, whether it is the last training) of the next training against the deadline: a probe of the
    pace when there is none yet, else shortened to what fits (0 when too little does)."""
    store, run_id = agent.store, agent.run_id
    last = False
    if chain.deadline is not None and not (chain.done or chain.pace) and length > chain.probe:
        # no pace to size it by: measure it
        chain.queue.appendleft(length - chain.probe)
        length = chain.probe
        message = f"PQ student: measuring the chain's pace on {chain.probe} steps before sizing it to the deadline"
        store.log_event(run_id=run_id, level="info", kind="pq-training", message=message)
        agent.log(message)
    elif chain.deadline is not None and (chain.done or chain.pace):
        fits = _steps_that_fit(chain)
        if fits < length:  # the last training: shortened to end before the deadline, or none when fewer
            last = True  # than a tenth of a training's steps fit (its own overhead is worth that much)
            length = fits if fits >= min(length, max(1, chain.training_steps // 10)) else 0
            message = (f"PQ student: {chain.done + length} steps fit before the deadline ({chain.planned} planned)"
                       + (f" (the last training shortened to {length})" if length else "")
                       + f"; evaluating it {'after them' if length else 'now'}")
            store.log_event(run_id=run_id, level="warning", kind="pq-training", message=message,
                            data={"steps_done": chain.done, "steps": chain.done + length})
            agent.log(message)
    return length, last


def _train_once(agent, chain: _Chain, student, problems: list, index: int, length: int, extra: dict):
    from soar_agent.control import UnitStopped
    from soar_agent.rl import trainer

    cfg = agent.config
    try:
        student, _ = trainer(cfg.student.backend)(student, agent.tokenizer, problems, agent.domain, cfg.student,
                                                  steps=length, seed=chain.seed + index,
                                                  log=lambda record, offset=chain.done: chain.step_done(
                                                      offset + record["step"] + 1),
                                                  **extra)
    except UnitStopped:  # a stop command inside this training (Agent.beat): it is redone on resume, the
        if chain.unkept:  # trainings before it are kept as after a stop between trainings
            _keep_part(agent, student, chain.key, *chain.unkept, _seconds_per_step(chain))
        raise
    return student


def _log_chain_progress(agent, chain: _Chain, last: bool) -> None:
    # half an hour in one unit: the log, `soar status` and the TUI's events say how far it is
    if last:
        target = chain.done
    elif chain.fill and chain.deadline is not None:  # the deadline, not the plan, says how many steps it will have
        target = chain.done + max(0, _steps_that_fit(chain))
    else:
        target = chain.planned
    eta = _seconds_per_step(chain) * (target - chain.done)
    message = (f"PQ student: {chain.done} of {target} steps trained, ETA {eta / 60:.0f} min (then its hard-test"
               " evaluation)")
    agent.store.log_event(run_id=agent.run_id, level="info", kind="pq-training", message=message,
                          data={"steps_done": chain.done})
    agent.log(message)


def _store_pq_checkpoint(agent, student, steps: int, questions: int, promotion_questions: int) -> int:
    """The trained student saved as the run's `pq` checkpoint (the older ones deleted): its id."""
    from soar_agent.models import save_checkpoint

    store, run_id = agent.store, agent.run_id
    directory = agent.paths.checkpoints / "pq"
    checkpoint_id = store.add_checkpoint(run_id=run_id, path=directory, role="pq",
                                         metrics={"steps": steps, "questions": questions,
                                                  "promotion_questions": promotion_questions})
    save_checkpoint(student, agent.tokenizer, directory)
    for older in store.checkpoints(run_id, role="pq", status="complete"):  # `pq` names the newest
        store.mark_checkpoint(older["id"], "deleted")
    store.mark_checkpoint(checkpoint_id, "complete")
    return checkpoint_id


def _evaluate_pq_student(agent, student, seed: int, checkpoint_id: int, summary_extra: dict) -> dict:
    """The student's hard-test evaluation, stored as hard-test-pq: its summary, with `summary_extra` added."""
    from soar_agent.engine import HFEngine

    cfg = agent.config
    store, run_id = agent.store, agent.run_id
    # a hard-test set stored before repeated lines were skipped may still repeat a question
    hard_test = unique_problems(agent.hard_set("test"))[0]
    engine = HFEngine(student, agent.tokenizer, tick=agent.beat)
    engine.on_rows = agent._counter(f"PQ student: hard-test evaluation ({len(hard_test)} problems)",
                                    len(hard_test) * (1 + cfg.eval.samples))
    results = evaluate_problems(engine, agent.domain, hard_test,
                                samples=cfg.eval.samples, greedy=True, max_new_tokens=cfg.eval.max_new_tokens,
                                seed=seed + 1)
    summary = summarize(results, default_ks(cfg.eval.samples))
    summary.update(**summary_extra)
    ids = store.add_problems(run_id=run_id, problems=[r.problem for r in results], source="hard")
    rows = [{"problem_id": pid, "samples": r.samples, "correct": r.correct, "greedy_correct": r.greedy_correct,
             "pass_at": r.pass_at(default_ks(cfg.eval.samples))} for pid, r in zip(ids, results)]
    store.add_evaluation(run_id=run_id, set_name="hard-test-pq", results=rows, summary=summary,
                         samples_per_problem=cfg.eval.samples, temperature=1.0, checkpoint_id=checkpoint_id)
    _drop_parts(store, run_id)  # the chain is done and evaluated: its parts are the student's past
    return summary
