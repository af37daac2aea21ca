"""SOAR against its baselines on the embedded default, with equal wall-clock budgets per arm.

Arms (each a `soar run` with `--hours H` in its own run directory under --out):
  hard-only  RL directly on hard-train (the paper's Hard-Only); hard-only-srl: the same with SRL students
  curated    RL on the domain generator's own problems across its levels (the paper's curated ceiling)
  soar       the teacher-student loop; SOAR-PS = its promoted student, SOAR-PQ = a fresh base student
             trained on its promotion questions plus hard-train: the run's final training, inside its
             hours (budget.pq_steps), or `soar eval-pq` after the arm when the run has none; soar-srl: SRL students
  soar-random: SOAR with teacher.split = "random" (the paper's i.i.d. datasets; the default is "length")
  teacher-labels: SOAR in the paper's setting, teacher.reward_target = "teacher": students train on the
             teacher's own worked solutions and answers, no solver in their data (hard-train's answers by RL)
  frozen-teacher, frozen-teacher-labels: SOAR (solver labels / teacher labels) with a teacher that is never
             updated (teacher.lr = 0): what the teacher's learning adds, everything else equal
  The students are the run's default (sft-rlvr: 90% supervised steps on expert solutions, then RLOO);
  hard-only-rloo, curated-rloo, soar-rloo: the same with outcome-RL-only students (the default before
  2026-12-01, when the README's figures for plain `curated` were measured)
When the arms end, base (the shipped model), each arm's final baseline (the latest promoted / chained
student; hard-only and curated replace it every step) and SOAR-PQ are evaluated on the whole hard-test
set with the same sampling seed (paired: common random numbers across arms), two at a time; each figure is
kept in OUT/final/ as it is measured, so `--resume` after a kill in the evaluation measures only the rest. The
learning curves are each arm's per-step grounded reward on hard-train (reward.metric, with its standard
error) from the stores; in-loop hard-test evaluations run every `--eval-every` teacher steps.

`--seeds N` runs every arm with N training seeds (run.seed = 0..N-1; run dirs ARM-seedI past the first); the
table gives each arm's mean over seeds, the spread between seeds, and the standard error over problems of the
seed-averaged per-problem figure. `--eval-set val` evaluates on hard-val instead of hard-test: settings are
chosen there, hard-test is for the figures reported.

With `--parallel` the arms run at the same time, one torch thread each (on 2 cores, three arms share the
CPU equally, so "equal wall clock" is also equal compute); without it they run one after another, each
with the whole machine. Figures carry their standard error over hard-test problems (per-problem pass@k).

    python bench/soar_effect.py --hours 1.5 --parallel [--arms hard-only,curated,soar] [--set key=value]
    python bench/soar_effect.py --resume runs/bench --parallel   # after a reboot: the rest of each arm's hours
    python bench/soar_effect.py --report runs/bench     # print the figures of a finished bench again
    python bench/soar_effect.py --final runs/night-s1 --final runs/night-s2 --out runs/final-q
    python bench/soar_effect.py --evaluate runs/run-a --evaluate runs/run-b --out runs/eval-ab

--final RUN_DIR (repeatable) measures a finished run's final training as the code now trains it: a fresh PQ
student on the run's questions (pq.evaluate_pq, trained again even when the run has one, kept as its `pq`
checkpoint: give a copy of a run whose own should stay), paired with base. --evaluate RUN_DIR (repeatable)
evaluates finished runs as they ended: the PQ student each trained (NAME-pq: the model a run exports), or
for a run without one (hard-only, curated) its latest baseline (NAME), paired with base and with the first.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from soar_agent.store import Store

# arm -> (run.mode, extra overrides). The SRL arms (issue 9), the paper's random split and the outcome-RL-only
# arms are opt-in: --arms hard-only-srl,soar-srl,soar-random,curated-rloo
ARMS = {"hard-only": ("hard-only", []), "curated": ("curated", []), "soar": ("soar", []),
        "hard-only-srl": ("hard-only", ['student.backend="srl"']), "soar-srl": ("soar", ['student.backend="srl"']),
        "soar-random": ("soar", ['teacher.split="random"']),
        **{f"{mode}-rloo": (mode, ['student.backend="rloo"']) for mode in ("hard-only", "curated", "soar")},
        "teacher-labels": ("soar", ['teacher.reward_target="teacher"']),
        "frozen-teacher": ("soar", ["teacher.lr=0"]),
        "frozen-teacher-labels": ("soar", ['teacher.reward_target="teacher"', "teacher.lr=0"])}
DEFAULT_ARMS = ("hard-only", "curated", "soar")
BASE_MODEL = "base model"  # a figure's checkpoint when it measured the shipped model
SEED_SUFFIX = "-seed"  # ARM-seedI: the arm's run with run.seed = I (I >= 1; the first seed's run is ARM)


def run_name(arm: str, seed_index: int) -> str:
    return arm if seed_index == 0 else f"{arm}{SEED_SUFFIX}{seed_index}"


def arm_of(name: str) -> str:
    """The arm of a run name (ARM or ARM-seedI), without a figure's -ps / -pq suffix."""
    name = figure_group(name)
    for suffix in ("-ps", "-pq"):
        if name.endswith(suffix) and name[:-len(suffix)] in ARMS:
            return name[:-len(suffix)]
    return name


