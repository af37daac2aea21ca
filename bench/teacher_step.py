"""The teacher step's own compute, its sampling and its update, with the prompt run once for all its rows
(the product) against once per row (the baseline), in the same run, on the shipped model, one torch thread.

The teacher's prompt is 135 tokens and its items ~17: sampling 5,760 items prefilled the same prompt for
every row, and the update ran prompt + item per row. Now a batch prefills each distinct prompt once and copies
its cache rows (`engine.prefill_rows`), and an update whose rows share one prompt runs it once
(`rl.train.shared_prompt`). The baseline turns both off. Both ways sample the same items from the same seed
and take the same update from the same weights: the bench prints whether they agree, the seconds of each and
the ratio (rounds alternate: these machines are noisy).

    python bench/teacher_step.py                 # 1,024 samples, 2 rounds
    python bench/teacher_step.py --samples 2880 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time


@contextlib.contextmanager
def prompt_per_row():
    """The baseline: every row runs its own prompt, in sampling and in the update."""
    from soar_agent import engine
    from soar_agent.rl import train

    saved = engine.prefill_rows, train.shared_prompt
    engine.prefill_rows = lambda prompts: ([tuple(p) for p in prompts], list(range(len(prompts))))
    train.shared_prompt = lambda prompt_ids: None
    try:
        yield
    finally:
        engine.prefill_rows, train.shared_prompt = saved


def one_way(model, tokenizer, samples: int, seed: int) -> dict:
    import torch

    from soar_agent import teacher
    from soar_agent.engine import HFEngine
    from soar_agent.tasks import arith, teacher_prompt

    student = copy.deepcopy(model)
    started = time.perf_counter()
    (row,) = HFEngine(student, tokenizer).generate([teacher_prompt(arith)], n=samples, temperature=1.0,
                                                   max_new_tokens=128, stop=["</answer>"], seed=seed)
    sampled = time.perf_counter() - started
    items = [teacher.TeacherItem(c.text, None, "", None, list(c.token_ids)) for c in row]
    half = len(items) // 2
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.0)
    started = time.perf_counter()
    stats = teacher.teacher_update(student, optimizer, tokenizer, arith, [items[:half], items[half:]], [1.0, 0.0])
    updated = time.perf_counter() - started
    return {"sampling": sampled, "update": updated, "tokens": [c.token_ids for c in row], "loss": stats["loss"],
            "weights": torch.cat([p.detach().flatten() for p in student.parameters()])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1024, help="teacher samples a round (a step: ~7,000)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import torch

    from soar_agent.models import load_model, load_tokenizer

    torch.set_num_threads(1)
    tokenizer, model = load_tokenizer("default"), load_model("default", "float32")
    totals = {way: {"sampling": 0.0, "update": 0.0} for way in ("prompt per row", "prompt once")}
    for round_index in range(args.rounds):
        runs = {}
        for way in (("prompt per row", "prompt once") if round_index % 2 == 0 else ("prompt once", "prompt per row")):
            with prompt_per_row() if way == "prompt per row" else contextlib.nullcontext():
                runs[way] = one_way(model, tokenizer, args.samples, seed=round_index)
            for phase in ("sampling", "update"):
                totals[way][phase] += runs[way][phase]
            print(f"round {round_index + 1}, {way:>14}: sampling {runs[way]['sampling']:.1f} s, "
                  f"update {runs[way]['update']:.1f} s", flush=True)
        base, ours = runs["prompt per row"], runs["prompt once"]
        same_items = sum(a == b for a, b in zip(base["tokens"], ours["tokens"]))
        print(f"  the same items: {same_items} of {args.samples}; update loss {base['loss']:.5f} against "
              f"{ours['loss']:.5f}; largest weight difference after it "
              f"{(base['weights'] - ours['weights']).abs().max().item():.2e}")
    base, ours = totals["prompt per row"], totals["prompt once"]
    print(f"prompt per row / prompt once ({args.rounds} rounds of {args.samples} samples): sampling "
          f"{base['sampling'] / ours['sampling']:.2f}x, update {base['update'] / ours['update']:.2f}x, both "
          f"{(base['sampling'] + base['update']) / (ours['sampling'] + ours['update']):.2f}x")


if __name__ == "__main__":
    main()
