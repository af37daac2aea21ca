"""Parallel students: teacher-step wall time with the step's student trainings as Ray tasks
(`run.workers = N`, one CPU and one torch thread each) against the serial loop (`run.workers = 1`, the
agent's own process with torch's default thread count), on the shipped model.

    python bench/parallel.py                      # 2 workers vs serial, 2 runs per arm, 2 teacher steps each
    python bench/parallel.py --workers 4 --runs 3 --set student.steps=8

Each run is a fresh `soar run --max-teacher-steps S` in a subprocess; the arms alternate (serial, ray,
serial, ray, ...) so drift in the machine's load hits both. The figure that matters for a night is the
steady-state step (every step after the first: Ray starts once, in the first step), read from the
store's step start and finish times. Prints each run, then the mean steady-state step time per arm and
the ratio serial / ray (> 1: Ray is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from soar_agent.store import Store

# a smaller step than the default (same shape: g datasets x r students), so a run takes minutes
SMALL_STEP = ["teacher.datasets_per_step=2", "student.students_per_dataset=2", "student.steps=4",
              "reward.questions=16", "eval.every_teacher_steps=1000", "eval.samples=1", "promotion.tau=-1.0"]


def step_seconds(db: Path) -> list[float]:
    with Store(db, readonly=True) as store:
        run = store.latest_run()
        steps = [s for s in store.teacher_steps(run["id"]) if s["status"] == "complete"]
    return [(datetime.fromisoformat(s["finished_at"]) - datetime.fromisoformat(s["started_at"])).total_seconds()
            for s in sorted(steps, key=lambda s: s["step"])]


def one_run(workers: int, steps: int, overrides: list[str]) -> tuple[list[float], float]:
    run_dir = Path(tempfile.mkdtemp(prefix="soar-parallel-")) / "run"
    command = [sys.executable, "-m", "soar_agent.cli", "run", "--run-dir", str(run_dir), "--no-export",
               "--max-teacher-steps", str(steps),
               *[x for item in SMALL_STEP + overrides + [f"run.workers={workers}"] for x in ("--set", item)]]
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)  # the serial arm uses torch's default threads; Ray tasks set their own
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    return step_seconds(run_dir / "soar.db"), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="Ray workers in the parallel arm")
    parser.add_argument("--runs", type=int, default=2, help="runs per arm")
    parser.add_argument("--steps", type=int, default=2, help="teacher steps per run (>= 2: the first starts Ray)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the steady-state step is every step after the first)")
    arms = {"serial": 1, f"ray x{args.workers}": args.workers}
    steady: dict[str, list[float]] = {name: [] for name in arms}
    print(f"{os.cpu_count()} CPUs; step: {' '.join(SMALL_STEP + args.set)}")
    for run in range(args.runs):
        for name, workers in arms.items():
            seconds, total = one_run(workers, args.steps, args.set)
            steady[name].extend(seconds[1:])
            print(f"run {run + 1} {name:>8}: steps {' '.join(f'{s:6.1f}s' for s in seconds)}  process {total:6.1f}s",
                  flush=True)
    print()
    means = {name: statistics.fmean(values) for name, values in steady.items()}
    for name, values in steady.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{name:>8}: steady-state step {means[name]:6.1f}s ± {spread:.1f} (n={len(values)})")
    serial, parallel = means["serial"], means[f"ray x{args.workers}"]
    print(f"serial / ray x{args.workers} = {serial / parallel:.2f}x (> 1: the step is faster on Ray)")


if __name__ == "__main__":
    main()
