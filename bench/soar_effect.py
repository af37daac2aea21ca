"""SOAR against its baselines on the embedded default, with equal wall-clock budgets per arm.

Arms (each a `soar run` with `--hours H` in its own run directory under --out):
  hard-only  RL directly on hard-train (the paper's Hard-Only)
  curated    RL on the domain generator's own problems across its levels (the paper's curated ceiling)
  soar       the teacher-student loop; SOAR-PS = its promoted student, SOAR-PQ = a fresh base student
             trained on its promotion questions plus hard-train (`soar eval-pq`)
Base is the step-0 evaluation every arm starts with. Every arm evaluates hard-test after each teacher
step (`eval.every_teacher_steps=1`), so the learning curves come from the stores.

With `--parallel` the arms run at the same time, one torch thread each (on 2 cores, three arms share the
CPU equally, so "equal wall clock" is also equal compute); without it they run one after another, each
with the whole machine. Figures carry their standard error over hard-test problems (per-problem pass@k).

    python bench/soar_effect.py --hours 1.5 --parallel [--arms hard-only,curated,soar] [--set key=value]
    python bench/soar_effect.py --report runs/bench     # figures of finished arms only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from soar_agent.store import Store

ARMS = ("hard-only", "curated", "soar")


def soar_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "soar_agent.cli", *args]


def run_arm(arm: str, run_dir: Path, hours: float, k: int, config: list[str], overrides: list[str],
            wait: bool) -> subprocess.Popen:
    run_dir.mkdir(parents=True, exist_ok=True)
    command = soar_command("run", *config, "--run-dir", str(run_dir), "--hours", str(hours), "--no-export",
                           "--set", f"run.mode={json.dumps(arm)}", "--set", f"eval.samples={k}",
                           "--set", "eval.every_teacher_steps=1", *[x for item in overrides for x in ("--set", item)])
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    log = open(run_dir.parent / f"{arm}.log", "a")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    if wait:
        process.wait()
    return process


def pass_with_error(store: Store, evaluation: dict, k: int) -> tuple[float, float]:
    """Mean per-problem pass@k and its standard error over the set's problems."""
    values = [r["pass_at"].get(k, 0.0) for r in store.evaluation_results(evaluation["id"])]
    n = len(values)
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(variance / n)


def arm_figures(run_dir: Path, k: int) -> dict:
    with Store(run_dir / "soar.db", readonly=True) as store:
        run = store.latest_run()["id"]
        evaluations = store.evaluations(run, set_name="hard-test")
        curve = [(e["teacher_step"], *pass_with_error(store, e, k)) for e in evaluations]
        steps = [s for s in store.teacher_steps(run) if s["status"] == "complete"]
        figures = {"curve": curve, "teacher_steps": len(steps), "problems": len(store.evaluation_results(evaluations[0]["id"])),
                   "promotions": len(store.datasets(run, kind="promotion")),
                   "mean_rewards": [s["mean_reward"] for s in steps]}
        pq = store.evaluations(run, set_name="hard-test-pq")
        if pq:
            figures["pq"] = pass_with_error(store, pq[-1], k)
        return figures


def report(out: Path, k: int) -> dict:
    arms = {arm: arm_figures(out / arm, k) for arm in ARMS if (out / arm / "soar.db").is_file()}
    if not arms:
        raise SystemExit(f"{out}: no finished arm")
    key = f"pass@{k}"
    first = next(iter(arms.values()))
    table = {"base": first["curve"][0][1:]}
    for arm, figures in arms.items():
        final = figures["curve"][-1][1:]
        table["soar-ps" if arm == "soar" else arm] = final
        if "pq" in figures:
            table["soar-pq"] = figures["pq"]
    print(f"\nhard-test {key} ({first['problems']} problems x {k} samples; +- one standard error over problems)")
    for name, (mean, error) in table.items():
        print(f"  {name:10s} {mean:.3f} +- {error:.3f}")
    for arm, figures in arms.items():
        print(f"  {arm}: {figures['teacher_steps']} teacher steps, {figures['promotions']} promotions; curve "
              + " ".join(f"{step}:{mean:.3f}" for step, mean, _ in figures["curve"]))
        if arm == "soar":
            print("  soar mean teacher-step rewards: " + " ".join(f"{r:+.4f}" for r in figures["mean_rewards"]))
    base = table["base"][0]
    if "soar-pq" in table and "hard-only" in table:
        ratio = table["soar-pq"][0] / max(table["hard-only"][0], 1e-9)
        line = f"SOAR-PQ / hard-only {ratio:.2f}x (target >= 2x)"
        if "curated" in table:
            share = (table["soar-pq"][0] - base) / (table["curated"][0] - base) if table["curated"][0] != base else float("nan")
            line += f"; SOAR-PQ gain / curated gain {share:.2f} (target >= 0.70)"
        print(line)
    print(json.dumps({name: {"mean": m, "stderr": e} for name, (m, e) in table.items()}))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, help="wall-clock budget of each arm")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--parallel", action="store_true", help="run the arms at the same time, one thread each")
    parser.add_argument("--config", default=None)
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides for every arm (e.g. a smaller hard-test subset for short budgets)")
    parser.add_argument("--report", metavar="OUT", help="only print the figures of the arms under OUT")
    args = parser.parse_args()
    if args.report:
        report(Path(args.report), args.k)
        return
    if not args.hours:
        parser.error("--hours is required (or --report OUT)")
    out = Path(args.out)
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS)
    if unknown:
        parser.error(f"--arms: unknown {sorted(unknown)} (expected some of {', '.join(ARMS)})")
    config = [args.config] if args.config else []
    processes = [run_arm(arm, out / arm, args.hours, args.k, config, args.set, wait=not args.parallel) for arm in arms]
    for arm, process in zip(arms, processes):
        if process.wait() != 0:
            raise SystemExit(f"arm {arm} failed: see {out / f'{arm}.log'}")
    if "soar" in arms:
        result = subprocess.run(soar_command("eval-pq", str(out / "soar"), "--json"), capture_output=True, text=True,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        if result.returncode != 0:
            raise SystemExit(f"soar eval-pq failed:\n{result.stderr[-2000:]}")
    report(out, args.k)


if __name__ == "__main__":
    main()
