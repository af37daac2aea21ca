"""SOAR-PQ: the paper's evaluation of the promotion questions. A *fresh* base student is trained on the
promotion questions plus hard-train and evaluated on hard-test (reported, never used for reward)."""

from __future__ import annotations

from soar_agent.evaluation import default_ks, evaluate_problems, summarize, unique_problems


def promoted_problems(agent) -> list:
    """The run's promotion questions: the items of every promoted dataset as the teacher wrote them (its own
    answers or the solver's, per teacher.reward_target), never a hard-set question (agent.curriculum_problems)."""
    store, problems = agent.store, []
    for promotion in store.datasets(agent.run_id, kind="promotion"):
        source = store.get_dataset(promotion["meta"]["from_dataset"]) if promotion["meta"].get("from_dataset") else None
        problems += agent._dataset_problems(source) if source else [
            store.to_problem(row) for row in store.dataset_problems(promotion["id"])]
    return problems


def evaluate_pq(agent, steps: int | None = None, seed: int = 0) -> dict:
    from soar_agent.engine import HFEngine
    from soar_agent.models import load_model
    from soar_agent.rl import trainer

    cfg = agent.config
    store, run_id = agent.store, agent.run_id
    promotion_questions = promoted_problems(agent)
    problems = promotion_questions + agent.hard_set("train")
    steps = steps or max(cfg.student.steps, 2 * cfg.student.steps * len(store.datasets(run_id, kind="promotion")))
    base = load_model(cfg.model.path, cfg.model.dtype, device=cfg.model.device)
    student, metrics = trainer(cfg.student.backend)(base, agent.tokenizer, problems, agent.domain, cfg.student, steps=steps, seed=seed)
    # a hard-test set stored before repeated lines were skipped may still repeat a question
    hard_test = unique_problems(agent.hard_set("test"))[0]
    results = evaluate_problems(HFEngine(student, agent.tokenizer), agent.domain, hard_test,
                                samples=cfg.eval.samples, greedy=True, max_new_tokens=cfg.eval.max_new_tokens,
                                seed=seed + 1)
    summary = summarize(results, default_ks(cfg.eval.samples))
    summary.update(promotion_questions=len(promotion_questions), steps=steps)
    ids = store.add_problems(run_id=run_id, problems=[r.problem for r in results], source="hard")
    rows = [{"problem_id": pid, "samples": r.samples, "correct": r.correct, "greedy_correct": r.greedy_correct,
             "pass_at": r.pass_at(default_ks(cfg.eval.samples))} for pid, r in zip(ids, results)]
    store.add_evaluation(run_id=run_id, set_name="hard-test-pq", results=rows, summary=summary,
                         samples_per_problem=cfg.eval.samples, temperature=1.0)
    return summary
