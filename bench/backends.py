"""Student backends head to head on the shipped model: the same problems, the same wall-clock budget.

Each backend (`student.backend`: rloo, srl, srl-rlvr, nested, srpo) trains one student from the shipped model on the
same problems (default: the shipped arith hard-train set, fail@128 for the base model, where outcome
rewards carry almost no signal and SRL's expert steps do) for the same wall-clock budget: two probe steps
measure its seconds per step, then it gets budget / (seconds per step) steps. Every student, and the base
model, is then evaluated with one sampling seed: hard-test pass@1 / pass@k and greedy accuracy per level
on fresh generator problems. Deltas are against base, measured in the same run.

--train-levels trains on fresh generator problems of those levels instead of hard-train (the same
problems for every backend), --steps gives every backend that many steps instead of the wall-clock budget.
Steps to target (--target): every --eval-every steps each student's train accuracy (mean accuracy of
--train-k samples on every training problem, one sampling seed for every row and step) is measured; the
figure is the first measured step at or above the target (an accuracy, or +gain over the base model's),
and the srpo / rloo ratio is printed (SRPO claims fewer steps; the goal here is <= 0.7).

    python bench/backends.py                          # 10 minutes per backend
    python bench/backends.py --minutes 4 --k 16 --backends rloo,srl
    python bench/backends.py --backends rloo,srpo --train-levels 1,2,3,4 --steps 40 --target +0.1
"""

from __future__ import annotations

import argparse
import json
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

BACKENDS = ("rloo", "srl", "srl-rlvr", "nested", "srpo")
ROOT = Path(__file__).resolve().parent.parent


def train_and_evaluate(job: tuple) -> dict:
    """(backend or "base", minutes, k, per_level, seed, overrides, options) -> figures. One torch thread per
    worker. options: steps (0 = the wall-clock budget), train_levels, train_per_level, eval_every, train_k."""
    import torch

    torch.set_num_threads(1)
    from soar_agent.hard_sets import load_problem_file, shipped_hard_set
    from soar_agent.config import RunConfig, apply_overrides
    from soar_agent.engine import HFEngine
    from soar_agent.evaluation import evaluate_problems, summarize, unique_problems
    from soar_agent.models import load_model, load_tokenizer
    from soar_agent.rl import trainer
    from soar_agent.tasks import generate_problems, get_domain

    backend, minutes, k, per_level, seed, overrides, options = job
    cfg = apply_overrides(RunConfig(), overrides)
    domain = get_domain(cfg.domain.name)
    tokenizer, model = load_tokenizer(cfg.model.path), load_model(cfg.model.path, cfg.model.dtype)
    if options["train_levels"]:  # the same problems for every backend (one generator seed)
        train = unique_problems(generate_problems(domain, [lv for lv in options["train_levels"]
                                                           for _ in range(options["train_per_level"])],
                                                  random.Random(20_000 + seed)))[0]
    else:
        train = unique_problems(load_problem_file(Path(cfg.domain.hard_train) if cfg.domain.hard_train else
                                                  shipped_hard_set(domain.NAME, "train"), domain))[0]

    def train_accuracy(student) -> float:
        results = evaluate_problems(HFEngine(student, tokenizer), domain, train, samples=options["train_k"],
                                    greedy=False, temperature=cfg.student.temperature,
                                    max_new_tokens=cfg.student.max_new_tokens, seed=seed + 13)
        return sum(r.correct for r in results) / sum(r.samples for r in results)
    test = unique_problems(load_problem_file(Path(cfg.domain.hard_test) if cfg.domain.hard_test else
                                             shipped_hard_set(domain.NAME, "test"), domain))[0]
    figures: dict = {"backend": backend, "train_problems": len(train)}
    if backend == "base" and options["eval_every"]:
        figures["curve"] = [(0, train_accuracy(model))]
    if backend != "base":
        student_cfg = replace(cfg.student, backend=backend)
        train_fn = trainer(backend)
        steps = options["steps"]
        if not steps:
            started = time.time()
            train_fn(model, tokenizer, train, domain, student_cfg, steps=2, seed=seed)
            seconds_per_step = (time.time() - started) / 2
            steps = max(2, int(minutes * 60 / seconds_per_step))
        students, curve = _keep_students(), []

        def measure(record: dict) -> None:  # train accuracy of the student in training, every eval_every steps
            if options["eval_every"] and (record["step"] + 1) % options["eval_every"] == 0:
                curve.append((record["step"] + 1, train_accuracy(students[-1])))

        started = time.time()
        model, metrics = train_fn(model, tokenizer, train, domain, student_cfg, steps=steps, seed=seed, log=measure)
        figures["curve"] = curve
        figures.update(steps=steps, train_seconds=time.time() - started, updates=metrics.updates,
                       train_reward_first=_window(metrics.per_step[:10]), train_reward_last=_window(metrics.per_step[-10:]),
                       rollout_tokens_per_second=metrics.tokens_per_second)
    engine = HFEngine(model, tokenizer)
    hard = summarize(evaluate_problems(engine, domain, test, samples=k, greedy=True,
                                       max_new_tokens=cfg.eval.max_new_tokens, seed=seed + 7), [1, k])
    figures.update({"hard_pass@1": hard["pass@1"], f"hard_pass@{k}": hard[f"pass@{k}"],
                    "hard_greedy": hard["greedy_acc"], "hard_problems": hard["problems"]})
    levels = [3, 4, 5, 6]
    fresh = generate_problems(domain, [lv for lv in levels for _ in range(per_level)], random.Random(10_000 + seed))
    by_level = summarize(evaluate_problems(engine, domain, fresh, samples=0, greedy=True,
                                           max_new_tokens=cfg.eval.max_new_tokens), [])["levels"]
    figures["greedy_by_level"] = {level: by_level[str(level)]["greedy_acc"] for level in levels}
    return figures


