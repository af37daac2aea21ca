"""Student backends head to head on the shipped model: the same problems, the same wall-clock budget.

Each backend (`student.backend`: rloo, srl, srl-rlvr) trains one student from the shipped model on the
same problems (default: the shipped arith hard-train set, fail@128 for the base model, where outcome
rewards carry almost no signal and SRL's expert steps do) for the same wall-clock budget: two probe steps
measure its seconds per step, then it gets budget / (seconds per step) steps. Every student, and the base
model, is then evaluated with one sampling seed: hard-test pass@1 / pass@k and greedy accuracy per level
on fresh generator problems. Deltas are against base, measured in the same run.

    python bench/backends.py                          # 10 minutes per backend
    python bench/backends.py --minutes 4 --k 16 --backends rloo,srl
"""

from __future__ import annotations

import argparse
import json
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

BACKENDS = ("rloo", "srl", "srl-rlvr")
ROOT = Path(__file__).resolve().parent.parent


def train_and_evaluate(job: tuple) -> dict:
    """(backend or "base", minutes, k, per_level, seed, overrides) -> figures. One torch thread per worker."""
    import torch

    torch.set_num_threads(1)
    from soar_agent.agent import load_problem_file, shipped_hard_set
    from soar_agent.config import RunConfig, apply_overrides
    from soar_agent.engine import HFEngine
    from soar_agent.evaluation import evaluate_problems, summarize, unique_problems
    from soar_agent.models import load_model, load_tokenizer
    from soar_agent.rl import trainer
    from soar_agent.tasks import generate_problems, get_domain

    backend, minutes, k, per_level, seed, overrides = job
    cfg = apply_overrides(RunConfig(), overrides)
    domain = get_domain(cfg.domain.name)
    tokenizer, model = load_tokenizer(cfg.model.path), load_model(cfg.model.path, cfg.model.dtype)
    train = unique_problems(load_problem_file(Path(cfg.domain.hard_train) if cfg.domain.hard_train else
                                              shipped_hard_set(domain.NAME, "train"), domain))[0]
    test = unique_problems(load_problem_file(Path(cfg.domain.hard_test) if cfg.domain.hard_test else
                                             shipped_hard_set(domain.NAME, "test"), domain))[0]
    figures: dict = {"backend": backend}
    if backend != "base":
        student_cfg = replace(cfg.student, backend=backend)
        train_fn = trainer(backend)
        started = time.time()
        train_fn(model, tokenizer, train, domain, student_cfg, steps=2, seed=seed)
        seconds_per_step = (time.time() - started) / 2
        steps = max(2, int(minutes * 60 / seconds_per_step))
        started = time.time()
        model, metrics = train_fn(model, tokenizer, train, domain, student_cfg, steps=steps, seed=seed)
        figures.update(steps=steps, train_seconds=time.time() - started, updates=metrics.updates,
                       train_reward_first=_window(metrics.per_step[:10]), train_reward_last=_window(metrics.per_step[-10:]))
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
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        parser.error(f"--backends: unknown {sorted(unknown)} (expected some of {', '.join(BACKENDS)})")
    jobs = [(b, args.minutes, args.k, args.per_level, args.seed, args.set) for b in ["base", *backends]]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        rows = list(pool.map(train_and_evaluate, jobs))
    if args.json:
        print(json.dumps(rows))
        return
    base = rows[0]
    key = f"hard_pass@{args.k}"
    print(f"\nhard-test: {base['hard_problems']} problems x {args.k} samples (one seed for every row); greedy on "
          f"{args.per_level} fresh problems per level; training budget {args.minutes:g} min per backend")
    print(f"{'backend':10s} {'steps':>5s} {'train reward first->last 10':>28s} {'pass@1':>8s} {f'pass@{args.k}':>8s} "
          f"{'greedy L3 / L4 / L5 / L6':>26s}")
    for row in rows:
        train = (f"{row['train_reward_first']:.3f} -> {row['train_reward_last']:.3f}" if "steps" in row else "")
        levels = " / ".join(f"{v:.2f}" for v in row["greedy_by_level"].values())
        print(f"{row['backend']:10s} {row.get('steps', ''):>5} {train:>28s} {row['hard_pass@1']:8.4f} {row[key]:8.4f} "
              f"{levels:>26s}")
    for row in rows[1:]:
        print(f"{row['backend']} vs base: pass@{args.k} {row[key] - base[key]:+.4f}, greedy mean "
              f"{sum(row['greedy_by_level'].values()) / 4 - sum(base['greedy_by_level'].values()) / 4:+.3f}")


if __name__ == "__main__":
    main()