def bench_runs(out: Path) -> list[str]:
    """The run names under `out` that are arms of this bench (ARM or ARM-seedI with a soar.db)."""
    return sorted(path.parent.name for path in out.glob("*/soar.db") if arm_of(path.parent.name) in ARMS)


def soar_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "soar_agent.cli", *args]


def start_run(run_dir: Path, budget: list[str], mode: str, k: int, eval_every: int, config: list[str],
              overrides: list[str]) -> subprocess.Popen:
    """A `soar run` of `mode` in run_dir with one torch thread, logging to <run_dir>.log beside it; `budget`
    is its --hours / --max-teacher-steps argument pair."""
    run_dir.mkdir(parents=True, exist_ok=True)
    return start_soar_run(run_dir, [*config, "--run-dir", str(run_dir), *budget, "--no-export",
                                    "--set", f"run.mode={json.dumps(mode)}", "--set", f"eval.samples={k}",
                                    "--set", f"eval.every_teacher_steps={eval_every}",
                                    *[x for item in overrides for x in ("--set", item)]])


def start_soar_run(run_dir: Path, arguments: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    log = open(run_dir.parent / f"{run_dir.name}.log", "a")
    return subprocess.Popen(soar_command("run", *arguments), stdout=log, stderr=subprocess.STDOUT, env=env)


def resume_arms(out: Path, parallel: bool) -> list[str]:
    """Continue a bench whose arms were stopped or killed (a reboot, the end of a machine's session): each
    arm's run goes on with the rest of its hours (`soar run` on a run continues its time budget; the time it
    was down does not count), one after another or all at once; an arm whose hours ended is left as it is.
    Returns the bench's arms, for the final evaluation."""
    from soar_agent.status import time_budget

    arms = bench_runs(out)
    if not arms:
        raise SystemExit(f"{out}: no arm to resume (expected some of {', '.join(ARMS)} holding a soar.db)")
    processes = {}
    for arm in arms:
        with Store(out / arm / "soar.db", readonly=True) as store:
            budget = time_budget(store, store.require_run()["id"])
        if budget is None:
            raise SystemExit(f"{out / arm}: its last session had no time budget: not an arm of this bench")
        if budget.ended or budget.left() <= 0:  # killed in its final training: evaluate_final trains it
            continue
        print(f"{arm}: {budget.left() / 3600:.2f} of {budget.seconds / 3600:.2f} h left", flush=True)
        processes[arm] = start_soar_run(out / arm, ["--run-dir", str(out / arm), "--no-export"])
        if not parallel:
            processes[arm].wait()
    wait_all(out, processes)
    return arms


def run_arm(arm: str, run_dir: Path, hours: float, k: int, eval_every: int, config: list[str],
            overrides: list[str], wait: bool, seed: int = 0) -> subprocess.Popen:
    process = start_run(run_dir, ["--hours", str(hours)], ARMS[arm][0], k, eval_every, config,
                        overrides + ARMS[arm][1] + ([f"run.seed={seed}"] if seed else []))
    if wait:
        process.wait()
    return process


def wait_all(out: Path, processes: dict[str, subprocess.Popen]) -> None:
    """Wait for every named run; a failed one ends the bench, naming its log."""
    for name, process in processes.items():
        if process.wait() != 0:
            raise SystemExit(f"{name} failed: see {out / f'{name}.log'}")


def evaluate_all(out: Path, jobs: list[tuple], workers: int) -> dict:
    """`evaluate_final` of every job, `workers` at a time; the figures by name, also written to out/final.json.
    Each figure is kept in out/final/NAME.json as soon as it is measured, and a kept figure of the same run,
    checkpoint, k and seed is used instead of measuring it again: an evaluation a kill interrupted (the end of
    a machine's session) goes on with the jobs it had not finished, and base can be measured while arms train."""
    kept = out / "final"
    kept.mkdir(parents=True, exist_ok=True)
    figures = {job[0]: figure for job in jobs if (figure := kept_figure(kept, job)) is not None}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for future in as_completed([pool.submit(evaluate_final, job) for job in jobs if job[0] not in figures]):
            figure = future.result()
            (kept / f"{figure['name']}.json").write_text(json.dumps(figure))
            figures[figure["name"]] = figure
    figures = {job[0]: figures[job[0]] for job in jobs}
    (out / "final.json").write_text(json.dumps(figures))
    return figures


def kept_figure(kept: Path, job: tuple) -> dict | None:
    """A job's figure from an earlier evaluation under `kept`, if it measured what this job would: the same
    run, k, seed and checkpoint (a chain that went on since, or an arm that trained on, is measured again)."""
    name, run_dir, k, seed, split, *retrain = job
    path = kept / f"{name}.json"
    if not path.is_file():
        return None
    figure = json.loads(path.read_text())
    checkpoint = planned_checkpoint(name, Path(run_dir), any(retrain))
    same = (figure.get("run_dir"), figure.get("k"), figure.get("seed"), figure.get("checkpoint"),
            figure.get("set", "test"))
    return figure if checkpoint is not None and same == (str(run_dir), k, seed, checkpoint["path"], split) else None


def planned_checkpoint(name: str, run_dir: Path, retrain: bool) -> dict | None:
    """The checkpoint `evaluate_final` evaluates for a job (its stored row), the one rule for it and for
    `kept_figure`: {"path": BASE_MODEL} for base and for an arm with no baseline yet; NAME-pq's PQ student, None
    when it is to be trained first (retrain, or the run has none); else the run's latest baseline."""
    if name == "base":
        return {"path": BASE_MODEL}
    role = "pq" if name.endswith("-pq") else "baseline"
    with Store(run_dir / "soar.db", readonly=True) as store:
        rows = store.checkpoints(store.latest_run()["id"], role=role, status="complete")
    if role == "pq":
        return rows[-1] if rows and not retrain else None
    return rows[-1] if rows else {"path": BASE_MODEL}


def add_common_arguments(parser: argparse.ArgumentParser, out: str, set_help: str) -> None:
    """The arguments every bench built on this one takes (config, output, final evaluation, overrides, report)."""
    parser.add_argument("--config", default=None)
    parser.add_argument("--out", default=out)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--seed", type=int, default=2027, help="sampling seed of the final evaluations")
    parser.add_argument("--workers", type=int, default=2, help="processes for the final evaluations")
    parser.add_argument("--eval-set", choices=("val", "test"), default="test",
                        help="hard set of the final evaluations: val to choose settings, test for reported figures")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    parser.add_argument("--report", metavar="OUT", help="only print the figures of a finished bench under OUT")


def evaluate_final(job: tuple) -> dict:
    """One arm's final figure: (name, run_dir, k, seed, split) -> per-problem pass@k on the whole hard set
    `split` (val or test). Runs in a worker process with one torch thread."""
    import torch

    torch.set_num_threads(1)
    from soar_agent.agent import Agent
    from soar_agent.engine import HFEngine
    from soar_agent.evaluation import evaluate_problems, unique_problems
    from soar_agent.models import load_model, load_tokenizer
    from soar_agent.pq import evaluate_pq

    name, run_dir, k, seed, split, *retrain = job  # retrain: [True] trains the PQ student even when the run has one
    agent = Agent.open(None, Path(run_dir), log=lambda message: None, existing_only=True)
    cfg = agent.config
    checkpoint = planned_checkpoint(name, Path(run_dir), any(retrain))
    if checkpoint is None:
        # asked to train it again, or the run stopped before its final training ended (killed in it or in its
        # evaluation): trained as the run trains it, with the run's seed, so that a chain a kill interrupted goes
        # on from its last kept part instead of starting again; then evaluated like every arm (k, common seed)
        evaluate_pq(agent, seed=cfg.run.seed)
        checkpoint = planned_checkpoint(name, Path(run_dir), retrain=False)
    trained = checkpoint if name.endswith("-pq") else None
    model = load_model(cfg.model.path if checkpoint["path"] == BASE_MODEL else checkpoint["path"], cfg.model.dtype)
    hard_set = unique_problems(agent.hard_set(split))[0]
    results = evaluate_problems(HFEngine(model, load_tokenizer(cfg.model.path)), agent.domain, hard_set,
                                samples=k, greedy=True, max_new_tokens=cfg.eval.max_new_tokens, seed=seed)
    return {"name": name, "values": [r.pass_at([k])[k] for r in results],
            "greedy": sum(bool(r.greedy_correct) for r in results) / len(results),
            "checkpoint": checkpoint["path"], "run_dir": str(run_dir), "k": k, "seed": seed, "set": split,
            **({"steps": trained["metrics"].get("steps"), "questions": trained["metrics"].get("questions"),
                "promotion_questions": trained["metrics"].get("promotion_questions")} if trained else {})}


def has_pq_student(run_dir: Path) -> bool:
    with Store(run_dir / "soar.db", readonly=True) as store:
        return bool(store.checkpoints(store.latest_run()["id"], role="pq", status="complete"))


def mean_error(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(variance / n)


def paired_difference(values: list[float], baseline: list[float]) -> tuple[float, float]:
    """Mean per-problem difference and its standard error (the arms share one sampling seed: paired)."""
    return mean_error([a - b for a, b in zip(values, baseline)])


def arm_curves(run_dir: Path) -> dict:
    """Per-step grounded reward on hard-train (with its standard error), steps and promotions of one arm, and
    per teacher step each dataset's mean item level and reward, and whether the final training takes its
    questions (pq.rewarded_datasets), beside hard-train's mean level: what the teacher learned, and when it
    stopped writing questions the final training uses (the night's teacher overshot hard-train's length)."""
    from soar_agent.pq import rewarded_datasets

    with Store(run_dir / "soar.db", readonly=True) as store:
        run = store.latest_run()
        steps = [s for s in store.teacher_steps(run["id"]) if s["status"] == "complete"]
        rewarded = {d["id"] for d in rewarded_datasets(store, run["id"], run["config"]["promotion"]["tau"])}
        datasets = {}  # teacher step -> [(mean level, reward, in the final training)] per dataset
        for dataset in store.datasets(run["id"], kind="curriculum"):
            levels = [row["level"] for row in store.dataset_problems(dataset["id"]) if row.get("level") is not None]
            datasets.setdefault(dataset["teacher_step"], []).append(
                (sum(levels) / len(levels) if levels else None, dataset["reward"], dataset["id"] in rewarded))
        hard_train = [p["level"] for p in store.problems_for(run["id"], source="hard", split="train")
                      if p.get("level") is not None]
        right = {e["data"]["step"]: e["data"]["teacher_right"] / e["data"]["teacher_checked"]
                 for e in store.events(run["id"], limit=100_000) if e["kind"] == "teacher-sampled"
                 and e["data"].get("teacher_checked")}
        return {"teacher_steps": len(steps), "promotions": len(store.datasets(run["id"], kind="promotion")),
                "teacher_right": [right.get(s["step"]) for s in steps] if right else [],
                "rewards": [(s["mean_reward"], (s.get("metrics") or {}).get("reward_stderr")) for s in steps],
                "datasets": dict(sorted(datasets.items())),
                "hard_train_level": sum(hard_train) / len(hard_train) if hard_train else None}


def final_figures(out: Path, runs: list[str], k: int, seed: int, workers: int, split: str = "test") -> dict:
    jobs = [("base", out / runs[0], k, seed, split)]
    jobs += [(f"{run}-ps" if ARMS[arm_of(run)][0] == "soar" else run, out / run, k, seed, split) for run in runs]
    jobs += [(f"{run}-pq", out / run, k, seed, split) for run in runs if ARMS[arm_of(run)][0] == "soar"]
    return evaluate_all(out, jobs, workers)


def figure_group(name: str) -> str:
    """A figure's name without its seed (soar-seed1-pq -> soar-pq): the figures averaged over seeds."""
    return re.sub(rf"{SEED_SUFFIX}\d+", "", name)


def seed_groups(figures: dict) -> dict[str, dict]:
    """Per group (figure_group): the per-problem values averaged over its seeds, each seed's mean, and the
    figure's extras (greedy, questions) of its first seed."""
    groups: dict[str, dict] = {}
    for name, figure in figures.items():
        group = groups.setdefault(figure_group(name), {"runs": [], "first": figure})
        group["runs"].append(figure["values"])
    for group in groups.values():
        runs = group.pop("runs")
        group["values"] = [sum(values) / len(runs) for values in zip(*runs)]
        group["seed_means"] = [sum(values) / len(values) for values in runs]
    return groups


def report(out: Path, k: int) -> None:
    figures = json.loads((out / "final.json").read_text())
    key = f"pass@{k}"
    groups = seed_groups(figures)
    base_values = groups["base"]["values"]
    seeds = max(len(g["seed_means"]) for g in groups.values())
    split = figures["base"].get("set", "test")
    print(f"\nhard-{split} {key}: {len(base_values)} problems x {k} samples, one sampling seed for every arm, "
          f"{seeds} training seed(s) per arm; mean over seeds +- one standard error over problems (of the"
          " seed-averaged per-problem figure); paired difference against base in brackets; the seeds' own means")
    for name, group in groups.items():
        mean, error = mean_error(group["values"])
        diff = paired_difference(group["values"], base_values)
        r = group["first"]
        extra = f"  greedy {r['greedy']:.3f}" if "greedy" in r else ""
        extra += (f"  ({r.get('questions') or '?'} questions, {r.get('promotion_questions')} of them promoted,"
                  f" {r.get('steps')} steps)" if name.endswith("-pq") else "")
        spread = ("  seeds " + " ".join(f"{m:.3f}" for m in group["seed_means"])) if len(group["seed_means"]) > 1 else ""
        print(f"  {name:24s} {mean:.3f} +- {error:.3f}   [{diff[0]:+.3f} +- {diff[1]:.3f}]{spread}{extra}")
    for run in bench_runs(out):
        curves = arm_curves(out / run)
        print(f"  {run}: {curves['teacher_steps']} teacher steps, {curves['promotions']} promotions; "
              "per-step reward on hard-train: " + " ".join(
                  f"{r:+.3f}" + (f"+-{e:.3f}" if e is not None else "") for r, e in curves["rewards"]))
        if curves["teacher_right"]:
            print("    share of the teacher's answers the solver confirmed, per step: "
                  + " ".join("-" if r is None else f"{r:.2f}" for r in curves["teacher_right"]))
        if curves["datasets"]:
            level = curves["hard_train_level"]
            print("    per teacher step, each dataset's mean item level and reward (* = its questions are in the"
                  " final training)" + (f"; hard-train's mean level {level:.2f}:" if level else ":"))
            for step, rows in curves["datasets"].items():
                print(f"      step {step:3d}: " + " | ".join(
                    ("-" if lv is None else f"{lv:.2f}") + " " + ("-" if r is None else f"{r:+.3f}")
                    + ("*" if taken else "") for lv, r, taken in rows))
    means = {name: mean_error(group["values"])[0] for name, group in groups.items()}
    values = {name: group["values"] for name, group in groups.items()}
    if "soar-srl-pq" in means and "hard-only-srl" in means:
        print(f"SRL students: SOAR-PQ / hard-only SRL {means['soar-srl-pq'] / max(means['hard-only-srl'], 1e-9):.2f}x")
    for pq, target in (("soar-pq", 0.70), ("teacher-labels-pq", 0.50)):
        if pq in means and "hard-only" in means:
            print(ratio_line(pq, values, means, base_values, target))
    # what the teacher's learning adds: the trained teacher against the frozen one, under each label source
    for trained, frozen in (("soar-pq", "frozen-teacher-pq"), ("teacher-labels-pq", "frozen-teacher-labels-pq")):
        if trained in values and frozen in values:
            gap, error = paired_difference(values[trained], values[frozen])
            verdict = "beats it by more than two standard errors" if gap > 2 * error else "not two standard errors"
            print(f"{trained} - {frozen}: {gap:+.3f} +- {error:.3f} (paired; target > 2 se: {verdict})")
    if "teacher-labels-pq" in values and "soar-pq" in values:
        gap, error = paired_difference(values["teacher-labels-pq"], values["soar-pq"])
        print(f"teacher's labels - solver's labels (each with its own trained teacher): {gap:+.3f} +- {error:.3f}")
    print(json.dumps({name: dict(zip(("mean", "stderr"), mean_error(g["values"])), seeds=g["seed_means"])
                      for name, g in groups.items()}))


def ratio_line(pq: str, values: dict, means: dict, base_values: list[float], target: float) -> str:
    gap = paired_difference(values[pq], values["hard-only"])
    line = (f"{pq} / hard-only {means[pq] / max(means['hard-only'], 1e-9):.2f}x (target >= 2x;"
            f" paired difference {gap[0]:+.3f} +- {gap[1]:.3f})")
    if "curated" in means:
        # The share is only a figure when curated beat base by more than two standard errors (paired):
        # a ratio of two gains inside the noise (both negative, say) reads as progress and means nothing.
        gain, error = paired_difference(values["curated"], base_values)
        if gain > 2 * error:
            line += f"; gain / curated gain {(means[pq] - means['base']) / gain:.2f} (target >= {target:.2f})"
        else:
            line += (f"; curated's gain over base ({gain:+.3f} +- {error:.3f}) is not above two standard errors,"
                     " so the share of it is undefined")
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, help="wall-clock budget of each arm")
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"some of {', '.join(ARMS)}")
    parser.add_argument("--parallel", action="store_true", help="run the arms at the same time, one thread each")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per arm (run.seed = 0..N-1)")
    parser.add_argument("--eval-every", type=int, default=1000,
                        help="in-loop hard-test evaluation every N teacher steps (default: only step 0)")
    parser.add_argument("--resume", metavar="OUT", help="continue the bench under OUT after its arms were stopped"
                        " or killed: the rest of each arm's hours, then the final evaluation (with --parallel: at once)")
    parser.add_argument("--final", action="append", default=[], metavar="RUN_DIR",
                        help="train and evaluate this finished run's final training again (see above)")
    parser.add_argument("--evaluate", action="append", default=[], metavar="RUN_DIR",
                        help="evaluate this finished run's exported student as it is (see above)")
    add_common_arguments(parser, "runs/bench", "config overrides for every arm")
    args = parser.parse_args()
    if args.report:
        report(Path(args.report), args.k)
        return
    if args.resume:
        out = Path(args.resume)
        final_figures(out, resume_arms(out, args.parallel), args.k, args.seed, args.workers, args.eval_set)
        report(out, args.k)
        return
    if args.final:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        evaluate_all(out, [("base", Path(args.final[0]), args.k, args.seed, args.eval_set)]
                     + [(f"{Path(run).name}-pq", Path(run), args.k, args.seed, args.eval_set, True)
                        for run in args.final],
                     args.workers)
        report(out, args.k)
        return
    if args.evaluate:
        out, runs = Path(args.out), [Path(run) for run in args.evaluate]
        out.mkdir(parents=True, exist_ok=True)
        names = [f"{run.name}-pq" if has_pq_student(run) else run.name for run in runs]
        jobs = [(name, run, args.k, args.seed, args.eval_set) for name, run in zip(names, runs)]
        figures = evaluate_all(out, [("base", runs[0], args.k, args.seed, args.eval_set)] + jobs, args.workers)
        report(out, args.k)
        for name in names[1:]:
            difference, error = paired_difference(figures[name]["values"], figures[names[0]]["values"])
            print(f"{name} - {names[0]}: {difference:+.3f} +- {error:.3f} (paired)")
        return
    if not args.hours:
        parser.error("--hours is required (or --report OUT)")
    out = Path(args.out)
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS)
    if unknown or not arms:
        parser.error(f"--arms: unknown {sorted(unknown)} (expected some of {', '.join(ARMS)})")
    config = [args.config] if args.config else []
    runs = [(arm, seed) for seed in range(args.seeds) for arm in arms]
    processes = {run_name(arm, seed): run_arm(arm, out / run_name(arm, seed), args.hours, args.k, args.eval_every,
                                              config, args.set, wait=not args.parallel, seed=seed)
                 for arm, seed in runs}
    wait_all(out, processes)
    final_figures(out, list(processes), args.k, args.seed, args.workers, args.eval_set)
    report(out, args.k)


if __name__ == "__main__":
    main()
