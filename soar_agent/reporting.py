"""What a run reports and hands over: its evaluations of the baseline (hard-test pass@k, never used for reward;
easy levels), the best checkpoint by measured reward, exports, and which checkpoints are kept."""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from soar_agent import evalcache
from soar_agent.budget import BudgetTooSmall, evaluation_seconds, remember_timing
from soar_agent.hard_sets import shipped_hard_set
from soar_agent.seeds import derive_seed
from soar_agent.tasks import generate_problems
from soar_agent.tasks.base import Problem

if TYPE_CHECKING:
    from soar_agent.agent import Agent

EASY_LEVELS = (1, 2, 3)
EASY_PER_LEVEL = 20
EVAL_PROBE_SHARE = 0.05  # of a first hard-test evaluation's completions: what its time is projected from


def report_evaluation(agent: Agent, step: int, deadline: float | None = None) -> dict:
    """pass@1..pass@k on hard-test (never used for reward) and greedy accuracy on easy levels. With a
    `deadline` and no measurement of a hard-test evaluation's time (this run's or an earlier run's here),
    its pace over its first EVAL_PROBE_SHARE of completions says when it would end: past the deadline it
    is given up at once (BudgetTooSmall, nothing stored), rather than found out an evaluation later."""
    from soar_agent.engine import HFEngine
    from soar_agent.evaluation import unique_problems

    cfg = agent.config
    engine = HFEngine(agent.model("baseline"), agent.tokenizer, tick=agent.beat)
    checkpoint = agent.latest_checkpoint("baseline")
    started = time.time()
    sets = {"hard-test": agent.hard_set("test")}
    if hasattr(agent.domain, "generate"):
        rng = random.Random(derive_seed(cfg.run.seed, 4242))
        sets["easy"] = generate_problems(agent.domain, [lv for lv in EASY_LEVELS for _ in range(EASY_PER_LEVEL)], rng)
    # Small easy levels repeat questions, and hard sets stored before repeats were skipped may hold
    # them: one result per stored problem is all an evaluation can keep.
    summaries = {name: evaluate_set(agent, step, name, unique_problems(problems)[0], engine, checkpoint, deadline)
                 for name, problems in sets.items()}
    hard = summaries["hard-test"]
    agent.log(f"[eval step {step}] hard-test " + " ".join(f"{k} {v:.3f}" for k, v in hard.items()
                                                          if k.startswith("pass@")) +
              (f"; easy greedy {summaries['easy']['greedy_acc']:.3f}" if "easy" in summaries else "") +
              (f" (cached: the base model's evaluation from an earlier run, {hard['seconds']:.0f}s then;"
               f" SOAR_CACHE_DIR=\"\" measures it again)" if hard.get("cached") else
               f" ({time.time() - started:.0f}s)"))
    return summaries


