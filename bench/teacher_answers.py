"""How often the teacher's answers are right, by the way it writes them: the `<answer>` field of its item
(no working), or a worked solution to its own question in the students' format, sampled at the teacher's
temperature (what teacher.reward_target = "teacher" trains students on) or greedy. The items are sampled
through the loop's own `teacher.sample_items` from the given model; the domain's exact solver only checks.

    python bench/teacher_answers.py --domain arith --items 256 [--model DIR] [--seed 1]
"""

from __future__ import annotations

import argparse
import collections
import time

import torch

from soar_agent.config import TeacherSection
from soar_agent.engine import HFEngine
from soar_agent.models import load_model, load_tokenizer, resolve_model_path
from soar_agent.tasks import get_domain
from soar_agent.teacher import sample_items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", default="arith", choices=("arith", "program"))
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--model", default="default")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=384, help="the solution's budget (student.max_new_tokens)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = resolve_model_path(args.model)
    tokenizer, domain = load_tokenizer(path), get_domain(args.domain)
    engine = HFEngine(load_model(path), tokenizer)
    started = time.time()
    items, _ = sample_items(engine, domain, args.items, TeacherSection(), seed=args.seed)
    sampled = time.time() - started
    prompts = [domain.student_prompt(item.problem.question) for item in items]
    answers = {name: [domain.extract_answer(row[0].text) for row in engine.generate(
        prompts, n=1, temperature=temperature, max_new_tokens=args.max_new_tokens, seed=args.seed + 2)]
        for name, temperature in (("solution T=1", 1.0), ("solution greedy", 0.0))}
    solved = time.time() - started - sampled
    levels = collections.defaultdict(lambda: collections.Counter())
    for index, item in enumerate(items):
        counts = levels[item.problem.level]
        counts["n"] += 1
        counts["<answer> field"] += bool(item.verified)
        for name, column in answers.items():
            counts[name] += column[index] == item.problem.answer
    columns = ("<answer> field", "solution T=1", "solution greedy")
    print(f"{args.domain}: {len(items)} teacher items (seed {args.seed}), sampled in {sampled:.0f}s, solved twice in"
          f" {solved:.0f}s; share right by level")
    print(f"{'level':>5} {'items':>5} " + " ".join(f"{c:>16}" for c in columns))
    for level in sorted(levels, key=lambda lv: lv or 0):
        counts = levels[level]
        print(f"{level!s:>5} {counts['n']:>5} " + " ".join(f"{counts[c] / counts['n']:>16.3f}" for c in columns))
    total = sum(levels.values(), collections.Counter())
    print(f"{'all':>5} {total['n']:>5} " + " ".join(f"{total[c] / total['n']:>16.3f}" for c in columns))


if __name__ == "__main__":
    main()
