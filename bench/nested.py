"""Nested-ReFT (`student.backend = "nested"`): what skipping layers buys in rollout speed, and what it costs.

1. Rollout tokens/s of the full model against the model with `round(ratio * L)` middle layers skipped, on
   the shipped 4-layer model and on a deep narrow fixture (16 layers, built here from the shipped
   tokenizer with random weights: its tokens/s is what matters, not its text). The same prompts, group
   size and token budget, full and skipped runs interleaved, a fresh set of skipped layers per repeat
   (as the trainer draws per batch). Also the off-policyness of the skipped model on its own samples:
   the mean log-ratio log pi_full - log pi_skipped per token and the effective sample size of the raw and
   the truncated (C = 2) importance weights.
2. Seconds per training step on the deep fixture, rloo against nested (rollout, behaviour pass, update).
3. Accuracy after equal wall time on the shipped model: base, rloo and nested trained by
   bench/backends.py's `train_and_evaluate` (same problems, probe steps, budget, evaluation), run in
   parallel worker processes while 1 and 2 are measured. Training problems: fresh generator problems of
   --train-levels (default 3,4,5, where the shipped model earns rewards; "" = the hard-train set, where it
   earns almost none); the train reward is the accuracy of the training rollouts.

    python bench/nested.py                       # 3 minutes of training per backend
    python bench/nested.py --minutes 0           # speed only
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEEP_SHAPE = dict(hidden_size=96, intermediate_size=256, num_hidden_layers=16, num_attention_heads=4,
                  max_position_embeddings=512)


def rollout_speed(model, tokenizer, prompts: list[str], ratio: float, n: int, max_new_tokens: int, repeats: int,
                  seed: int) -> dict:
    """Tokens/s full vs skipped (interleaved repeats), mean completion length, and off-policyness."""
    import torch

    from soar_agent.engine import HFEngine
    from soar_agent.rl.nested import choose_skipped, decoder_layers, effective_sample_size, skipping
    from soar_agent.rl.train import sequence_logprobs

    engine = HFEngine(model, tokenizer)
    layers = len(decoder_layers(model)[1])
    rng = random.Random(seed)
    rates: dict[str, list[float]] = {"full": [], "skipped": []}
    lengths: dict[str, list[float]] = {"full": [], "skipped": []}
    log_ratios = []
    for repeat in range(repeats):
        skipped = choose_skipped(layers, ratio, rng)
        for arm, skip in (("full", ()), ("skipped", skipped)):
            with skipping(model, skip):
                started = time.perf_counter()
                outputs = engine.generate(prompts, n=n, temperature=1.0, max_new_tokens=max_new_tokens,
                                          seed=seed + repeat)
                seconds = time.perf_counter() - started
            tokens = [len(c.token_ids) for row in outputs for c in row]
            rates[arm].append(sum(tokens) / seconds)
            lengths[arm].append(sum(tokens) / len(tokens))
            if arm == "skipped":
                prompt_ids = [tokenizer(p)["input_ids"] for p in prompts for _ in range(n)]
                completion_ids = [c.token_ids or [tokenizer.eos_token_id] for row in outputs for c in row]
                with torch.no_grad():
                    full, mask, _ = sequence_logprobs(model, prompt_ids, completion_ids, tokenizer.pad_token_id)
                    with skipping(model, skipped):
                        behaviour, _, _ = sequence_logprobs(model, prompt_ids, completion_ids, tokenizer.pad_token_id)
                log_ratios.append((full - behaviour)[mask])
    log_ratio = torch.cat(log_ratios)
    ones = torch.ones_like(log_ratio, dtype=torch.bool)
    return {"layers": layers, "skipped": len(skipped), "full": statistics.median(rates["full"]),
            "skip": statistics.median(rates["skipped"]), "full_len": statistics.mean(lengths["full"]),
            "skip_len": statistics.mean(lengths["skipped"]), "log_ratio": log_ratio.mean().item(),
            "ess_raw": effective_sample_size(log_ratio, ones),
            "ess_trunc": effective_sample_size(torch.log(log_ratio.exp().clamp(max=2.0)), ones)}


def step_seconds(model, tokenizer, ratio: float, steps: int, seed: int) -> dict:
    """Seconds per training step and rollout tokens/s, rloo vs nested, on a reward any model can earn."""
    from soar_agent.config import StudentSection
    from soar_agent.rl import trainer
    from soar_agent.tasks import arith

    problems = [arith.generate(level, random.Random(seed + level)) for level in (2, 3, 4, 5)]

    def even_share(problems, completions):
        return [sum(ord(ch) % 2 == 0 for ch in text) / max(1, len(text)) for text in completions]

    figures = {}
    for backend in ("rloo", "nested"):
        cfg = StudentSection(backend=backend, nested_skip_ratio=ratio, batch_prompts=4, group_size=8,
                             max_new_tokens=128, steps=steps)
        started = time.perf_counter()
        _, metrics = trainer(backend)(model, tokenizer, problems, arith, cfg, reward_fn=even_share, seed=seed)
        figures[backend] = ((time.perf_counter() - started) / steps, metrics.tokens_per_second)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-ratio", type=float, default=0.25, help="shipped 4-layer model (0.25 = 1 layer)")
    parser.add_argument("--deep-skip-ratio", type=float, default=0.5, help="deep fixture (0.5 of 16 = 8 layers)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=8, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=3, help="deep fixture: steps per backend for s/step")
    parser.add_argument("--minutes", type=float, default=3.0,
                        help="shipped model: training budget per backend (0 = skip the accuracy part)")
    parser.add_argument("--train-levels", default="3,4,5", help='training problems\' levels ("" = hard-train)')
    parser.add_argument("--train-per-level", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--per-level", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pool = None
    if args.minutes > 0:  # start the long accuracy runs first; the speed figures are measured meanwhile
        import backends

        overrides = [f"student.nested_skip_ratio={args.skip_ratio}"]
        options = {"steps": 0, "train_levels": [int(v) for v in args.train_levels.split(",") if v],
                   "train_per_level": args.train_per_level, "eval_every": 0, "train_k": 0}
        jobs = [(b, args.minutes, args.k, args.per_level, args.seed, overrides, options)
                for b in ("base", "rloo", "nested")]
        pool = ProcessPoolExecutor(max_workers=args.workers)
        accuracy = pool.map(backends.train_and_evaluate, jobs)

    import torch

    torch.set_num_threads(1)
    from soar_agent.models import TinyShape, build_tiny_model, load_model, load_tokenizer
    from soar_agent.tasks import arith

    tokenizer = load_tokenizer("default")
    shipped = load_model("default").eval()
    deep = build_tiny_model(tokenizer, TinyShape(**DEEP_SHAPE), seed=args.seed).eval()
    rng = random.Random(args.seed)
    prompts = [arith.student_prompt(arith.generate(rng.choice((3, 4, 5)), rng).question) for _ in range(args.prompts)]
    print(f"rollouts: {args.prompts} prompts x {args.n}, T=1, max_new_tokens {args.max_new_tokens}, median of "
          f"{args.repeats} interleaved repeats (a fresh skipped set each), one torch thread")
    print(f"{'model':18s} {'skipped':>8s} {'full tok/s':>10s} {'skip tok/s':>10s} {'speedup':>8s} "
          f"{'len full/skip':>14s} {'log-ratio':>9s} {'ESS raw':>8s} {'ESS C=2':>8s}")
    for name, model, ratio in (("shipped (4 layers)", shipped, args.skip_ratio),
                               ("deep (16, random)", deep, args.deep_skip_ratio)):
        r = rollout_speed(model, tokenizer, prompts, ratio, args.n, args.max_new_tokens, args.repeats, args.seed)
        print(f"{name:18s} {r['skipped']:>4d}/{r['layers']:<3d} {r['full']:10.0f} {r['skip']:10.0f} "
              f"{r['skip'] / r['full']:7.2f}x {r['full_len']:6.1f}/{r['skip_len']:<7.1f} {r['log_ratio']:9.3f} "
              f"{r['ess_raw']:8.3f} {r['ess_trunc']:8.3f}")
    figures = step_seconds(deep, tokenizer, args.deep_skip_ratio, args.train_steps, args.seed)
    (rloo_s, rloo_tps), (nested_s, nested_tps) = figures["rloo"], figures["nested"]
    print(f"deep fixture training, {args.train_steps} steps of 4 prompts x 8, 128 tokens: rloo {rloo_s:.2f} s/step "
          f"({rloo_tps:.0f} rollout tok/s), nested (ratio {args.deep_skip_ratio}) {nested_s:.2f} s/step "
          f"({nested_tps:.0f} rollout tok/s): {rloo_s / nested_s:.2f}x steps per second")

    if pool is None:
        return
    rows = list(accuracy)
    pool.shutdown()
    key = f"hard_pass@{args.k}"
    print(f"\nshipped model, equal wall time ({args.minutes:g} min per backend, nested skip ratio {args.skip_ratio}), "
          f"{rows[0]['train_problems']} training problems "
          f"({'levels ' + args.train_levels if args.train_levels else 'hard-train'}); hard-test "
          f"{rows[0]['hard_problems']} problems x {args.k}; greedy on {args.per_level} fresh problems per level")
    print(f"{'backend':8s} {'steps':>5s} {'updates':>7s} {'train reward first->last 10':>28s} {'pass@1':>8s} "
          f"{f'pass@{args.k}':>8s} {'greedy L3 / L4 / L5 / L6':>26s} {'rollout tok/s':>13s}")
    for row in rows:
        train = f"{row['train_reward_first']:.3f} -> {row['train_reward_last']:.3f}" if "steps" in row else ""
        levels = " / ".join(f"{v:.2f}" for v in row["greedy_by_level"].values())
        print(f"{row['backend']:8s} {row.get('steps', ''):>5} {row.get('updates', ''):>7} {train:>28s} "
              f"{row['hard_pass@1']:8.4f} {row[key]:8.4f} {levels:>26s} "
              f"{row.get('rollout_tokens_per_second', 0):13.0f}")


if __name__ == "__main__":
    main()
