"""How much can *any* student method lift the shipped model on a curriculum? Supervised fine-tuning on the
expert solutions of the same levels (pure signal, no exploration needed) is the ceiling an RL student
approaches from below in the same number of updates; when it does not move the model, RL cannot either.

The same curriculum levels and fresh evaluation problems as `student_learns.py` (greedy, per level),
before and after `--steps` AdamW updates of `--batch` expert solutions through the student's own loss
(`policy_step` with every advantage 1, no KL), with a linear warmup of `--warmup` steps.

The defaults are the measured ones (bench/README.md, "The shipped model has room"): 600 steps of 48 at lr
3e-4 lift the shipped model's arith L3 / L4 / L5 by +19 / +29 / +30 points; the earlier defaults (400 steps
of 16 at lr 1e-4) left it flat, which was misread as "no room".

    python bench/sft_ceiling.py                              # arith levels 3-5, lr 3e-4, 600 x 48 (~9 min)
    python bench/sft_ceiling.py --domain program --lr 3e-5 --steps 200
    python bench/sft_ceiling.py --model /tmp/tiny-stage1    # another checkpoint (student_learns: --set model.path=)
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from soar_agent.config import StudentSection
from soar_agent.models import clone_model, load_model, load_tokenizer
from soar_agent.rl.sft import expert_rows, nll_loss
from soar_agent.rl.train import policy_step
from soar_agent.tasks import generate_problems, get_domain

from student_learns import TRAIN_LEVELS, level_profile  # bench/ is on sys.path when run as a script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", default="arith", choices=sorted(TRAIN_LEVELS))
    parser.add_argument("--eval-levels", default="2,3,4,5")
    parser.add_argument("--per-level", type=int, default=100)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--model", default="default", help="model directory (default: the shipped model)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    domain, tokenizer, base = get_domain(args.domain), load_tokenizer(args.model), load_model(args.model)
    levels = TRAIN_LEVELS[args.domain]
    train = generate_problems(domain, list(levels) * (args.steps * args.batch // len(levels) + 1), random.Random(0))
    eval_levels = [int(x) for x in args.eval_levels.split(",")]
    evaluation = generate_problems(domain, [lv for lv in eval_levels for _ in range(args.per_level)],
                                   random.Random(10000))

    def profile(model) -> str:
        figures = level_profile(model, tokenizer, domain, evaluation, 0, 400, 0)
        return "  ".join(f"L{lv} {figures[str(lv)]['greedy_acc']:.2f}" for lv in eval_levels)

    print(f"{args.domain}: SFT on expert solutions of levels {levels}, lr {args.lr}, batch {args.batch}, "
          f"{args.steps} steps; greedy on {args.per_level} fresh problems per level")
    print(f"{'base':>10s}  {profile(base)}", flush=True)
    model = clone_model(base)
    model.eval()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    config, started = StudentSection(kl_coef=0.0), time.time()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
        batch = expert_rows(tokenizer, domain, train[step * args.batch:(step + 1) * args.batch])
        policy_step(model, optimizer, batch, torch.ones(args.batch), config, tokenizer.pad_token_id,
                    surrogate=lambda rows: nll_loss)
        if (step + 1) % max(1, args.steps // 4) == 0:
            print(f"{f'step {step + 1}':>10s}  {profile(model)}  ({time.time() - started:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
