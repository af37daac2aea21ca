"""The `soar` command line: a thin shell over the library (argparse; each command's help has an example).

Errors users can cause (bad config, missing model, corrupt data) print one line `soar: error: ...` and
exit with status 2; nothing else is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import random
import sys
from pathlib import Path

from soar_agent import __version__

REPO_CURRICULA = Path(__file__).resolve().parent.parent / "curricula"
HARD_SET_DIR = REPO_CURRICULA / "hard"


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def shipped_hard_set(domain_name: str, split: str) -> Path:
    return HARD_SET_DIR / f"{domain_name}-hard-{split}.jsonl"


def _parse_levels(text: str, domain) -> list[int]:
    if text == "all":
        return list(domain.LEVELS)
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--levels: expected 'all' or comma-separated integers, got {text!r}") from None
    bad = [level for level in levels if level not in domain.LEVELS]
    if bad or not levels:
        raise UserError(f"--levels: {bad or text!r} outside the domain's levels {list(domain.LEVELS)}")
    return levels


def _load(model_path: str, dtype: str = "auto", engine: str = "hf", device: str = "auto"):
    from soar_agent.engine import make_engine
    from soar_agent.models import load_model, load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path, dtype=dtype, device=device) if engine == "hf" else None  # vLLM loads its own
    return model, tokenizer, make_engine(engine, model, tokenizer, resolve_model_path(model_path), dtype)


def _require_strong_sandbox(domain_name: str, allow_weak: bool) -> None:
    """The code and program domains run model-written code in the sandbox: refuse them while one of its
    layers is missing on this machine (the sandbox has already warned which), unless the user says so."""
    if domain_name not in ("code", "program") or allow_weak:
        return
    from soar_agent.sandbox import layers

    missing = [item.split(" (")[0] for item in layers().missing]
    if missing:
        raise UserError(f"the {domain_name} domain runs untrusted code and this machine's sandbox lacks "
                        f"{', '.join(missing)}: pass --allow-weak-sandbox to run it anyway")


def _problems_from_file(path: str, domain) -> list:
    from soar_agent.mining import read_jsonl

    if not Path(path).is_file():
        raise UserError(f"{path}: no such data file")
    if hasattr(domain, "load_problems"):
        return domain.load_problems(path)
    return read_jsonl(Path(path), domain.NAME)


# ---------------------------------------------------------------- soar eval


def cmd_eval(args) -> int:
    """Greedy accuracy and pass@k of a model on a domain, per level.

    Example: soar eval --model default --domain arith --levels 1,2,3 --samples 8 --json
    """
    from soar_agent.evaluation import default_ks, evaluate_problems, summarize
    from soar_agent.tasks import generate_problems, get_domain
    from soar_agent.tasks.chat import for_model

    domain = get_domain(args.domain)
    _require_strong_sandbox(domain.NAME, args.allow_weak_sandbox)
    if args.data:
        problems = _problems_from_file(args.data, domain)
    elif hasattr(domain, "generate"):
        levels = _parse_levels(args.levels, domain)
        rng = random.Random(args.seed)
        problems = generate_problems(domain, [lv for lv in levels for _ in range(args.per_level)], rng)
    else:
        raise UserError(f"--domain {args.domain}: a dataset domain needs --data FILE.jsonl")
    model, tokenizer, engine = _load(args.model, engine=args.engine)
    domain = for_model(domain, tokenizer)  # an instruct model's chat template, when it has one
    results = evaluate_problems(engine, domain, problems, samples=args.samples, greedy=True,
                                temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed)
    summary = summarize(results, default_ks(args.samples) if args.samples else [])
    summary.update(model=str(args.model), domain=args.domain, samples=args.samples,
                   tokens_per_second=round(engine.stats.tokens_per_second, 1))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    ks = [key for key in summary if key.startswith("pass@")]
    table = Table(title=f"{args.domain} on {args.model} ({args.samples} samples/problem)")
    for column in ["level", "problems", "greedy"] + ks:
        table.add_column(column, justify="right")
    rows = summary.get("levels", {}) or {"all": summary}
    for level, figures in rows.items():
        table.add_row(level, str(figures["problems"]), f"{figures.get('greedy_acc', 0):.1%}",
                      *[f"{figures.get(k, 0):.1%}" for k in ks])
    table.add_row("all", str(summary["problems"]), f"{summary.get('greedy_acc', 0):.1%}",
                  *[f"{summary.get(k, 0):.1%}" for k in ks], style="bold")
    Console().print(table)
    levels = summary.get("levels", {})
    edge = next((level for level, figures in levels.items() if figures.get("greedy_acc", 0) < 0.5), None)
    print(f"greedy: share of problems solved by the model's single most likely completion"
          + (f"; pass@k: chance that at least one of k samples is right (unbiased estimate from {args.samples}"
             f" samples per problem at temperature {args.temperature})" if args.samples else "") + ".")
    if levels:
        print(f"edge: level {edge} is the first where greedy falls below 50%" if edge is not None
              else "edge: greedy is at least 50% on every level evaluated")
    print(f"{engine.stats.tokens_per_second:.0f} tokens/s")
    return 0


# ---------------------------------------------------------------- soar mine-hard


def cmd_mine_hard(args) -> int:
    """Keep the problems a model fails k times out of k (fail@k), split train/test, store and write JSONL.

    Example: soar mine-hard --domain arith --levels 5,6,7 --k 128 --pool-per-level 200
    """
    from soar_agent.config import load_config
    from soar_agent.mining import merge_into_jsonl, mine_hard, write_jsonl
    from soar_agent.store import Store
    from soar_agent.tasks import generate_problems, get_domain
    from soar_agent.tasks.chat import for_model

    overrides = list(args.set or [])
    if args.domain:
        overrides.append(f"domain.name={args.domain}")
    for key in ("k", "pool_per_level", "test_fraction", "seed", "max_new_tokens"):
        if getattr(args, key) is not None:
            overrides.append(f"mining.{key}={getattr(args, key)}")
    if args.model:
        overrides.append(f"model.path={args.model}")
    config = load_config(args.config, overrides)
    mining = config.mining
    domain = get_domain(config.domain.name)
    _require_strong_sandbox(domain.NAME, args.allow_weak_sandbox)
    model, tokenizer, engine = _load(config.model.path, config.model.dtype, config.model.engine,
                                     config.model.device)  # fail fast
    domain = for_model(domain, tokenizer, config.model.chat_template)
    if args.data:
        pool = _problems_from_file(args.data, domain)
    elif hasattr(domain, "generate"):
        levels = _parse_levels(args.levels, domain) if args.levels else list(mining.levels or domain.EDGE_LEVELS)
        rng = random.Random(mining.seed)
        pool = generate_problems(domain, [lv for lv in levels for _ in range(mining.pool_per_level)], rng)
    else:
        raise UserError(f"--domain {domain.NAME}: a dataset domain needs --data FILE.jsonl")
    from rich.console import Console

    with _progress_bars(Console(stderr=True)) as progress:
        if hasattr(engine, "on_rows"):  # an upper bound: each round drops the problems already solved
            total, done = len(pool) * mining.k, [0]
            engine.on_rows = lambda rows: done.__setitem__(0, done[0] + rows) or progress(
                f"mining fail@{mining.k} ({len(pool)} problems)", min(done[0], total), total)
        report = mine_hard(engine, domain, pool, mining.k, mining.test_fraction, mining.seed, mining.temperature,
                           mining.max_new_tokens, log=lambda message: print(message, file=sys.stderr, flush=True))
    db_path = Path(args.db or f"runs/mine-{domain.NAME}/soar.db")
    db_path.parent.mkdir(parents=True, exist_ok=True)
    store = Store(db_path)
    run_id = store.create_run(name=f"mine-{domain.NAME}", mode="mine-hard",
                              config={"mining": vars(mining), "model": config.model.path, "domain": domain.NAME},
                              model_path=str(config.model.path))
    provenance = {"k": mining.k, "temperature": mining.temperature, "seed": mining.seed, "model": config.model.path}
    for split, problems in (("train", report.train), ("test", report.test)):
        ids = store.add_problems(run_id=run_id, problems=problems, source="hard", split=split, provenance=provenance)
        store.create_dataset(run_id=run_id, name=f"{domain.NAME}-hard-{split}", kind=f"hard-{split}", problem_ids=ids)
    store.log_event(run_id=run_id, level="info", kind="mine-hard",
                    message=f"{len(report.train)} train + {len(report.test)} test fail@{mining.k} problems",
                    data={"pool": report.pool, "kept": report.kept})
    store.set_run_status(run_id, "complete")
    out_dir = Path(args.out_dir)
    for split, problems in (("train", report.train), ("test", report.test)):
        path = out_dir / f"{domain.NAME}-hard-{split}.jsonl"
        merge_into_jsonl(problems, path) if args.append else write_jsonl(problems, path)
    summary = {"domain": domain.NAME, "k": mining.k, "pool": report.pool, "kept": report.kept,
               "train": len(report.train), "test": len(report.test), "db": str(db_path), "out_dir": str(out_dir)}
    print(json.dumps(summary, indent=2) if args.json else
          f"kept {len(report.train) + len(report.test)} fail@{mining.k} problems per level {report.kept} "
          f"of {report.pool}; wrote {out_dir}/{domain.NAME}-hard-{{train,test}}.jsonl and {db_path}")
    return 0


# ---------------------------------------------------------------- soar pretrain-tiny


def cmd_pretrain_tiny(args) -> int:
    """Pretrain the embedded default model from scratch (seeded; ~30 minutes on 2 CPU cores).

    Example: soar pretrain-tiny --out /tmp/tiny --seed 0
    """
    from soar_agent.pretrain import PretrainArgs, pretrain

    pretrain(PretrainArgs(out=Path(args.out), seed=args.seed, steps=args.steps, lr=args.lr,
                          examples_per_domain=args.examples_per_domain, init=Path(args.init) if args.init else None),
             log=lambda message: print(message, flush=True))
    return 0


# ---------------------------------------------------------------- soar run / status / export / eval-pq


def _deadline(args) -> float | None:
    import datetime as dt
    import time

    if args.hours:
        return time.time() + args.hours * 3600
    if args.until:
        try:
            hour, minute = (int(part) for part in args.until.split(":"))
            now = dt.datetime.now()
            target = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        except ValueError:
            raise UserError(f"--until: expected HH:MM, got {args.until!r}") from None
        if target <= now:
            target += dt.timedelta(days=1)
        return target.timestamp()
    return None


@contextlib.contextmanager
def _progress_bars(console):
    """Rich progress bars with ETA for the agent's long phases (evaluations, teacher sampling, students):
    yields the (label, done, total) callback; a phase's bar goes away when it completes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bars: dict[str, int] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True) as progress:
        def update(label: str, done: int, total: int) -> None:
            if label not in bars:
                bars[label] = progress.add_task(label, total=total)
            progress.update(bars[label], completed=done, total=total)
            if done >= total:
                progress.remove_task(bars.pop(label))

        yield update


