"""Does the teacher's learning raise what its questions teach? A trained teacher against a frozen one
(`teacher.lr = 0`: the same teacher, never updated), the same seeds, so that step 1 writes the same items in
both and every later difference is the update's doing.

Each arm is a `soar run` of `--steps` teacher steps without a final training (budget.pq_steps = 0), one
torch thread each, all at the same time. What is compared is the grounded reward itself, step by step: the
mean improvement of the step's students on its hard-train reward questions (the same questions in both arms
of a seed: they are drawn with the run's seed and the step), which is what the teacher is trained to raise.
The report prints, per step and arm, the mean reward ± its pooled standard error, the share of the teacher's
worked solutions that were right, and the mean level of its items; then, per seed and over seeds, the
trained-minus-frozen difference of the mean reward over steps 2..N (step 1 is the same in both arms).

    python bench/teacher_learns.py --out runs/teacher-learns --seeds 2 --steps 8 \\
        --set 'teacher.reward_target="teacher"' --set teacher.items_per_dataset=1024 --set student.steps=20
    python bench/teacher_learns.py --report runs/teacher-learns
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path
from statistics import fmean

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from soar_agent.store import Store  # noqa: E402

ARMS = {"trained": [], "frozen": ["teacher.lr=0"]}


def start(out: Path, arm: str, seed: int, steps: int, overrides: list[str]) -> subprocess.Popen:
    run_dir = out / f"{arm}-s{seed}"
    settings = [f"run.seed={seed}", "budget.pq_steps=0", "eval.every_teacher_steps=1000", *overrides, *ARMS[arm]]
    command = [sys.executable, "-m", "soar_agent.cli", "run", "--run-dir", str(run_dir), "--max-teacher-steps",
               str(steps), "--no-export", *[x for s in settings for x in ("--set", s)]]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen(command, stdout=open(out / f"{arm}-s{seed}.log", "a"), stderr=subprocess.STDOUT, env=env)


def run_curve(run_dir: Path) -> list[dict]:
    """Per completed teacher step: its mean reward and standard error, the teacher's right share, item level."""
    with Store(run_dir / "soar.db", readonly=True) as store:
        run = store.require_run()["id"]
        right = {e["data"]["step"]: e["data"]["teacher_right"] / e["data"]["teacher_checked"]
                 for e in store.events(run, limit=100_000)
                 if e["kind"] == "teacher-sampled" and e["data"].get("teacher_checked")}
        curve = []
        for step in store.teacher_steps(run):
            if step["status"] != "complete":
                continue
            levels = [p["level"] for d in store.datasets(run, kind="curriculum") if d["teacher_step"] == step["step"]
                      for p in store.dataset_problems(d["id"]) if p.get("level") is not None]
            curve.append({"step": step["step"], "reward": step["mean_reward"],
                          "stderr": (step["metrics"] or {}).get("reward_stderr") or 0.0,
                          "right": right.get(step["step"]), "level": fmean(levels) if levels else None,
                          "promoted": step["promoted_dataset_id"] is not None})
        return curve


def difference(trained: list[dict], frozen: list[dict]) -> tuple[float, float, int]:
    """Trained minus frozen mean reward over the steps both completed after step 1, and its standard error
    (the steps' pooled errors, the arms taken as independent: conservative, as both arms of a seed score
    the same reward questions)."""
    pairs = [(t, f) for t, f in zip(trained, frozen) if t["step"] == f["step"] and t["step"] > 1]
    if not pairs:
        return float("nan"), float("nan"), 0
    mean = fmean(t["reward"] - f["reward"] for t, f in pairs)
    error = math.sqrt(sum(t["stderr"] ** 2 + f["stderr"] ** 2 for t, f in pairs)) / len(pairs)
    return mean, error, len(pairs)


def report(out: Path) -> None:
    seeds = sorted({int(p.name.rsplit("-s", 1)[1]) for p in out.glob("*-s*") if (p / "soar.db").is_file()})
    curves = {(arm, seed): run_curve(out / f"{arm}-s{seed}") for arm in ARMS for seed in seeds
              if (out / f"{arm}-s{seed}" / "soar.db").is_file()}
    print("| seed | step | trained reward | frozen reward | trained - frozen | teacher right (trained / frozen)"
          " | item level (trained / frozen) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    fmt = lambda x, spec: "-" if x is None else format(x, spec)
    for seed in seeds:
        trained, frozen = curves.get(("trained", seed), []), curves.get(("frozen", seed), [])
        for t, f in zip(trained, frozen):
            print(f"| {seed} | {t['step']} | {t['reward']:+.4f} ± {t['stderr']:.4f}"
                  f"{' P' if t['promoted'] else ''} | {f['reward']:+.4f} ± {f['stderr']:.4f}"
                  f"{' P' if f['promoted'] else ''} | {t['reward'] - f['reward']:+.4f} |"
                  f" {fmt(t['right'], '.3f')} / {fmt(f['right'], '.3f')} |"
                  f" {fmt(t['level'], '.2f')} / {fmt(f['level'], '.2f')} |")
    per_seed = []
    for seed in seeds:
        mean, error, n = difference(curves.get(("trained", seed), []), curves.get(("frozen", seed), []))
        if not n:
            print(f"seed {seed}: no step after the first completed in both arms yet")
            continue
        per_seed.append(mean)
        print(f"seed {seed}: trained - frozen mean reward over steps 2..{n + 1}: {mean:+.4f} ± {error:.4f}"
              f" ({mean / error if error else float('nan'):+.1f} standard errors)")
    if len(per_seed) > 1:
        spread = math.sqrt(sum((m - fmean(per_seed)) ** 2 for m in per_seed) / (len(per_seed) - 1))
        print(f"over {len(per_seed)} seeds: {fmean(per_seed):+.4f}, seed-to-seed standard deviation {spread:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/teacher-learns")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting of every arm")
    parser.add_argument("--report", metavar="OUT", help="only print the figures of the runs under OUT")
    args = parser.parse_args()
    if args.report:
        return report(Path(args.report))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    processes = [start(out, arm, seed, args.steps, args.set) for seed in range(args.seeds) for arm in ARMS]
    if any(process.wait() != 0 for process in processes):
        raise SystemExit(f"a run failed: see the logs under {out}")
    report(out)


if __name__ == "__main__":
    main()