def _keep_students() -> list:
    """The students the trainers make, newest last: their `log` callback gets a step's record, not the
    model, so each trainer module's clone_model also puts its copy in this list (bench-only, per worker)."""
    import sys

    students: list = []
    for module in [m for name, m in list(sys.modules.items()) if name.startswith("soar_agent.rl.")
                   and hasattr(m, "clone_model")]:  # every backend module (rl/__init__ imports them all)
        make = getattr(module.clone_model, "__wrapped__", module.clone_model)

        def keep(model, make=make):
            students.append(make(model))
            return students[-1]

        keep.__wrapped__ = make
        module.clone_model = keep
    return students


def steps_to_target(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first measured step whose train accuracy reaches the target (None: not within the run)."""
    return next((step for step, accuracy in curve if accuracy >= target), None)


def _window(records: list[dict]) -> float:
    values = [r["reward_mean"] for r in records if r.get("reward_mean") == r.get("reward_mean")]
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget per backend")
    parser.add_argument("--k", type=int, default=32, help="samples per hard-test problem (pass@1, pass@k)")
    parser.add_argument("--per-level", type=int, default=50, help="fresh problems per level for greedy accuracy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--steps", type=int, default=0, help="training steps for every backend (0 = --minutes)")
    parser.add_argument("--train-levels", default="", help="train on fresh generator problems of these levels"
                                                             " (e.g. 1,2,3,4) instead of hard-train")
    parser.add_argument("--train-per-level", type=int, default=16, help="training problems per --train-levels level")
    parser.add_argument("--target", default="", help="train accuracy to reach: an accuracy (0.5) or a gain over"
                                                      " the base model's (+0.1); measured every --eval-every steps")
    parser.add_argument("--eval-every", type=int, default=5, help="steps between train-accuracy measurements")
    parser.add_argument("--train-k", type=int, default=8, help="samples per training problem for train accuracy")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        parser.error(f"--backends: unknown {sorted(unknown)} (expected some of {', '.join(BACKENDS)})")
    options = {"steps": args.steps, "train_levels": [int(v) for v in args.train_levels.split(",") if v],
               "train_per_level": args.train_per_level, "eval_every": args.eval_every if args.target else 0,
               "train_k": args.train_k}
    jobs = [(b, args.minutes, args.k, args.per_level, args.seed, args.set, options) for b in ["base", *backends]]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        rows = list(pool.map(train_and_evaluate, jobs))
    if args.json:
        print(json.dumps(rows))
        return
    base = rows[0]
    key = f"hard_pass@{args.k}"
    print(f"\nhard-test: {base['hard_problems']} problems x {args.k} samples (one seed for every row); greedy on "
          f"{args.per_level} fresh problems per level; training budget "
          f"{f'{args.steps} steps' if args.steps else f'{args.minutes:g} min'} per backend on {base['train_problems']}"
          f" problems ({'levels ' + args.train_levels if args.train_levels else 'hard-train'})")
    print(f"{'backend':10s} {'steps':>5s} {'train reward first->last 10':>28s} {'pass@1':>8s} {f'pass@{args.k}':>8s} "
          f"{'greedy L3 / L4 / L5 / L6':>26s} {'rollout tok/s':>13s}")
    for row in rows:
        train = (f"{row['train_reward_first']:.3f} -> {row['train_reward_last']:.3f}" if "steps" in row else "")
        levels = " / ".join(f"{v:.2f}" for v in row["greedy_by_level"].values())
        print(f"{row['backend']:10s} {row.get('steps', ''):>5} {train:>28s} {row['hard_pass@1']:8.4f} {row[key]:8.4f} "
              f"{levels:>26s} {row.get('rollout_tokens_per_second', 0):13.0f}")
    for row in rows[1:]:
        print(f"{row['backend']} vs base: pass@{args.k} {row[key] - base[key]:+.4f}, greedy mean "
              f"{sum(row['greedy_by_level'].values()) / 4 - sum(base['greedy_by_level'].values()) / 4:+.3f}")

    if args.target:
        print_steps_to_target(args, rows)


def print_steps_to_target(args, rows: list[dict]) -> None:
    """Each trained backend's train-accuracy curve and first step at the target; srpo / rloo."""
    base_accuracy = rows[0]["curve"][0][1]
    target = base_accuracy + float(args.target) if args.target.startswith("+") else float(args.target)
    print(f"\ntrain accuracy ({args.train_k} samples per training problem, one seed): base {base_accuracy:.3f}, "
          f"target {target:.3f}")
    reached = {}
    for row in rows[1:]:
        reached[row["backend"]] = steps_to_target(rows[0]["curve"] + row["curve"], target)
        first = reached[row["backend"]] if reached[row["backend"]] is not None else f"not in {row['steps']}"
        print(f"{row['backend']:10s} steps to target {first!s:>10s}   curve "
              + " ".join(f"{step}:{accuracy:.3f}" for step, accuracy in row["curve"]))
    if "srpo" in reached and "rloo" in reached:
        if reached["srpo"] is not None and reached["rloo"] is not None:
            ratio = f"{reached['srpo'] / reached['rloo']:.2f}"
        else:
            ratio = "n/a (" + ", ".join(f"{b} did not reach it" for b in ("srpo", "rloo") if reached[b] is None) + ")"
        print(f"steps to target, srpo / rloo: {ratio} (goal <= 0.7)")


if __name__ == "__main__":
    main()