def cmd_run(args) -> int:
    """Run the self-improvement loop until stopped (Ctrl-C / SIGTERM finish the current unit), the time
    budget ends or the teacher-step limit is reached; then export the best checkpoint.

    Example: soar run curricula/default.toml --hours 8
             soar run --run-dir runs/default          # resume
    """
    from rich.console import Console

    from soar_agent.agent import Agent, Budget
    from soar_agent.config import load_config

    console = Console(highlight=False, log_path=False)
    from soar_agent.store import quick_check

    overrides = (args.set or []) + ([f"run.mode={args.mode}"] if args.mode else [])  # --mode = --set run.mode
    config = load_config(args.config, overrides) if (args.config or overrides) else None
    run_dir = Path(args.run_dir or Path("runs") / (config.run.name if config else "default"))
    if (run_dir / "soar.db").is_file():  # hours of training must not be written into a damaged store
        quick_check(run_dir / "soar.db")
    _require_strong_sandbox((config.domain.name if config else ""), args.allow_weak_sandbox)
    agent = Agent.open(config, run_dir, log=lambda message: console.log(message))
    _require_strong_sandbox(agent.config.domain.name, args.allow_weak_sandbox)  # a resumed run's own config
    done = sum(s["status"] == "complete" for s in agent.store.teacher_steps(agent.run_id))
    limit = args.max_teacher_steps if args.max_teacher_steps is not None else agent.config.budget.max_teacher_steps
    if args.more_steps is not None:
        if args.more_steps < 1:
            raise UserError(f"--more-steps: expected a positive number of teacher steps, got {args.more_steps}")
        limit = done + args.more_steps
    elif limit and done >= limit:
        raise UserError(f"{run_dir}: the run already has {done} teacher steps and --max-teacher-steps counts the"
                        f" run's total ({limit}): use --more-steps N to add N steps")
    budget = Budget(_deadline(args), limit)
    if budget.deadline is None and agent.config.budget.hours:
        import time

        budget.deadline = time.time() + agent.config.budget.hours * 3600
    with _progress_bars(console) as progress:
        agent.progress = progress
        reason = agent.run(budget)
    console.log(f"stopped: {reason}")
    if not args.no_export:
        out = agent.export("best", None)
        console.log(f"exported the best checkpoint to {out}")
    return 0


