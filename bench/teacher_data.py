"""Is the teacher's data worth training on? Curated chains with equal training on the generator's problems
and on the items SOAR runs' teachers wrote, on the embedded default.

SOAR's students are short (50 steps from the baseline), and the reward they produce is what the teacher
learns from; the product's gain, though, comes from long trainings (curated mode: +0.69 hard-test pass@32 in
an hour, bench/README.md). This bench asks the question under both: trained on as long as the curated
ceiling, is what a teacher writes as good as the domain's own generator? Each source is a `soar run --mode
curated` chain of --chain-steps trainings of student.steps each (each continuing from the last), in its
own run directory under --out, all sources at once with one torch thread each (equal compute):

  generator              the domain generator's problems, levels drawn uniformly (the curated ceiling)
  NAME=RUN_DIR[:A-B]     the problems a SOAR run's students trained on (its curriculum datasets of teacher
                         steps A..B: each item as the teacher wrote it, the solver's answer and expert steps),
                         written to OUT/NAME.jsonl and given as domain.curated
  NAME=RUN_DIR:promoted  the run's promotion questions (pq.promoted_problems): SOAR-PQ's training data
  NAME=RUN_DIR:rewarded  the questions of every dataset the run's reward found helpful (pq.rewarded_problems):
                         what `soar run`'s final training trains on
  ...@generator          any of these with each item replaced by a fresh generator problem of its level: the
                         same count and level mix, the generator's kind of question (splits what the teacher
                         writes from how many and how hard)
  ...@in-range, ...@out-of-range   (arith) only the items inside (outside) the generator's range: every
                         intermediate in 0..999, no multi-digit times multi-digit product
  ...@generator-small    (arith) like @generator, with every operand drawn from 1..operand_max(4) = 13, the
                         range of the shipped model's pretraining levels 1-4 (its level-5 operands reach 15
                         at a lower weight): the generator's kind of question with the operands a teacher
                         that learned its questions there writes (splits operand size from the rest)
  ...@generator-operands (arith) each teacher question's own expression (operators, nesting) with its operands
                         drawn afresh as the generator draws them at its level (1..operand_max(level)), redrawn
                         until inside the range; an item with no draw inside in 200 tries is left out
  --hard-only            the same chain on hard-train (`--mode hard-only`: the paper's Hard-Only baseline)

Hard-set questions are removed from every source (curated mode does). Then base and each chain's last
baseline are evaluated on the whole hard-test set with one sampling seed (paired), as bench/soar_effect.py
does, and the per-level mix and size of each source are printed with the figures.

    python bench/teacher_data.py --chain-steps 8 --source random=runs/el2 --source length=runs/split-len:5-9
    python bench/teacher_data.py --chain-steps 8 --no-generator --source pq-random=runs/el2:promoted \
        --source pq-length=runs/split-len:promoted --out runs/teacher-data-pq
    python bench/teacher_data.py --chain-steps 8 --no-generator --hard-only --out runs/teacher-data-ho
    python bench/teacher_data.py --chain-steps 8 --no-generator --source teacher=runs/fast-s1:rewarded \
        --source like-teacher=runs/fast-s1:rewarded@generator --out runs/teacher-kind
    python bench/teacher_data.py --chain-steps 8 --no-generator --source in-range=runs/fast-s1:rewarded@in-range \
        --source out-of-range=runs/fast-s1:rewarded@out-of-range --out runs/teacher-range
    python bench/teacher_data.py --chain-steps 8 --no-generator --source small=runs/def-s1:rewarded@generator-small \
        --source teacher-operands=runs/def-s1:rewarded@generator-operands --out runs/teacher-operands
    python bench/teacher_data.py --report runs/teacher-data
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soar_effect import (add_common_arguments, evaluate_all, mean_error, paired_difference,  # noqa: E402
                         start_run, wait_all)
from question_stats import PRETRAINED_OPERAND_LEVEL  # noqa: E402


SOURCE_FORM = ("NAME=RUN_DIR[:A-B|:promoted|:rewarded]"
               "[@generator|@generator-small|@generator-operands|@in-range|@out-of-range]")
SWAPS = ("generator", "generator-small", "generator-operands", "in-range", "out-of-range")
ARITH_SWAPS = SWAPS[1:]


def parse_source(text: str) -> tuple[str, Path, tuple[int, int] | str | None, str | None]:
    """SOURCE_FORM -> (name, run dir, teacher-step range, "promoted", "rewarded" or None for all, one of
    SWAPS or None)."""
    name, _, rest = text.partition("=")
    rest, _, swap = rest.partition("@")
    if not name or not rest or swap not in ("", *SWAPS):
        raise ValueError(f"--source {text!r}: expected {SOURCE_FORM}")
    run_dir, _, steps = rest.partition(":")
    if steps in ("", "promoted", "rewarded"):
        return name, Path(run_dir), steps or None, swap or None
    first, _, last = steps.partition("-")
    return name, Path(run_dir), (int(first), int(last or first)), swap or None


def generator_like(agent, problems: list) -> list:
    """A fresh generator problem at each problem's level (the same count and level mix, the generator's kind
    of question), drawn with a fixed seed."""
    generate, rng = agent.domain.generate, random.Random(0)
    return [generate(problem.level, rng) for problem in problems]


def generator_small_like(problems: list) -> list:
    """generator_like for arith with the operands of level PRETRAINED_OPERAND_LEVEL at every level: the same
    count, level mix and kind of expression, only the operands smaller."""
    from soar_agent.tasks import arith

    rng = random.Random(0)
    return [arith.generate(problem.level, rng, operand_level=min(problem.level, PRETRAINED_OPERAND_LEVEL))
            for problem in problems]


def generator_operands_like(problems: list, tries: int = 200) -> list:
    """Each arith problem's own expression tree with every operand redrawn from 1..operand_max(level), as the
    generator draws them, until the expression is inside the generator's range (at most `tries` draws; a
    problem with none inside is left out): the teacher's shapes with the generator's operands."""
    from soar_agent.tasks import arith

    rng = random.Random(0)

    def redraw(node, level: int):
        if isinstance(node, arith.Num):
            return arith.Num(rng.randint(1, arith.operand_max(level)))
        return arith.BinOp(node.op, redraw(node.left, level), redraw(node.right, level))

    redrawn = []
    for problem in problems:
        tree = arith.parse(problem.question)
        for _ in range(tries):
            candidate = redraw(tree, problem.level)
            if arith.range_violation(candidate) is None:
                redrawn.append(arith.make_problem(arith.to_text(candidate), level=problem.level))
                break
    print(f"@generator-operands: {len(problems) - len(redrawn)} of {len(problems)} items found no draw in range"
          f" in {tries} tries and are left out", flush=True)
    return redrawn


def write_teacher_items(run_dir: Path, steps: tuple[int, int] | str | None, path: Path,
                        swap: str | None = None) -> list[dict]:
    """The problems a SOAR run's students trained on in its teacher steps `steps` (or its promotion
    questions: "promoted", or its rewarded datasets' questions: "rewarded"), as a curated JSONL (question,
    answer, level, expert steps), each swapped for a generator problem of its level (swap "generator"; with
    the pretraining's operands: "generator-small"), its operands redrawn ("generator-operands") or
    only those inside / outside the generator's range ("in-range", "out-of-range"); returns the rows."""
    from soar_agent.agent import Agent
    from soar_agent.pq import promoted_problems, rewarded_problems
    from soar_agent.students import dataset_problems

    agent = Agent.open(None, run_dir, log=lambda message: None, existing_only=True)
    if steps == "promoted":
        problems = promoted_problems(agent)
    elif steps == "rewarded":
        problems = rewarded_problems(agent)[0]
    else:
        problems = [p for dataset in agent.store.datasets(agent.run_id, kind="curriculum")
                    if not steps or steps[0] <= dataset["teacher_step"] <= steps[1]
                    for p in dataset_problems(agent, dataset)]
    if swap in ARITH_SWAPS and agent.domain.NAME != "arith":
        raise SystemExit(f"@{swap}: the arith domain only (the run's is {agent.domain.NAME})")
    if swap and swap.startswith("generator") and any(p.level is None for p in problems):
        # a problem without a level keeps none, so there is no level to draw at
        raise SystemExit(f"@{swap}: {sum(p.level is None for p in problems)} items have no level")
    if swap == "generator":
        problems = generator_like(agent, problems)
    elif swap == "generator-small":
        problems = generator_small_like(problems)
    elif swap == "generator-operands":
        problems = generator_operands_like(problems)
    elif swap:
        from soar_agent.tasks.arith import in_generator_range

        problems = [p for p in problems if in_generator_range(p.question) == (swap == "in-range")]
    rows = [{"question": p.question, "answer": p.answer, "level": p.level, "steps": list(p.steps)} for p in problems]
    agent.store.close()
    if not rows:
        what = (f"{steps} questions" if steps in ("promoted", "rewarded")
                else f"curriculum items in teacher steps {steps or 'any'}")
        raise SystemExit(f"{run_dir}: no {what}")
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


def run_chain(name: str, out: Path, chain_steps: int, k: int, config: list[str], overrides: list[str],
              curated: Path | None):
    """`name` = "hard-only" runs the hard-only mode; otherwise curated, on `curated` or the generator. Only the
    step-0 hard-test evaluation runs inside the chain (the final figures are this bench's own)."""
    mode = "hard-only" if name == "hard-only" else "curated"
    extra = [f"domain.curated={json.dumps(str(curated))}"] if curated else []
    return start_run(out / name, ["--max-teacher-steps", str(chain_steps)], mode, k, 1000, config,
                     overrides + extra)


def level_mix(rows: list[dict]) -> dict:
    levels = [row["level"] for row in rows if row.get("level") is not None]
    return {"items": len(rows), "unique": len({row["question"] for row in rows}),
            "mean_level": sum(levels) / len(levels) if levels else None,
            "share_level_5_up": sum(level >= 5 for level in levels) / len(levels) if levels else None,
            "levels": dict(sorted(Counter(levels).items()))}


def report(out: Path, k: int) -> None:
    figures = json.loads((out / "final.json").read_text())
    sources = json.loads((out / "sources.json").read_text())
    base = figures["base"]["values"]
    print(f"\nhard-test pass@{k}: {len(base)} problems x {k} samples, one sampling seed for every chain; +- one"
          " standard error over problems; paired difference against base (and against generator) in brackets")
    for name, r in figures.items():
        mean, error = mean_error(r["values"])
        diff = paired_difference(r["values"], base)
        line = f"  {name:10s} {mean:.3f} +- {error:.3f}   [{diff[0]:+.3f} +- {diff[1]:.3f}]"
        if name not in ("base", "generator") and "generator" in figures:
            gap = paired_difference(r["values"], figures["generator"]["values"])
            line += f"   [vs generator {gap[0]:+.3f} +- {gap[1]:.3f}]"
        if "greedy" in r:
            line += f"  greedy {r['greedy']:.3f}"
        print(line)
        if name in sources:
            mix = sources[name]
            if mix.get("mean_level") is not None:
                print(f"             source: {mix['items']} items ({mix['unique']} distinct), mean level"
                      f" {mix['mean_level']:.2f}, {mix['share_level_5_up']:.0%} at levels >= 5")
            else:
                print(f"             source: {mix['items']}")
    print(json.dumps({name: dict(zip(("mean", "stderr"), mean_error(r["values"]))) for name, r in figures.items()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", action="append", default=[], metavar=SOURCE_FORM,
                        help="a SOAR run's teacher items (teacher steps A..B, its promotion questions or its"
                             " rewarded datasets' questions) as a chain's curated problems")
    parser.add_argument("--no-generator", action="store_true", help="leave out the generator chain")
    parser.add_argument("--hard-only", action="store_true", help="add a chain on hard-train (the Hard-Only baseline)")
    parser.add_argument("--chain-steps", type=int, default=8, help="trainings per chain")
    add_common_arguments(parser, "runs/teacher-data",
                         "config overrides for every chain (default: one 100-step training per chain step)")
    args = parser.parse_args()
    if args.report:
        report(Path(args.report), args.k)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        sources = [parse_source(text) for text in args.source]
    except ValueError as error:
        parser.error(str(error))
    if not sources and args.no_generator and not args.hard_only:
        parser.error("nothing to run: give --source or --hard-only, or drop --no-generator")
    if any(name in ("generator", "hard-only", "base") for name, *_ in sources):
        parser.error("--source: generator, hard-only and base name the bench's own chains")
    mixes, chains = {}, []
    if not args.no_generator:
        chains.append(("generator", None))
        mixes["generator"] = {"items": "fresh generator problems per training"}
    if args.hard_only:
        chains.append(("hard-only", None))
        mixes["hard-only"] = {"items": "hard-train"}
    for name, run_dir, steps, swap in sources:
        path = (out / f"{name}.jsonl").resolve()
        mixes[name] = level_mix(write_teacher_items(run_dir, steps, path, swap))
        chains.append((name, path))
    (out / "sources.json").write_text(json.dumps(mixes))
    overrides = ["teacher.datasets_per_step=1", "student.students_per_dataset=1", "student.steps=100", *args.set]
    config = [args.config] if args.config else []
    wait_all(out, {name: run_chain(name, out, args.chain_steps, args.k, config, overrides, path)
                   for name, path in chains})
    jobs = [("base", out / chains[0][0], args.k, args.seed, args.eval_set)] + [
        (name, out / name, args.k, args.seed, args.eval_set) for name, _ in chains]
    evaluate_all(out, jobs, args.workers)
    report(out, args.k)


if __name__ == "__main__":
    main()
