"""What the teacher's RLOO sees under each `teacher.split` (issue 7): the reward gap between a step's datasets.

The teacher learns only from how its g datasets' rewards differ. On the shipped model, per seed:
  1. the shipped teacher writes 2 x n items (`teacher.sample_items`, the loop's sampler; hard-set questions
     dropped as the loop drops them);
  2. they are split into 2 datasets both ways with the loop's `teacher.split_items`: random (sampling
     order, i.i.d.: the paper's) and length (shortest n | longest n);
  3. one student per dataset trains from the base model with the student defaults for --steps steps
     (sft-rlvr), and is scored on the same |Q_R| hard-train questions with `reward.metric` (expert-logprob
     by default: the dense metric these students move);
  4. the gap R_1 - R_0 between the two datasets of each split, with its paired standard error over the
     reward questions, and each dataset's share of items at or above --hard-level (the domain's level).
A gap inside its standard error is noise the teacher's update follows; a gap of many standard errors,
the same sign across seeds, is a direction the teacher can learn. Baseline in the same run: the random split.

    OMP_NUM_THREADS=1 python bench/dataset_split.py [--seeds 2 --items 2880 --steps 50]
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

from soar_agent.hard_sets import load_problem_file, shipped_hard_set
from soar_agent.students import without_questions  # noqa: E402
from soar_agent.config import load_config  # noqa: E402
from soar_agent.reward import mean_with_stderr, paired_reward, question_scores  # noqa: E402
from soar_agent.store import content_hash  # noqa: E402
from soar_agent.tasks import get_domain  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", default="arith")
    parser.add_argument("--seeds", type=int, default=2, help="repetitions (fresh items, fresh training seeds)")
    parser.add_argument("--items", type=int, default=2880, help="n: items per dataset")
    parser.add_argument("--steps", type=int, default=50, help="student steps")
    parser.add_argument("--metric", default="expert-logprob", help="reward.metric")
    parser.add_argument("--questions", type=int, default=64, help="|Q_R|")
    parser.add_argument("--hard-level", type=int, default=4, help="report each dataset's share at this level or up")
    parser.add_argument("--out", default=None, help="write the raw figures as JSON here")
    args = parser.parse_args()

    import torch

    from soar_agent.engine import HFEngine
    from soar_agent.models import load_model, load_tokenizer
    from soar_agent.rl import trainer
    from soar_agent.teacher import sample_items, split_items

    torch.set_num_threads(1)
    cfg = load_config(None, [f"domain.name={json.dumps(args.domain)}", f"reward.metric={json.dumps(args.metric)}",
                             f"student.steps={args.steps}", f"teacher.items_per_dataset={args.items}",
                             "teacher.datasets_per_step=2"])
    domain = get_domain(args.domain)
    tokenizer = load_tokenizer(cfg.model.path)
    hard = {split: load_problem_file(shipped_hard_set(domain.NAME, split), domain) for split in ("train", "test")}
    forbidden = {content_hash(p.domain, p.question) for split in hard.values() for p in split}
    questions = random.Random(99).sample(hard["train"], min(args.questions, len(hard["train"])))

    def scores(model):
        return question_scores(model, tokenizer, domain, questions, args.metric, samples=cfg.reward.samples,
                               seed=55, temperature=cfg.student.temperature, max_new_tokens=cfg.eval.max_new_tokens)

    base = load_model(cfg.model.path, cfg.model.dtype)
    before = scores(base)
    started, results = time.time(), []
    for seed in range(args.seeds):
        items, _ = sample_items(HFEngine(base, tokenizer), domain, 2 * args.items, cfg.teacher, seed=1000 + seed)
        for split in ("random", "length"):
            row = {"seed": seed, "split": split, "datasets": []}
            for k, chunk in enumerate(split_items(items, 2, split)):
                problems = without_questions([item.problem for item in chunk], forbidden)
                # the trainer trains a copy: the base model is never mutated
                student, _ = trainer(cfg.student.backend)(base, tokenizer, problems, domain, cfg.student,
                                                          steps=args.steps, seed=10 * seed + k)
                after = scores(student)
                reward, error = paired_reward(before, after)
                hard_share = sum((p.level or 0) >= args.hard_level for p in problems) / len(problems)
                row["datasets"].append({"reward": reward, "stderr": error, "hard_share": hard_share,
                                        "question_chars": statistics.fmean(len(p.question) for p in problems),
                                        "differences": [a - b for a, b in zip(after, before)]})
            # paired over the reward questions: the two students' per-question differences
            gap, gap_error = mean_with_stderr([b - a for a, b in zip(row["datasets"][0]["differences"],
                                                                      row["datasets"][1]["differences"])])
            row.update(gap=gap, gap_stderr=gap_error)
            results.append(row)
            d0, d1 = row["datasets"]
            print(f"seed {seed} {split:>6}: R_0 {d0['reward']:+.4f} +- {d0['stderr']:.4f} "
                  f"(L>={args.hard_level} {d0['hard_share']:.2f}, {d0['question_chars']:.1f} chars) | "
                  f"R_1 {d1['reward']:+.4f} +- {d1['stderr']:.4f} (L>={args.hard_level} {d1['hard_share']:.2f}, "
                  f"{d1['question_chars']:.1f} chars) | gap {gap:+.4f} +- {gap_error:.4f}  "
                  f"({time.time() - started:.0f}s)", flush=True)
    print(f"\n{args.domain}, 2 x {args.items} teacher items per seed, {args.seeds} seeds, {args.steps}-step "
          f"{cfg.student.backend} students from base, |Q_R| = {len(questions)}, {args.metric}")
    for split in ("random", "length"):
        gaps = [r["gap"] for r in results if r["split"] == split]
        errors = [r["gap_stderr"] for r in results if r["split"] == split]
        print(f"  {split:>6}: |gap| {statistics.fmean(abs(g) for g in gaps):.4f} (per seed "
              + ", ".join(f"{g:+.4f}" for g in gaps) + f"), paired stderr {statistics.fmean(errors):.4f}: "
              f"|gap| / stderr {statistics.fmean(abs(g) for g in gaps) / statistics.fmean(errors):.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
