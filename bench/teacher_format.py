"""Does the teacher keep writing items that parse as it learns longer questions? (teacher.reject_penalty)

In every default run so far the teacher's longer half won its step (teacher.split = length; advantages of
+-0.07 to +-0.13), and the share of its samples that parse and fit arith's range fell by ~5 points a step:
67% at step 1, 36% at step 7 (the 8-hour night of 2026-12-03), which left the sampler short and the run
stopped as garbage. This bench replays that pressure without students, so it takes minutes: from the
shipped teacher, each step
  1. samples 2 x n items with the loop's sampler (`teacher.sample_items`, seeded per step),
  2. splits them by length (`teacher.split_items`) and gives the longer half the win by the step
     advantage the night measured (rewards [0, --gap], so A = -gap for the short half, +gap for the long),
  3. takes one teacher update (`teacher.teacher_update`, the loop's optimizer and learning rate), with the
     rejected samples penalised (teacher.reject_penalty = P) or not (P = 0: the paper's rejection sampling),
and prints per step the share of samples kept, the mean question length (characters) and the mean domain
level of the kept items: the penalty should hold the share while the questions still grow. Each arm starts
from the same teacher with the same seeds (paired); the first row is the shipped teacher itself.

    OMP_NUM_THREADS=1 python bench/teacher_format.py [--steps 6 --items 720 --penalties 0,1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soar_agent.config import load_config  # noqa: E402
from soar_agent.tasks import get_domain  # noqa: E402


def run_arm(penalty: float, args, cfg) -> list[dict]:
    import torch

    from soar_agent.engine import HFEngine
    from soar_agent.models import load_model, load_tokenizer
    from soar_agent.tasks.chat import for_model
    from soar_agent.teacher import sample_items, split_items, teacher_update

    tokenizer = load_tokenizer(cfg.model.path)
    teacher = load_model(cfg.model.path, cfg.model.dtype)
    optimizer = torch.optim.AdamW([p for p in teacher.parameters() if p.requires_grad], lr=cfg.teacher.lr,
                                  weight_decay=0.0)
    domain = for_model(get_domain(cfg.domain.name), tokenizer, cfg.model.chat_template)
    count = 2 * args.items
    rows = []
    for step in range(args.steps + 1):
        started = time.time()
        items, stats = sample_items(HFEngine(teacher, tokenizer), domain, count, cfg.teacher, seed=1000 + step)
        rejected = stats.pop("rejected_token_ids")
        levels = [i.problem.level for i in items if i.problem.level is not None]
        rows.append({"step": step, "kept": stats["accepted"] / stats["sampled"], "sampled": stats["sampled"],
                     "length": statistics.fmean(len(i.problem.question) for i in items),
                     "level": statistics.fmean(levels) if levels else None,
                     "unbalanced": stats["rejected"].get("unbalanced parentheses", 0) / stats["sampled"]})
        if step < args.steps:  # the last row measures the teacher after the last update
            datasets = split_items(items, 2, "length")
            update = teacher_update(teacher, optimizer, tokenizer, domain, datasets, [0.0, args.gap],
                                    cfg.student.grad_clip, rejected=rejected, reject_penalty=penalty)
            rows[-1]["rejected_in_update"] = update["rejected_items"]
        rows[-1]["seconds"] = time.time() - started
        print(json.dumps({"penalty": penalty, **{k: round(v, 4) if isinstance(v, float) else v
                                                  for k, v in rows[-1].items()}}), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="teacher updates per arm")
    parser.add_argument("--items", type=int, default=720, help="n: items per dataset (the loop's is 2,880)")
    parser.add_argument("--gap", type=float, default=0.1, help="R_long - R_short (the night's: 0.07 to 0.13)")
    parser.add_argument("--penalties", default="0,1", help="teacher.reject_penalty of each arm")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    cfg = load_config(None, [])
    arms = {float(p): run_arm(float(p), args, cfg) for p in args.penalties.split(",")}
    print(f"\n{2 * args.items} items a step (2 x {args.items}, split by length, the longer half winning by"
          f" {args.gap}); share of samples kept, mean question length, mean level of the kept items:")
    print("step  " + "  ".join(f"{'P=' + format(p, 'g'):>22s}" for p in arms))
    for step in range(args.steps + 1):
        cells = [arms[p][step] for p in arms]
        print(f"{step:4d}  " + "  ".join(f"{c['kept']:6.1%} {c['length']:6.1f} {c['level'] or 0:5.2f}   "
                                          for c in cells))
    base = next(iter(arms.values()))
    for p, rows in arms.items():
        print(f"P={p:g}: kept {rows[0]['kept']:.1%} -> {rows[-1]['kept']:.1%}, length {rows[0]['length']:.1f} ->"
              f" {rows[-1]['length']:.1f}; against P={next(iter(arms)):g} at the end: kept"
              f" {rows[-1]['kept'] / base[-1]['kept']:.2f}x, length {rows[-1]['length'] / base[-1]['length']:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({str(p): rows for p, rows in arms.items()}))


if __name__ == "__main__":
    main()
