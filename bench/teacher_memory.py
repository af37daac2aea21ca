"""Peak memory and time of one teacher update, all items in one pass against passes of TEACHER_MICRO_BATCH.

Each setting runs in its own process (peak RSS is per process), one torch thread, on the shipped model with
`--items` arith items split over two datasets (advantages +1 / -1), and prints peak RSS and seconds with the
ratio of the one-pass run to the micro-batched one (measured in the same run: these machines are noisy).

    python bench/teacher_memory.py                # 1,024 items (2 datasets of 512)
    python bench/teacher_memory.py --items 4096
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def one_update(micro_batch: int, count: int) -> dict:
    import random
    import resource
    import time

    import torch

    from soar_agent import teacher
    from soar_agent.models import load_model, load_tokenizer
    from soar_agent.tasks import arith

    torch.set_num_threads(1)
    tokenizer, model = load_tokenizer("default"), load_model("default", "float32")
    rng = random.Random(0)
    texts = [f"<question>{p.question}</question><answer>{p.answer}</answer>"
             for p in (arith.generate(rng.randint(1, 6), rng) for _ in range(count))]
    items = [teacher.TeacherItem(t, None, "", None, tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    started = time.perf_counter()
    stats = teacher.teacher_update(model, optimizer, tokenizer, arith, [items[:count // 2], items[count // 2:]],
                                   [1.0, 0.0], micro_batch=micro_batch)
    return {"peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "seconds": time.perf_counter() - started, "loss": stats["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1024)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # micro_batch, in a worker process
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(one_update(args.child, args.items)))
        return
    from soar_agent.teacher import TEACHER_MICRO_BATCH

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, micro_batch in (("one pass", args.items), (f"passes of {TEACHER_MICRO_BATCH}", TEACHER_MICRO_BATCH)):
        out = subprocess.run([sys.executable, __file__, "--items", str(args.items), "--child", str(micro_batch)],
                             capture_output=True, text=True, env=env, check=True).stdout
        runs[name] = json.loads(out.strip().splitlines()[-1])
        print(f"{name:>16}: peak RSS {runs[name]['peak_gb']:.2f} GB, {runs[name]['seconds']:.1f} s,"
              f" loss {runs[name]['loss']:.4f}", flush=True)
    whole, chunked = runs.values()
    print(f"one pass / micro-batched: memory {whole['peak_gb'] / chunked['peak_gb']:.1f}x,"
          f" time {whole['seconds'] / chunked['seconds']:.1f}x ({args.items} items; same loss:"
          f" {abs(whole['loss'] - chunked['loss']) < 1e-4})")


if __name__ == "__main__":
    main()