def evaluate_set(agent: Agent, step: int, name: str, problems: list[Problem], engine, checkpoint: dict | None,
                 deadline: float | None) -> dict:
    """One set's evaluation of the baseline (`checkpoint`, None for the base model), stored with its rollouts;
    the base model's is kept across runs (evalcache: the same in every run on this model and set) and taken
    from there when it is."""
    from soar_agent.evaluation import default_ks, evaluate_problems, summarize

    cfg, started = agent.config, time.time()
    samples = cfg.eval.samples if name == "hard-test" else 0
    key = base_evaluation_key(agent, problems, samples, derive_seed(cfg.run.seed, step, 7)) if checkpoint is None \
        else None
    cached = evalcache.load_evaluation(key) if key else None
    results = evalcache.cached_results(cached, problems) if cached else None
    if results is not None:  # stored like a measured one, its measured seconds kept (an evaluation's cost)
        summary = {**cached["summary"], "cached": True}
    else:
        engine.on_rows = agent._counter(f"step {step}: {name} evaluation ({len(problems)} problems)",
                                        len(problems) * (1 + samples))
        if deadline is not None and name == "hard-test" and not evaluation_seconds(agent):
            engine.on_rows = watch_evaluation(agent, engine.on_rows, len(problems) * (1 + samples), deadline)
        results = evaluate_problems(engine, agent.domain, problems, samples=samples, greedy=True,
                                    max_new_tokens=cfg.eval.max_new_tokens, seed=derive_seed(cfg.run.seed, step, 7),
                                    keep_completions=True)
        summary = summarize(results, default_ks(samples) if samples else [])
        summary.update(tokens_per_second=engine.stats.tokens_per_second, seconds=time.time() - started)
        if key:
            evalcache.save_evaluation(key, summary, results, summary["seconds"])
    if name == "hard-test":  # what the final training's evaluation will cost (check_budget)
        remember_timing(agent, evaluation=summary.get("seconds"))
    # already stored problems map to their existing ids (content hash), new ones are added once
    ids = agent.store.add_problems(run_id=agent.run_id, problems=problems, source="seed" if name == "easy" else "hard")
    rows = [{"problem_id": ids[i], "samples": r.samples, "correct": r.correct, "greedy_correct": r.greedy_correct,
             "pass_at": r.pass_at(default_ks(samples)) if samples else {}} for i, r in enumerate(results)]
    agent.store.add_rollouts(run_id=agent.run_id, rows=[
        {"problem_id": ids[i], "phase": "eval", "ref": f"eval-step-{step}/{name}", "completion": text}
        for i, r in enumerate(results) for text in r.completions])
    agent.store.add_evaluation(run_id=agent.run_id, set_name=name, results=rows, summary=summary,
                               samples_per_problem=samples, temperature=1.0, teacher_step=step,
                               checkpoint_id=checkpoint["id"] if checkpoint else None)
    return summary


def watch_evaluation(agent: Agent, on_rows, total: int, deadline: float):
    """on_rows, and once EVAL_PROBE_SHARE of the `total` completions are done, BudgetTooSmall when their
    pace says the evaluation ends after `deadline`."""
    began, seen = time.time(), [0]

    def watched(count: int) -> None:
        on_rows(count)
        seen[0] += count
        if total * EVAL_PROBE_SHARE <= seen[0] < total:
            projected = (time.time() - began) / seen[0] * total
            if began + projected > deadline:
                message = (f"a time budget of {max(0.0, deadline - began) / 3600:.2f} h is too small: the base"
                           f" model's hard-test evaluation alone would take ~{projected / 60:.0f} min here (its first"
                           f" {seen[0]} of {total} completions took {time.time() - began:.0f} s), and a teacher"
                           f" step and the final training come after it; curricula/trial.toml is a short trial,"
                           f" and a run of a configuration records its units' times so that later runs of it"
                           f" are sized (or refused) at their start")
                agent.store.log_event(run_id=agent.run_id, level="error", kind="budget-too-small",
                                      message=message, data={"evaluation": projected})
                agent.store.set_run_status(agent.run_id, "stopped")
                raise BudgetTooSmall(message)

    return watched


def base_evaluation_key(agent: Agent, problems: list[Problem], samples: int, seed: int) -> dict | None:
    """The evalcache key of the base model's evaluation on `problems` with this run's settings; None
    when the cache is off."""
    from soar_agent.evalcache import cache_dir, evaluation_key, model_hash, problems_hash

    if cache_dir() is None:
        return None
    cfg, parameter = agent.config, next(agent.model("baseline").parameters())
    return evaluation_key(model_hash(cfg.model.path), problems_hash(problems), samples=samples, seed=seed,
                          greedy=True, temperature=1.0, max_new_tokens=cfg.eval.max_new_tokens,
                          domain=agent.domain.NAME, chat_template=cfg.model.chat_template, lora=cfg.model.lora,
                          device=parameter.device.type, dtype=str(parameter.dtype))


def best_checkpoint(agent: Agent) -> dict | None:
    """The baseline checkpoint with the highest estimated improvement on hard-train (best_by_reward)."""
    return best_by_reward(agent.store.checkpoints(agent.run_id, role="baseline"))


