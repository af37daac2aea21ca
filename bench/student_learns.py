"""Does the student RL core make the shipped model better at what it trains on? A check that can fail.

RL (the run's [student] settings and backend: `--set student.backend='"srl"'`) on a fixed curriculum drawn from one built-in
domain's generator at the training levels, then greedy accuracy and pass@1 per level on fresh problems
(other seeds than the curriculum) before and after, and the train-reward curve in windows of 10 steps.
The last line says PASS or FAIL against the issue's bar: the mean greedy rise over the trained levels is
at least `--min-rise` points and no easy level (below the trained ones) drops by more than its noise.
The column "pass@1 where greedy wrong" is the sampled accuracy on the problems greedy decoding fails: the
answers outcome RL can reinforce there, so the room greedy accuracy has to rise without new skill.

    python bench/student_learns.py                       # arith, defaults (about 10 minutes on 2 cores)
    python bench/student_learns.py --domain program --levels 2,3,4
    python bench/student_learns.py --set student.lr=1e-5 --set student.group_size=16 --json

Figures rest on `--per-level` problems per level (greedy; +-1 problem is 100/per-level points) and
`--samples` samples each for pass@1. Use one torch thread per process when running several side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time

import torch

from soar_agent.config import RunConfig, apply_overrides
from soar_agent.engine import HFEngine
from soar_agent.evaluation import evaluate_problems, summarize
from soar_agent.models import load_model, load_tokenizer
from soar_agent.rl import trainer
from soar_agent.rl.sft import problems_drawn
from soar_agent.tasks import generate_problems, get_domain

TRAIN_LEVELS = {"arith": (3, 4, 5), "program": (2, 3, 4)}


def level_profile(model, tokenizer, domain, problems, samples: int, max_new_tokens: int, seed: int) -> dict:
    results = evaluate_problems(HFEngine(model, tokenizer), domain, problems, samples=samples, greedy=True,
                                max_new_tokens=max_new_tokens, seed=seed)
    levels = summarize(results, [1] if samples else [])["levels"]
    for level, row in levels.items() if samples else ():
        # Sampled accuracy on the problems greedy decoding gets wrong: outcome RL can only reinforce answers it
        # samples, so greedy accuracy rises where this is high enough for the right answer to become the mode.
        wrong = [r for r in results if str(r.problem.level) == level and not r.greedy_correct]
        row["pass@1_greedy_wrong"] = sum(r.correct for r in wrong) / (samples * len(wrong)) if wrong else None
    return levels


class StudentEngine(HFEngine):
    """An HFEngine that samples from the student itself (as the default one does) and keeps a handle on it,
    so `--eval-every` can measure the student in the middle of training."""

    def load_weights(self, model) -> None:
        self.model = model


def profile_line(levels: dict) -> str:
    return "  ".join(f"L{level} greedy {row['greedy_acc']:.3f}"
                     + (f" pass@1 {row['pass@1']:.3f}" if "pass@1" in row else "") for level, row in levels.items())


def fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def windows(values: list[float], size: int = 10) -> list[float]:
    return [sum(values[i:i + size]) / len(values[i:i + size]) for i in range(0, len(values), size)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", default="arith", choices=sorted(TRAIN_LEVELS))
    parser.add_argument("--levels", default=None, help="training levels, comma-separated (default: mid levels)")
    parser.add_argument("--eval-levels", default="1,2,3,4,5,6")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps (default sized to ~10 min of training on 2 cores: 500 for sft-rlvr,"
                             " whose supervised steps sample nothing, 100 for the RL backends)")
    parser.add_argument("--pool", type=int, default=None,
                        help="curriculum size (problems, spread over the levels; default: what the steps draw, steps x"
                             " batch prompts (sft-rlvr: x group size on its supervised steps), so each problem is"
                             " trained on once: a recycled small pool lifts the train reward, not"
                             " held-out accuracy, bench/README.md)")
    parser.add_argument("--per-level", type=int, default=100, help="fresh evaluation problems per level")
    parser.add_argument("--samples", type=int, default=4, help="samples per evaluation problem for pass@1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=0, metavar="N",
                        help="also print greedy and pass@1 per level every N steps (long runs)")
    parser.add_argument("--min-rise", type=float, default=0.10, help="required mean greedy rise on trained levels")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    cfg = apply_overrides(RunConfig(), args.set)
    if args.steps is None:
        args.steps = 500 if cfg.student.backend == "sft-rlvr" else 100
    if args.eval_every and cfg.student.backend not in ("rloo", "grpo"):
        parser.error(f"--eval-every: student.backend {cfg.student.backend!r} samples with an engine of its own;"
                     " the bench can measure mid-run only with rloo or grpo")
    domain = get_domain(args.domain)
    train_levels = [int(x) for x in args.levels.split(",")] if args.levels else list(TRAIN_LEVELS[args.domain])
    eval_levels = [int(x) for x in args.eval_levels.split(",")]
    tokenizer = load_tokenizer(cfg.model.path)
    base = load_model(cfg.model.path, cfg.model.dtype)
    if cfg.model.lora:
        from soar_agent.models import add_lora

        base = add_lora(base, cfg.model.lora_rank, cfg.model.lora_alpha, cfg.model.lora_dropout)
    pool = args.pool or problems_drawn(cfg.student, args.steps)
    curriculum = generate_problems(domain, [train_levels[i % len(train_levels)] for i in range(pool)],
                                   random.Random(args.seed))
    held_out = generate_problems(domain, [lv for lv in eval_levels for _ in range(args.per_level)],
                                 random.Random(10_000 + args.seed))
    train_questions = {p.question for p in curriculum}
    held_out = [p for p in held_out if p.question not in train_questions]  # fresh problems only
    for level in eval_levels:  # a large curriculum covers much of a small level's problem space
        left = sum(p.level == level for p in held_out)
        if not left:
            parser.error(f"--eval-levels: every level-{level} evaluation problem repeats a curriculum question;"
                         " use a smaller --pool or leave the level out")
        if left < args.per_level and not args.json:
            print(f"level {level}: {args.per_level - left} of {args.per_level} evaluation problems repeat curriculum"
                  f" questions and are left out ({left} remain)", flush=True)
    started = time.time()
    before = level_profile(base, tokenizer, domain, held_out, args.samples, cfg.eval.max_new_tokens, args.seed)
    curve: list[float] = []
    sft_losses: list[float] = []
    engine = StudentEngine(base, tokenizer)
    engine_argument = {"engine": engine} if args.eval_every else {}  # only train_student takes an engine
    milestones = []

    def log(record: dict) -> None:
        curve.append(record["reward_mean"])
        if record.get("phase") == "sft":  # sft-rlvr's supervised steps sample nothing: their figure is the NLL
            sft_losses.append(record["loss"])
            line = f"expert NLL (last 10) {sum(sft_losses[-10:]) / 10:.4f} nats/token"
        else:
            line = (f"train reward (last 10) {sum(curve[-10:]) / 10:.3f}  entropy {record['entropy']:.3f}  "
                    f"zero-std groups {record['zero_std_fraction']:.2f}")
        if not args.json and len(curve) % 10 == 0:
            print(f"  step {len(curve):4d}: {line}", flush=True)
        if args.eval_every and len(curve) % args.eval_every == 0 and len(curve) < args.steps:
            profile = level_profile(engine.model, tokenizer, domain, held_out, args.samples, cfg.eval.max_new_tokens,
                                    args.seed)
            milestones.append({"step": len(curve), "levels": profile})
            if not args.json:
                print(f"  step {len(curve):4d}: " + profile_line(profile), flush=True)

    if not args.json:
        print("  before:    " + profile_line(before), flush=True)
    train_started = time.time()
    student, metrics = trainer(cfg.student.backend)(base, tokenizer, curriculum, domain, cfg.student, steps=args.steps,
                                     seed=args.seed, log=log, **engine_argument)
    train_seconds = time.time() - train_started
    after = level_profile(student, tokenizer, domain, held_out, args.samples, cfg.eval.max_new_tokens, args.seed)

    rows = []
    for level in eval_levels:
        b, a = before[str(level)], after[str(level)]
        rows.append({"level": level, "problems": b["problems"], "trained": level in train_levels,
                     "greedy_before": b["greedy_acc"], "greedy_after": a["greedy_acc"],
                     "pass1_before": b.get("pass@1"), "pass1_after": a.get("pass@1"),
                     "pass1_greedy_wrong_before": b.get("pass@1_greedy_wrong"),
                     "pass1_greedy_wrong_after": a.get("pass@1_greedy_wrong")})
    trained = [r for r in rows if r["trained"]]
    rise = sum(r["greedy_after"] - r["greedy_before"] for r in trained) / len(trained)
    easy = [r for r in rows if r["level"] < min(train_levels)]
    # an easy level "drops" when it loses more than two standard errors of its own measurement
    drops = [r["level"] for r in easy
             if r["greedy_after"] < r["greedy_before"] - 2 * math.sqrt(max(r["greedy_before"] * (1 - r["greedy_before"]),
                                                                         1 / r["problems"]) / r["problems"])]
    passed = rise >= args.min_rise and not drops
    report = {"domain": args.domain, "train_levels": train_levels, "steps": args.steps, "pool": pool,
              "settings": {k: getattr(cfg.student, k) for k in ("lr", "batch_prompts", "group_size", "temperature",
                                                                "kl_coef", "loss_aggregation", "backend")} | {"lora": cfg.model.lora}
                          | ({"sft_share": cfg.student.sft_share, "sft_lr": cfg.student.sft_lr}
                             if cfg.student.backend == "sft-rlvr" else {}),
              "levels": rows, "trained_rise": rise, "easy_drops": drops,
              "reward_curve": windows([r for r in curve if not math.isnan(r)]), "sft_nll_curve": windows(sft_losses),
              "milestones": milestones,
              "train_seconds": train_seconds, "total_seconds": time.time() - started, "passed": passed}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"\n{args.domain}: {args.steps} steps on levels {train_levels} from {pool} curriculum problems, "
              f"{report['settings']}")
        print(f"{'level':>5} {'n':>4} {'greedy before':>14} {'after':>7} {'pass@1 before':>14} {'after':>7}"
              f" {'pass@1 where greedy wrong, before':>34} {'after':>7}")
        for r in rows:
            mark = "*" if r["trained"] else " "
            p1 = (f"{r['pass1_before']:14.3f} {r['pass1_after']:7.3f} {fraction(r['pass1_greedy_wrong_before']):>34}"
                  f" {fraction(r['pass1_greedy_wrong_after']):>7}" if r["pass1_before"] is not None else "")
            print(f"{r['level']:>4}{mark} {r['problems']:>4} {r['greedy_before']:14.3f} {r['greedy_after']:7.3f} {p1}")
        if sft_losses:
            print("expert NLL per 10 supervised steps: " + " ".join(f"{x:.4f}" for x in report["sft_nll_curve"]))
        print("train reward per 10 RL steps: " + " ".join(f"{x:.3f}" for x in report["reward_curve"]))
        print(f"training {train_seconds:.0f}s, total {report['total_seconds']:.0f}s")
        print(f"{'PASS' if passed else 'FAIL'}: mean greedy rise on trained levels {rise * 100:+.1f} points "
              f"(need {args.min_rise * 100:+.0f}); easy levels dropped: {drops or 'none'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
