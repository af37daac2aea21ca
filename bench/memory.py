"""Memory over a night: the resident set size of one `soar run` on the shipped model, sampled every
`--every` seconds for `--minutes`, with its growth per hour after the first teacher step (the baseline the
process settles at once every model, optimizer and engine of a step exists).

    python bench/memory.py                       # 60 minutes, the embedded default
    python bench/memory.py --minutes 30 --set teacher.datasets_per_step=2
    python bench/memory.py --attach PID --run-dir DIR --minutes 120   # watch a `soar run` already running
    python bench/memory.py --breakdown 8 --set eval.every_teacher_steps=3   # what RSS is made of, per step

Prints one line per sample (minutes, RSS MB, teacher steps done) and the growth figures at the end; the
goal is growth under 5% per 8 hours after the first step.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from soar_agent.store import Store


def rss_mb(pid: int) -> float:
    """Resident set size of a process and its children (the math verifier and sandbox run in children)."""
    total = 0
    for candidate in [pid] + children(pid):
        try:
            for line in Path(f"/proc/{candidate}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total / 1024


def children(pid: int) -> list[int]:
    try:
        direct = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []
    return direct + [g for c in direct for g in children(c)]


def steps_done(db: Path) -> int:
    if not db.is_file():
        return 0
    try:
        with Store(db, readonly=True) as store:
            run = store.latest_run()
            return sum(s["status"] == "complete" for s in store.teacher_steps(run["id"])) if run else 0
    except Exception:  # noqa: BLE001: the store may be mid-creation
        return 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def breakdown(steps: int, overrides: list[str]) -> None:
    """The loop in this process for `steps` teacher steps; after each one (and the loop's own trim) one line
    of what the resident size is made of: glibc's heap bytes in use (live C/C++ allocations: tensors,
    tokenizer, Python's larger objects), its free bytes and total size (kept by the allocator, not live),
    memory mapped for large blocks, Python objects tracked by gc, and live CPU tensor bytes. Live figures
    that stay flat while RSS rises mean the allocator keeps pages, not a leak."""
    import torch

    from soar_agent.agent import Agent, Budget
    from soar_agent.config import load_config
    from soar_agent.student_job import release_freed_memory

    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        raise SystemExit("--breakdown needs glibc >= 2.33 (mallinfo2)") from None
    mallinfo2.restype = _MallInfo2
    torch.set_num_threads(1)
    agent = Agent.open(load_config(None, overrides), Path(tempfile.mkdtemp(prefix="soar-memory-")) / "run",
                       log=lambda message: None)
    teacher_step = agent.teacher_step

    def measured(step: int) -> None:
        started = time.time()
        teacher_step(step)
        release_freed_memory()
        info, mb, objects = mallinfo2(), 2 ** -20, gc.get_objects()
        with warnings.catch_warnings():  # isinstance() on every object touches deprecated torch attributes
            warnings.simplefilter("ignore")
            storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()  # views share a storage
                        for t in objects if torch.is_tensor(t) and t.device.type == "cpu"}
        print(json.dumps({"step": step, "seconds": round(time.time() - started),
                          "rss_mb": round(rss_mb(os.getpid()), 1), "heap_in_use_mb": round(info.uordblks * mb, 1),
                          "heap_free_mb": round(info.fordblks * mb, 1), "heap_size_mb": round(info.arena * mb, 1),
                          "mmapped_mb": round(info.hblkhd * mb, 1), "python_objects": len(objects),
                          "tensor_mb": round(sum(storages.values()) * mb, 1)}),
              flush=True)

    agent.teacher_step = measured
    agent.run(Budget(None, steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--attach", type=int, metavar="PID",
                        help="watch this running `soar run` (with --run-dir) instead of starting one; it is left running")
    parser.add_argument("--run-dir", type=Path, help="the attached run's directory (its soar.db counts the steps)")
    parser.add_argument("--breakdown", type=int, metavar="STEPS",
                        help="run STEPS teacher steps in this process and print what RSS is made of after each")
    args = parser.parse_args()
    if args.breakdown:
        breakdown(args.breakdown, args.set)
        return
    if args.attach:
        if not args.run_dir:
            parser.error("--attach needs --run-dir")
        run_dir, pid, process = args.run_dir, args.attach, None
        running = lambda: Path(f"/proc/{pid}").exists()  # noqa: E731
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="soar-memory-")) / "run"
        command = [sys.executable, "-m", "soar_agent.cli", "run", "--run-dir", str(run_dir), "--no-export",
                   "--hours", str(args.minutes / 60 + 0.5), *[x for item in args.set for x in ("--set", item)]]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        pid = process.pid
        running = lambda: process.poll() is None  # noqa: E731
    samples: list[tuple[float, float, int]] = []
    started = time.time()
    try:
        while time.time() - started < args.minutes * 60 and running():
            time.sleep(args.every)
            sample = ((time.time() - started) / 60, rss_mb(pid), steps_done(run_dir / "soar.db"))
            if not sample[1]:  # the process ended during the sleep or while being sampled
                break
            samples.append(sample)
            print(f"{sample[0]:7.1f} min  {sample[1]:8.1f} MB  {sample[2]:3d} teacher steps", flush=True)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=120)
    settled = [s for s in samples if s[2] >= 1]
    if len(settled) < 2:
        print("fewer than two samples after the first teacher step: run longer")
        return
    # RSS swings by hundreds of MB inside a step (sampling batches, evaluation); a leak shows in the
    # troughs: compare each finished step's lowest and highest sample, not two arbitrary samples
    by_step = rss_by_step(settled)
    print("teacher step: lowest / highest RSS (MB) while it ran")
    for steps, values in sorted(by_step.items()):
        print(f"  {steps + 1:3d}: {min(values):8.1f} / {max(values):8.1f}")
    (t0, m0, _), (t1, m1, _) = settled[0], settled[-1]
    lows, per_hour = trough_growth(settled)
    print(f"after the first step: troughs {lows[0]:.0f} MB -> {lows[-1]:.0f} MB over {t1 - t0:.0f} min; fitted growth"
          f" {per_hour:+.1f} MB/hour = {100 * per_hour * 8 / lows[0]:+.1f}% per 8 hours (goal < 5%);"
          f" first/last sample {m0:.0f} -> {m1:.0f} MB; peak {max(s[1] for s in samples):.0f} MB")
    # The first in-loop evaluation lifts glibc's heap to its high-water mark once (--breakdown: the heap's
    # size grows there while its bytes in use stay flat); growth after it is what a night adds on top.
    first_eval = first_loop_evaluation(run_dir / "soar.db")
    after_eval = [s for s in settled if s[2] > first_eval] if first_eval is not None else []
    if len({s[2] for s in after_eval}) < 2:
        print("fewer than two steps after the first in-loop evaluation: no growth figure from it")
    else:
        lows, per_hour = trough_growth(after_eval)
        print(f"after the first in-loop evaluation (step {first_eval}): troughs {lows[0]:.0f} MB -> {lows[-1]:.0f} MB"
              f" over {after_eval[-1][0] - after_eval[0][0]:.0f} min; fitted growth {per_hour:+.1f} MB/hour ="
              f" {100 * per_hour * 8 / lows[0]:+.1f}% per 8 hours")


def rss_by_step(settled: list[tuple[float, float, int]]) -> dict[int, list[float]]:
    """RSS samples grouped by the number of teacher steps finished when each was taken."""
    by_step: dict[int, list[float]] = {}
    for _, mb, steps in settled:
        by_step.setdefault(steps, []).append(mb)
    return by_step


def trough_growth(settled: list[tuple[float, float, int]]) -> tuple[list[float], float]:
    """Each finished step's lowest RSS, and their least-squares slope in MB per hour: two endpoints alone
    follow the noise between steps."""
    by_step = rss_by_step(settled)
    lows = [min(values) for _, values in sorted(by_step.items())]
    starts = [min(t for t, _, steps in settled if steps == done) / 60 for done in sorted(by_step)]  # hours
    mean_t, mean_m = sum(starts) / len(starts), sum(lows) / len(lows)
    spread = sum((t - mean_t) ** 2 for t in starts)
    return lows, (sum((t - mean_t) * (m - mean_m) for t, m in zip(starts, lows)) / spread) if spread else 0.0


def first_loop_evaluation(db: Path) -> int | None:
    """The teacher step of the run's first hard-test evaluation after step 0, if one finished."""
    try:
        with Store(db, readonly=True) as store:
            run = store.latest_run()
            steps = [e["teacher_step"] for e in store.evaluations(run["id"], set_name="hard-test")] if run else []
    except Exception:  # noqa: BLE001: a bench reading a store another process may still hold
        return None
    return min((s for s in steps if s), default=None)


if __name__ == "__main__":
    main()
