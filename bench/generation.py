"""Tokens/s of soar's HFEngine against transformers' `model.generate`, one prompt at a time and batched.

All three sample the same student prompts (mixed arith/program levels) on the shipped model at T=1.0 in
one process, so the ratios on the last line are comparable even on a noisy machine.

    python bench/generation.py [--prompts 64] [--max-new-tokens 300] [--batch 64]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from soar_agent.engine import HFEngine
from soar_agent.models import load_model, load_tokenizer
from soar_agent.tasks import generate_problems, get_domain


def prompts_for(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    prompts = []
    for name in ("arith", "program"):
        domain = get_domain(name)
        levels = [rng.choice(domain.LEVELS) for _ in range(count // 2)]
        prompts += [domain.student_prompt(p.question) for p in generate_problems(domain, levels, rng)]
    return prompts


def generated_tokens(rows: torch.Tensor, prompt_width: int, eos_id: int, pad_id: int) -> int:
    """Tokens up to and excluding the first EOS of each row (what a user gets back)."""
    total = 0
    for row in rows[:, prompt_width:].tolist():
        row = [t for t in row if t != pad_id]
        total += row.index(eos_id) if eos_id in row else len(row)
    return total


def hf_generate(model, tokenizer, prompts: list[str], batch: int, max_new_tokens: int) -> tuple[int, float]:
    tokens, started = 0, time.perf_counter()
    for begin in range(0, len(prompts), batch):
        chunk = prompts[begin:begin + batch]
        encoded = tokenizer(chunk, return_tensors="pt", padding=True)
        with torch.inference_mode():
            rows = model.generate(**encoded, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                  max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=tokenizer.eos_token_id)
        tokens += generated_tokens(rows, encoded.input_ids.shape[1], tokenizer.eos_token_id, tokenizer.pad_token_id)
    return tokens, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--naive-prompts", type=int, default=16, help="one-at-a-time is slow: fewer prompts")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=300)
    args = parser.parse_args()

    torch.manual_seed(0)
    tokenizer, model = load_tokenizer(args.model), load_model(args.model)
    model.eval()
    prompts = prompts_for(args.prompts, seed=0)
    hf_generate(model, tokenizer, prompts[:4], 4, 8)  # warm-up

    naive_tokens, naive_s = hf_generate(model, tokenizer, prompts[:args.naive_prompts], 1, args.max_new_tokens)
    batched_tokens, batched_s = hf_generate(model, tokenizer, prompts, args.batch, args.max_new_tokens)
    engine = HFEngine(model, tokenizer, max_batch_size=args.batch)
    engine.generate(prompts, n=1, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    engine_rate = engine.stats.tokens_per_second

    naive_rate, batched_rate = naive_tokens / naive_s, batched_tokens / batched_s
    print(f"naive model.generate (1 prompt at a time): {naive_tokens} tokens in {naive_s:.1f}s = {naive_rate:.0f} tok/s")
    print(f"batched model.generate (batch {args.batch}):      {batched_tokens} tokens in {batched_s:.1f}s = "
          f"{batched_rate:.0f} tok/s")
    print(f"soar HFEngine (batch {args.batch}):               {engine.stats.tokens} tokens in "
          f"{engine.stats.seconds:.1f}s = {engine_rate:.0f} tok/s")
    print(f"ratios: engine/naive {engine_rate / naive_rate:.1f}x  engine/batched {engine_rate / batched_rate:.2f}x  "
          f"batched/naive {batched_rate / naive_rate:.1f}x")


if __name__ == "__main__":
    main()
