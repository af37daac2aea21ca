"""Our student step against TRL's RLOOTrainer and GRPOTrainer, on the shipped model, in one run.

Same prompts (arith generator problems at the student_learns training levels, the same shuffled order),
same group size, prompts per step, completion budget, temperature, learning rate (constant, AdamW), KL
coefficient, clip range and token-level loss; CPU, float32, no gradient checkpointing, one torch thread
per arm (the machine's other core stays free for the math verifier and the OS). Each arm trains for
`--steps` optimizer steps from the same weights. Printed per arm: seconds per step, sampled tokens/s, the
mean train reward over the first and last windows of steps, and the mean train reward of the steps each
arm finished within the fastest arm's total time (equal wall time). Then the ratios ours / TRL for
steps/s and tokens/s.

    pip install -c constraints-cpu.txt '.[bench]'     # trl
    python bench/vs_trl.py                             # 12 steps per arm, 2 runs each, the [student] defaults
    python bench/vs_trl.py --steps 30 --set student.batch_prompts=4

Figures rest on `--steps` steps x batch_prompts x group_size completions per arm, one seed: a reward
difference below about 2/sqrt(completions) is noise.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import time

import torch

from soar_agent.config import RunConfig, apply_overrides
from soar_agent.evaluation import score
from soar_agent.models import load_model, load_tokenizer
from soar_agent.rl import trainer
from soar_agent.tasks import generate_problems, get_domain

LEVELS = (3, 4, 5)


def ours(backend: str, problems, domain, cfg, steps: int, seed: int) -> list[dict]:
    """Our student (`rloo` or `grpo`): per step (seconds since start, reward mean, sampled tokens)."""
    model, tokenizer = load_model("default", "float32", device="cpu"), load_tokenizer("default")
    cfg = dataclasses.replace(cfg, backend=backend)
    records: list[dict] = []
    started = time.perf_counter()

    def log(record: dict) -> None:
        records.append({"t": time.perf_counter() - started, "reward": record["reward_mean"],
                        "tokens": record["completion_length"] * cfg.batch_prompts * cfg.group_size})

    trainer(backend)(model, tokenizer, problems, domain, cfg, steps=steps, seed=seed, log=log)
    return records


def trl_arm(kind: str, problems, domain, cfg, steps: int, seed: int) -> list[dict]:
    """TRL's RLOOTrainer or GRPOTrainer with the same settings: per step as `ours`."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    model, tokenizer = load_model("default", "float32", device="cpu"), load_tokenizer("default")
    tokenizer.padding_side = "left"
    by_prompt = {domain.student_prompt(p.question): p for p in problems}
    order = [domain.student_prompt(p.question) for p in problems]
    dataset = Dataset.from_dict({"prompt": order})

    def correct(prompts, completions, **_) -> list[float]:
        return [1.0 if ok else 0.0 for ok in score(domain, [by_prompt[p] for p in prompts], completions)]

    common = dict(output_dir="/tmp/soar-vs-trl", use_cpu=True, bf16=False, gradient_checkpointing=False,
                  report_to="none", save_strategy="no", logging_steps=1, max_steps=steps, seed=seed,
                  learning_rate=cfg.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                  max_grad_norm=cfg.grad_clip, per_device_train_batch_size=cfg.batch_prompts * cfg.group_size,
                  num_generations=cfg.group_size, steps_per_generation=1, num_iterations=1,
                  max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature, top_p=1.0,
                  beta=cfg.kl_coef, epsilon=cfg.eps_low, epsilon_high=cfg.eps_high, disable_dropout=True,
                  shuffle_dataset=False, dataloader_num_workers=0, disable_tqdm=True, log_level="error")
    if kind == "grpo":
        args, cls = GRPOConfig(**common, loss_type="dapo"), GRPOTrainer  # dapo = token-level, as ours
    else:
        args, cls = RLOOConfig(**common), RLOOTrainer
    records: list[dict] = []
    started: list[float] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            started.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                length = logs.get("completions/mean_length", 0.0)
                records.append({"t": time.perf_counter() - started[0], "reward": logs["reward"],
                                "tokens": length * cfg.batch_prompts * cfg.group_size})

    from transformers.trainer_callback import PrinterCallback

    run = cls(model=model, reward_funcs=correct, args=args, train_dataset=dataset, processing_class=tokenizer,
              callbacks=[Timer()])
    run.remove_callback(PrinterCallback)  # its per-step dict would drown the table
    run.train()
    return records


def summary(records: list[dict], horizon: float, window: int) -> dict:
    seconds = records[-1]["t"]
    return {"s/step": seconds / len(records), "steps/s": len(records) / seconds,
            "tokens/s": sum(r["tokens"] for r in records) / seconds,
            "first": statistics.fmean(r["reward"] for r in records[:window]),
            "last": statistics.fmean(r["reward"] for r in records[-window:]),
            "at equal time": statistics.fmean([r["reward"] for r in records if r["t"] <= horizon] or [float("nan")])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--pool", type=int, default=256, help="problems, spread over levels 3-5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", default="ours-rloo,trl-rloo,ours-grpo,trl-grpo")
    parser.add_argument("--repeats", type=int, default=2, help="runs per arm, in alternating order")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="[student] override")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = apply_overrides(RunConfig(), args.set).student
    domain = get_domain("arith")
    problems = generate_problems(domain, [LEVELS[i % len(LEVELS)] for i in range(args.pool)], random.Random(args.seed))
    print(f"{args.steps} steps x {cfg.batch_prompts} prompts x {cfg.group_size} completions, max {cfg.max_new_tokens}"
          f" tokens, lr {cfg.lr}, kl {cfg.kl_coef}, temperature {cfg.temperature}, torch threads 1", flush=True)
    arms = args.arms.split(",")
    runs: dict[str, list[list[dict]]] = {arm: [] for arm in arms}
    for repeat in range(args.repeats):  # A B C D, then D C B A: drift in the machine's load hits every arm
        for arm in (arms if repeat % 2 == 0 else arms[::-1]):
            side, kind = arm.split("-")
            run = ours if side == "ours" else trl_arm
            runs[arm].append(run(kind, problems, domain, cfg, args.steps, args.seed))
            print(f"  {arm}: {runs[arm][-1][-1]['t']:.0f}s for {len(runs[arm][-1])} steps", flush=True)
    horizon = min(records[-1]["t"] for repeats in runs.values() for records in repeats)
    window = max(1, args.steps // 4)
    rows = {arm: {key: statistics.fmean(summary(records, horizon, window)[key] for records in repeats)
                  for key in ("s/step", "steps/s", "tokens/s", "first", "last", "at equal time")}
            for arm, repeats in runs.items()}
    print(f"\n{'arm':<10} {'s/step':>7} {'tokens/s':>9} {'reward first':>13} {'last':>6} "
          f"{'at ' + format(horizon, '.0f') + 's':>9}   (means over {args.repeats} runs per arm)")
    for arm, row in rows.items():
        print(f"{arm:<10} {row['s/step']:7.1f} {row['tokens/s']:9.0f} {row['first']:13.3f} {row['last']:6.3f} "
              f"{row['at equal time']:9.3f}")
    for kind in ("rloo", "grpo"):
        if f"ours-{kind}" in rows and f"trl-{kind}" in rows:
            a, b = rows[f"ours-{kind}"], rows[f"trl-{kind}"]
            print(f"{kind}: ours / TRL steps/s {a['steps/s'] / b['steps/s']:.2f}x, tokens/s "
                  f"{a['tokens/s'] / b['tokens/s']:.2f}x (goal: steps/s >= 1.5x at equal learning)")


if __name__ == "__main__":
    main()