def cmd_status(args) -> int:
    """Headless summary of a run: phase, teacher step, promotions, latest hard-test pass@k, budget.

    Example: soar status runs/default --json
    """
    from soar_agent.status import format_status, run_status

    status = run_status(Path(args.run_dir))
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def cmd_export(args) -> int:
    """Write a run's checkpoint as a plain HF model (merged, safetensors) with tokenizer and model card.

    A non-empty --out is replaced only with --force; never the run directory or the model exported.
    Example: soar export runs/default --out exported --checkpoint best
    """
    from soar_agent.agent import Agent

    run_dir = Path(args.run_dir)
    if not (run_dir / "soar.db").is_file():
        raise UserError(f"{run_dir}: not a run directory (no soar.db)")
    agent = Agent.open(None, run_dir, log=lambda message: None, existing_only=True)
    print(agent.export(args.checkpoint, args.out, force=args.force))
    return 0


def cmd_eval_pq(args) -> int:
    """SOAR-PQ: train a fresh base student on the promotion questions plus hard-train, report hard-test pass@k.

    Example: soar eval-pq runs/default --json
    """
    from soar_agent.agent import Agent
    from soar_agent.pq import evaluate_pq

    run_dir = Path(args.run_dir)
    if not (run_dir / "soar.db").is_file():
        raise UserError(f"{run_dir}: not a run directory (no soar.db)")
    agent = Agent.open(None, run_dir, log=lambda message: None, existing_only=True)
    _require_strong_sandbox(agent.config.domain.name, args.allow_weak_sandbox)
    summary = evaluate_pq(agent, steps=args.steps)
    print(json.dumps(summary, indent=2) if args.json else
          " ".join(f"{k} {v:.3f}" for k, v in summary.items() if k.startswith("pass@")))
    return 0


