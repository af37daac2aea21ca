"""SOAR against the obvious alternative on the embedded default, with equal wall-clock budgets.

Runs `soar run` twice, one after the other (so they never share the CPU): `--mode hard-only` (RLOO
directly on hard-train) and `--mode soar`, each for H/2 hours, then trains the SOAR-PQ student
(`soar eval-pq`). Hard-test pass@32 of base, Hard-Only, SOAR-PS (the promoted student) and SOAR-PQ is
printed on the last line.

    python bench/soar_effect.py --hours 8 [--config curricula/default.toml] [--out runs/bench] [--set key=value]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from soar_agent.store import Store


def soar(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "soar_agent.cli", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"soar {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result.stdout


def hard_test(run_dir: Path, key: str) -> tuple[float, float]:
    """(base, latest) hard-test figure of a run."""
    with Store(run_dir / "soar.db", readonly=True) as store:
        run = store.latest_run()["id"]
        evaluations = store.evaluations(run, set_name="hard-test")
        return evaluations[0]["summary"][key], evaluations[-1]["summary"][key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, required=True, help="total budget, split equally between the modes")
    parser.add_argument("--config", default=None)
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides for both runs (e.g. a smaller hard-test subset for short budgets)")
    args = parser.parse_args()
    out = Path(args.out)
    config = [args.config] if args.config else []
    key = f"pass@{args.k}"
    figures = {}
    for mode in ("hard-only", "soar"):
        run_dir = out / mode
        soar("run", *config, "--run-dir", str(run_dir), "--hours", str(args.hours / 2), "--no-export",
             "--set", f"run.mode={json.dumps(mode)}", "--set", f"eval.samples={args.k}",
             "--set", "eval.every_teacher_steps=1", *[x for item in args.set for x in ("--set", item)])
        base, latest = hard_test(run_dir, key)
        figures["base"] = base
        figures["hard-only" if mode == "hard-only" else "soar-ps"] = latest
        print(f"{mode}: {key} base {base:.3f} -> {latest:.3f}", flush=True)
    pq = json.loads(soar("eval-pq", str(out / "soar"), "--json"))
    figures["soar-pq"] = pq[key]
    print(json.dumps(figures))
    print(f"hard-test {key}: base {figures['base']:.3f}  hard-only {figures['hard-only']:.3f}  "
          f"SOAR-PS {figures['soar-ps']:.3f}  SOAR-PQ {figures['soar-pq']:.3f}  "
          f"(PQ/hard-only {figures['soar-pq'] / max(figures['hard-only'], 1e-9):.2f}x)")


if __name__ == "__main__":
    main()