def best_by_reward(checkpoints: list[dict]) -> dict | None:
    """The complete baseline checkpoint estimated best on hard-train. Each baseline checkpoint's
    metrics["reward"] is its grounded improvement over the previous baseline on that step's hard-train
    reward questions, so the running sum (over every baseline checkpoint, pruned ones included) estimates
    its improvement over the base model. Never hard-test: that set is for reporting only. Ties go to the
    later checkpoint (more training at equal measured quality)."""
    best, best_score, total = None, None, 0.0
    for checkpoint in sorted(checkpoints, key=lambda c: c["id"]):
        total += (checkpoint.get("metrics") or {}).get("reward") or 0.0
        if checkpoint["status"] == "complete" and (best_score is None or total >= best_score):
            best, best_score = checkpoint, total
    return best


def export(agent: Agent, which: str = "best", out: str | None = None, force: bool = False, log=None) -> Path:
    """Export a checkpoint (export.export_checkpoint); `log` gets one line saying which (default: the
    agent's log)."""
    from soar_agent.export import export_checkpoint, prune_exports

    # milliseconds: two exports in one second must not collide (an existing --out is refused)
    target = export_checkpoint(agent.store, agent.run_id, agent.config, which,
                               Path(out) if out else agent.paths.exports / f"export-{int(time.time() * 1000)}",
                               best=best_checkpoint(agent), force=force, log=log or agent.log)
    if out is None:  # one per session otherwise, kept forever
        prune_exports(agent.paths.exports, agent.config.budget.keep_checkpoints)
    return target


def before_and_after(agent: Agent, exported: Path) -> str | None:
    """One line `hard-test pass@K: base X -> exported Y`: the base model's step-0 hard-test evaluation, and
    the evaluation of the exported checkpoint itself, found by its content: the run's evaluation (the PQ
    student's, a baseline's or the base model's) of the checkpoint whose weights and config hash as the
    exported directory's (evalcache.model_hash): the same model, not another's figure (its tokenizer is the
    run's, as evaluated). When the run evaluated none such, the line says how to measure it. None without
    a step-0 evaluation."""
    from soar_agent.evalcache import model_hash
    from soar_agent.models import ModelLoadError

    evaluations = [e for e in agent.store.evaluations(agent.run_id) if e["set_name"] in ("hard-test", "hard-test-pq")]
    base = next((e for e in evaluations if e["set_name"] == "hard-test" and e["teacher_step"] == 0
                 and e["checkpoint_id"] is None), None)
    ks = sorted((int(name[5:]) for name in (base or {"summary": {}})["summary"] if name.startswith("pass@")))
    if not ks:
        return None
    k = f"pass@{ks[-1]}"
    line = f"hard-test {k}: base {base['summary'][k]:.3f} -> exported"
    checkpoints = {c["id"]: c for c in agent.store.checkpoints(agent.run_id)}
    target = model_hash(exported, weights_only=True)
    for evaluation in reversed(evaluations):  # the newest first: the PQ student's when the run ended with it
        checkpoint = checkpoints.get(evaluation["checkpoint_id"])
        path = (checkpoint["path"] if checkpoint else
                agent.config.model.path if evaluation["set_name"] == "hard-test" else None)
        try:
            same = path is not None and k in evaluation["summary"] and model_hash(path, True) == target
        except (OSError, ModelLoadError):  # a pruned checkpoint
            same = False
        if same:
            return f"{line} {evaluation['summary'][k]:.3f}"
    hard_test = agent.config.domain.hard_test or shipped_hard_set(agent.domain.NAME, "test")
    return (f"{line} not evaluated (the run evaluated no checkpoint with its weights): soar eval --model"
            f" {exported} --domain {agent.config.domain.name} --data {hard_test}"
            f" --samples {agent.config.eval.samples} --max-new-tokens {agent.config.eval.max_new_tokens} measures it")


def prune_checkpoints(agent: Agent) -> None:
    """Keep the newest `keep_checkpoints` of each role, and always the best-evaluated baseline."""
    keep = agent.config.budget.keep_checkpoints
    best = best_checkpoint(agent)
    for role in ("baseline", "teacher"):
        rows = agent.store.checkpoints(agent.run_id, role=role, status="complete")
        for row in rows[:-keep]:
            if best is not None and row["id"] == best["id"]:
                continue
            shutil.rmtree(row["path"], ignore_errors=True)
            agent.store.mark_checkpoint(row["id"], "deleted")