def cmd_tui(args) -> int:
    """Terminal UI: watch a run live, inspect curricula and rollouts, pause/stop/promote, export.

    Example: soar tui runs/default          # without a run: choose one of runs/*/soar.db
    """
    from tui.app import SoarApp, resolve_db  # Textual is imported only for this command (and never torch)

    SoarApp(resolve_db(args.run_dir) if args.run_dir else None).run()
    return 0


# ---------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soar", description="Self-improvement agent for language models (SOAR).")
    parser.add_argument("--version", action="version", version=f"soar-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name, handler):
        description = inspect.cleandoc(handler.__doc__)  # docstrings indent every line but the first
        summary = " ".join(description.split("\n\n")[0].split()).split(". ")[0].rstrip(".")
        sub = commands.add_parser(name, help=summary, description=description,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(handler=handler)
        return sub

    ev = add("eval", cmd_eval)
    ev.add_argument("--model", default="default", help="'default' (embedded) or a local HF model directory")
    ev.add_argument("--domain", default="arith", help="arith | program | math | code | gym:<dataset>")
    ev.add_argument("--levels", default="all", help="'all' or comma-separated levels (built-in domains)")
    ev.add_argument("--data", help="evaluate on the problems of a JSONL file instead of generated ones")
    ev.add_argument("--samples", type=int, default=4, help="sampled completions per problem for pass@k (0 = greedy only)")
    ev.add_argument("--per-level", type=int, default=50, help="generated problems per level")
    ev.add_argument("--temperature", type=float, default=1.0)
    ev.add_argument("--max-new-tokens", type=int, default=400)
    ev.add_argument("--seed", type=int, default=7)
    ev.add_argument("--engine", default="hf", choices=("hf", "vllm"), help="generation engine (vllm needs a GPU)")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.add_argument("--allow-weak-sandbox", action="store_true",
                    help="run the code/program domains even when a sandbox layer is missing on this machine")

    mh = add("mine-hard", cmd_mine_hard)
    mh.add_argument("config", nargs="?", help="run config TOML (its [mining], [model] and [domain] sections)")
    mh.add_argument("--domain", help="arith | program | math | code | gym:<dataset> (default: the config's)")
    mh.add_argument("--model", help="'default' (embedded) or a local HF model directory (default: the config's)")
    mh.add_argument("--levels", help="comma-separated levels to draw the pool from (built-in domains)")
    mh.add_argument("--data", help="pool of problems as JSONL (dataset domains)")
    mh.add_argument("--k", type=int, help="samples per problem; a problem is kept when all k are wrong")
    mh.add_argument("--pool-per-level", type=int, help="generated problems per level to mine from")
    mh.add_argument("--test-fraction", type=float, help="share of the kept problems held out as hard-test")
    mh.add_argument("--seed", type=int, help="seed of the pool and the samples")
    mh.add_argument("--max-new-tokens", type=int, help="token budget per sampled completion")
    mh.add_argument("--db", help="store to write (default runs/mine-<domain>/soar.db)")
    mh.add_argument("--out-dir", default=str(HARD_SET_DIR), help="where to write <domain>-hard-{train,test}.jsonl")
    mh.add_argument("--append", action="store_true", help="add to the JSONL sets in --out-dir instead of replacing them")
    mh.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config field")
    mh.add_argument("--json", action="store_true", help="print the report as JSON")
    mh.add_argument("--allow-weak-sandbox", action="store_true",
                    help="run the code/program domains even when a sandbox layer is missing on this machine")

    pt = add("pretrain-tiny", cmd_pretrain_tiny)
    pt.add_argument("--out", required=True, help="directory to write the HF model to")
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--steps", type=int, default=2400)
    pt.add_argument("--examples-per-domain", type=int, default=60000)
    pt.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine schedule)")
    pt.add_argument("--init", help="continue training this model directory (second stage)")

    rn = add("run", cmd_run)
    rn.add_argument("config", nargs="?", help="run config TOML (default: the embedded default)")
    rn.add_argument("--run-dir", help="run directory (default runs/<run.name>); an existing run resumes")
    limit = rn.add_mutually_exclusive_group()
    limit.add_argument("--hours", type=float, help="stop after this many hours")
    limit.add_argument("--until", help="stop at this local time (HH:MM)")
    limit.add_argument("--max-teacher-steps", type=int, help="stop once the run has this many teacher steps")
    limit.add_argument("--more-steps", type=int, metavar="N", help="stop after N more teacher steps (on a resumed run)")
    rn.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config field")
    rn.add_argument("--mode", choices=("soar", "hard-only", "intrinsic", "curated"),
                    help="run.mode: soar, or a baseline/ablation (same as --set run.mode=MODE)")
    rn.add_argument("--no-export", action="store_true", help="do not export the best checkpoint at the end")
    rn.add_argument("--allow-weak-sandbox", action="store_true",
                    help="run the code/program domains even when a sandbox layer is missing on this machine")

    st = add("status", cmd_status)
    st.add_argument("run_dir", help="the run's directory (holding soar.db), e.g. runs/default")
    st.add_argument("--json", action="store_true", help="print every figure as JSON (for scripts)")

    ex = add("export", cmd_export)
    ex.add_argument("run_dir", help="the run's directory (holding soar.db)")
    ex.add_argument("--out", required=True, help="directory to write the Hugging Face model to")
    ex.add_argument("--checkpoint", default="best", help="best | latest | checkpoint id")
    ex.add_argument("--force", action="store_true",
                    help="replace a non-empty --out directory (never the run itself or the model exported)")

    pq = add("eval-pq", cmd_eval_pq)
    pq.add_argument("run_dir", help="the run's directory (holding soar.db)")
    pq.add_argument("--steps", type=int, help="student RL steps (default: 2 x student.steps x promotions, min student.steps)")
    pq.add_argument("--json", action="store_true", help="print JSON instead of one line")
    pq.add_argument("--allow-weak-sandbox", action="store_true",
                    help="run the code/program domains even when a sandbox layer is missing on this machine")

    tu = add("tui", cmd_tui)
    tu.add_argument("run_dir", nargs="?", help="the run's directory (default: choose among runs/*)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from soar_agent.config import ConfigError
    from soar_agent.models import ModelLoadError
    from soar_agent.store import StoreError
    from soar_agent.tasks.base import RejectedItem

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (UserError, ConfigError, ModelLoadError, RejectedItem, ValueError, FileNotFoundError, StoreError) as error:
        print(f"soar: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soar: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
