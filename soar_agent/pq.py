"""SOAR-PQ: the paper's evaluation of the promotion questions. A *fresh* base student is trained on the
promotion questions plus hard-train and evaluated on hard-test (reported, never used for reward); the
student is kept as the run's `pq` checkpoint (`soar export --checkpoint pq`).

The training is long, as the curated ceiling's is: a chain of trainings of PQ_TRAINING_STEPS each, every
one continuing from the last (each makes its own pass over the expert solutions, rl.sft), PQ_STEPS in all
by default: the chains of bench/teacher_data.py. Measured there on the shipped model (bench/README.md,
"What the teacher's data is worth"; hard-test pass@32, base 0.028): this PQ of a length-split run reached
0.318 (69% of the generator's gain at the same training, 3.4x Hard-Only), while its promoted student
(50-step students) was 0.009 and a short PQ (200 steps, the default before 2026-12-01) 0.065."""

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


PQ_STEPS, PQ_TRAINING_STEPS = 800, 100  # bench/teacher_data.py's chains: 8 trainings of 100 steps


def chain_lengths(steps: int, per_training: int) -> list[int]:
    """`steps` RL steps as consecutive trainings of `per_training` steps (the last one shorter)."""
    full, rest = divmod(steps, per_training)
    return [per_training] * full + ([rest] if rest else [])


def evaluate_pq(agent, steps: int | None = None, seed: int = 0, training_steps: int = PQ_TRAINING_STEPS) -> dict:
    from soar_agent.engine import HFEngine
    from soar_agent.models import load_model, save_checkpoint
    from soar_agent.rl import trainer

    cfg = agent.config
    store, run_id = agent.store, agent.run_id
    promotion_questions = promoted_problems(agent)
    problems = promotion_questions + agent.hard_set("train")
    steps = steps or PQ_STEPS
    student = load_model(cfg.model.path, cfg.model.dtype, device=cfg.model.device)
    for index, length in enumerate(chain_lengths(steps, training_steps)):
        student, _ = trainer(cfg.student.backend)(student, agent.tokenizer, problems, agent.domain, cfg.student,
                                                  steps=length, seed=seed + index)
    directory = agent.paths.checkpoints / "pq"
    checkpoint_id = store.add_checkpoint(run_id=run_id, path=directory, role="pq",
                                         metrics={"steps": steps, "promotion_questions": len(promotion_questions)})
    save_checkpoint(student, agent.tokenizer, directory)
    for older in store.checkpoints(run_id, role="pq", status="complete"):  # `pq` names the newest
        store.mark_checkpoint(older["id"], "deleted")
    store.mark_checkpoint(checkpoint_id, "complete")
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
                         samples_per_problem=cfg.eval.samples, temperature=1.0, checkpoint_id=checkpoint_id)
    return summary
