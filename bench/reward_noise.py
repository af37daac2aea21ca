"""How noisy is each grounded reward metric? (issue 7: the reward's standard error must be well below tau)

On the shipped model and its arith hard-train set, for each `reward.metric` (greedy, sampled,
expert-logprob):
  * self: the baseline scored against itself, on `--repeats` measurements (each a fresh draw of |Q_R|
    questions and a fresh sampling seed, as successive teacher steps make them). A paired metric gives
    exactly 0 here; an unpaired one would not.
  * students: `--students` copies trained `--steps` RL steps (student defaults) from the baseline with
    different seeds on generator problems of `--levels` (a stand-in for one teacher dataset), each scored
    on the same `--repeats` measurements. Reported per metric:
      sem    the mean paired standard error std(per-question differences)/sqrt(|Q_R|) of one measurement
      rep    the std of one student's reward across measurements (question draw + seed: measurement noise)
      seeds  the std across students of their mean reward (training-seed noise the teacher also sees)
The noise that matters for promotion is sem (equivalently rep) against tau.

    OMP_NUM_THREADS=1 python bench/reward_noise.py [--students 3 --steps 8 --repeats 3 --samples 8]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soar_agent.hard_sets import load_problem_file, shipped_hard_set  # noqa: E402
from soar_agent.config import RunConfig  # noqa: E402
from soar_agent.reward import METRICS, paired_reward, question_scores  # noqa: E402
from soar_agent.tasks import generate_problems, get_domain  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", default="arith")
    parser.add_argument("--students", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="student RL steps (default student.steps)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--questions", type=int, default=None, help="|Q_R| (default reward.questions)")
    parser.add_argument("--samples", type=int, default=None, help="k for sampled (default reward.samples)")
    parser.add_argument("--levels", default="3,4,5", help="levels of the students' training problems")
    parser.add_argument("--metrics", default=",".join(METRICS))
    parser.add_argument("--out", default=None, help="write the raw figures as JSON here")
    args = parser.parse_args()

    import torch

    from soar_agent.models import load_model, load_tokenizer
    from soar_agent.rl.train import train_student

    torch.manual_seed(0)
    cfg = RunConfig()
    domain = get_domain(args.domain)
    questions = args.questions or cfg.reward.questions
    samples = args.samples or cfg.reward.samples
    metrics = args.metrics.split(",")
    tokenizer, base = load_tokenizer("default"), load_model("default")
    hard_train = load_problem_file(shipped_hard_set(domain.NAME, "train"), domain)
    draws = [(random.Random(100 + r).sample(hard_train, min(questions, len(hard_train))), 1000 + r)
             for r in range(args.repeats)]

    def scores(model, metric):
        return [question_scores(model, tokenizer, domain, q, metric, samples=samples, seed=seed,
                                temperature=cfg.student.temperature, max_new_tokens=cfg.eval.max_new_tokens)
                for q, seed in draws]

    started = time.time()
    before = {m: scores(base, m) for m in metrics}
    print(f"baseline scored in {time.time() - started:.0f}s", flush=True)
    results = {m: {"self": [paired_reward(b, s) for b, s in zip(before[m], scores(base, m))], "students": []}
               for m in metrics}
    levels = [int(x) for x in args.levels.split(",")]
    for j in range(args.students):
        t0 = time.time()
        train = generate_problems(domain, [levels[i % len(levels)] for i in range(64)], random.Random(7 + j))
        student, info = train_student(base, tokenizer, train, domain, cfg.student, steps=args.steps, seed=11 + j)
        trained = time.time() - t0
        for m in metrics:
            results[m]["students"].append([paired_reward(b, a) for b, a in zip(before[m], scores(student, m))])
        print(f"student {j}: trained {trained:.0f}s (train reward {info.reward_mean:.3f}, {info.updates} updates), "
              f"scored {time.time() - t0 - trained:.0f}s", flush=True)

    tau = cfg.promotion.tau
    print(f"\n|Q_R| = {questions}, k = {samples}, {args.students} students x {args.steps or cfg.student.steps} steps,"
          f" {args.repeats} measurements each; tau = {tau}")
    print(f"{'metric':>15} {'self':>8} {'reward':>8} {'sem':>8} {'rep':>8} {'seeds':>8}  sem/tau")
    for m in metrics:
        r = results[m]
        self_max = max(abs(x) for x, _ in r["self"])
        per_student = [[x for x, _ in s] for s in r["students"]]
        sems = [e for s in r["students"] for _, e in s if e is not None]
        mean = statistics.fmean(x for s in per_student for x in s)
        sem = statistics.fmean(sems) if sems else float("nan")
        rep = statistics.fmean(statistics.stdev(s) for s in per_student) if args.repeats > 1 else float("nan")
        seeds = statistics.stdev(statistics.fmean(s) for s in per_student) if args.students > 1 else float("nan")
        print(f"{m:>15} {self_max:8.4f} {mean:+8.4f} {sem:8.4f} {rep:8.4f} {seeds:8.4f}  {sem / tau:6.2f}")
    print(f"({time.time() - started:.0f}s in all)")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
