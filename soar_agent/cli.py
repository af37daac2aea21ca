"""The `soar` command line: a thin shell over the library (argparse; each command's help has an example).

Errors users can cause (bad config, missing model, corrupt data) print one line `soar: error: ...` and
exit with status 2; nothing else is printed. A full disk (or quota) prints one line naming the file that could
not be written and how to go on, and exits with status 3 (EXIT_DISK_FULL): nothing already stored is lost.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import random
import sys
import tempfile
from pathlib import Path

from soar_agent import __version__
from soar_agent.pq import PQ_TRAINING_STEPS

REPO_CURRICULA = Path(__file__).resolve().parent.parent / "curricula"
HARD_SET_DIR = REPO_CURRICULA / "hard"


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


EXIT_USER_ERROR = 2
EXIT_DISK_FULL = 3  # distinct from bad input: the same command works again once there is space


# Bounds of the command-line sizes that are not config fields (those take the config's own bounds):
# generous for a GPU box, and never large enough to exhaust memory before the first problem is sampled.
MAX_SAMPLES = 1024  # eval --samples
MAX_PER_LEVEL = 100_000  # eval --per-level
MAX_NEW_TOKENS = 32_768  # eval --max-new-tokens
MAX_TEMPERATURE = 10.0
MAX_SEED = 2**31 - 1
MAX_PQ_STEPS = 100_000  # eval-pq --steps
MAX_PRETRAIN_STEPS = 1_000_000
MAX_PRETRAIN_EXAMPLES = 10_000_000


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The docstring's layout kept, and each option's default shown where it has one worth showing (not a
    flag's False, not a None that the help text explains)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default == argparse.SUPPRESS or "default" in text
                or not (action.option_strings or action.nargs in ("?", "*"))):
            return text
        return text + " (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error format: one line `soar: error: ...`, exit status 2 (no usage block)."""

    def error(self, message: str):
        sys.stderr.write(f"soar: error: {_one_line(message)} (see {self.prog} --help)\n")
        sys.exit(2)


def _one_line(text: str) -> str:
    """`text` with line breaks and other control characters escaped: an error is always one line."""
    return "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in str(text))


def _whole(text: str) -> int:
    text = text.strip()
    if not text.lstrip("+-").isascii() or not text.lstrip("+-").isdigit() or len(text) > 30:
        raise ValueError(text)
    return int(text)


def _integer(lo: int, hi: int):
    """argparse type: an integer in [lo, hi] (ASCII digits)."""
    def parse(text: str) -> int:
        try:
            value = _whole(text)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer in [{lo}, {hi}], got {text[:40]!r}")
        return value

    return parse


def _number(lo: float, hi: float, low_open: bool = False, high_open: bool = False):
    """argparse type: a finite number in [lo, hi] (or with an open end); nan and inf are refused."""
    def parse(text: str) -> float:
        try:
            value = float(text) if len(text) <= 40 else math.nan
        except ValueError:
            value = math.nan
        ok = math.isfinite(value) and (value > lo if low_open else value >= lo) and (
            value < hi if high_open else value <= hi)
        if not ok:
            interval = f"{'(' if low_open else '['}{lo:g}, {hi:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text[:40]!r}")
        return value

    return parse


def _config_meta(dotted: str) -> dict:
    """A config field's metadata (help and bounds) plus its type under "type"."""
    import dataclasses
    import typing

    from soar_agent.config import RunConfig

    section, key = dotted.split(".")
    section_cls = typing.get_type_hints(RunConfig)[section]
    field = next(f for f in dataclasses.fields(section_cls) if f.name == key)
    return {**field.metadata, "type": typing.get_type_hints(section_cls)[key]}


def _config_bound(dotted: str):
    """argparse type for an option that sets a config field: the field's own type and bounds."""
    meta = _config_meta(dotted)
    tp = meta["type"]
    if tp is int:
        return _integer(meta.get("ge", meta.get("gt", -MAX_SEED)), meta.get("le", MAX_SEED))
    return _number(meta.get("ge", meta.get("gt", 0.0)), meta.get("le", meta.get("lt", 1e6)),
                   low_open="gt" in meta, high_open="lt" in meta)


def _clock_time(text: str) -> tuple[int, int]:
    """argparse type for --until: HH:MM, a local time of day."""
    try:
        hour, minute = (_whole(part) for part in text.split(":"))
    except ValueError:
        hour = minute = -1
    if not (0 <= hour <= 23 and 0 <= minute <= 59):
        raise argparse.ArgumentTypeError(f"expected a local time HH:MM (00:00 to 23:59), got {text[:40]!r}")
    return hour, minute


def _writable_directory(path: Path, what: str) -> None:
    """UserError naming `path` unless it is a directory that can be written, or one that can be created
    (a file in the way, a parent that is not writable). Checked before any work starts; nothing is created:
    a command that fails later leaves no empty directory behind."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: {what} is a file, not a directory")
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise UserError(f"{path}: {what} cannot be created: {existing} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):  # root passes os.access checks that the filesystem refuses
            pass
    except OSError as error:
        raise UserError(f"{path}: {what} is not writable ({error.strerror or error})") from None


def _check_store_target(db: Path) -> None:
    """`mine-hard --db`: a store file that can be written (an existing one must be a soar store), checked
    before the model is loaded; the store (and its directory) is created only when there are results."""
    from soar_agent.store import Store

    if db.is_dir():
        raise UserError(f"{db}: --db is a directory, not a store file")
    try:
        _writable_directory(db.parent, "directory")
    except UserError as error:
        raise UserError(f"{db}: --db cannot be written: {error}") from None
    if db.exists():
        with Store(db, readonly=True):  # StoreError (one line) when it is not a soar store
            pass


def shipped_hard_set(domain_name: str, split: str) -> Path:
    return HARD_SET_DIR / f"{domain_name}-hard-{split}.jsonl"


def _parse_levels(text: str, domain) -> list[int]:
    if text == "all":
        return list(domain.LEVELS)
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--levels: expected 'all' or comma-separated integers, got {text!r}") from None
    levels = list(dict.fromkeys(levels))  # `1,1,1,...` is level 1 once: sizes stay bounded by --per-level
    bad = [level for level in levels if level not in domain.LEVELS]
    if bad or not levels:
        raise UserError(f"--levels: {bad or text!r} outside the domain's levels {list(domain.LEVELS)}")
    return levels


def _load(model_path: str, dtype: str = "auto", engine: str = "hf", device: str = "auto", tokenizer=None):
    from soar_agent.engine import make_engine
    from soar_agent.models import load_model, load_tokenizer, resolve_model_path

    tokenizer = tokenizer or load_tokenizer(model_path)
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
    from soar_agent.tasks import load_problem_file

    return load_problem_file(path, domain)


def _fitting(problems: list, domain, tokenizer, model_path, max_new_tokens: int, option: str,
             data: str | None) -> list:
    """The problems whose prompt fits the model's context with `max_new_tokens` for the completion
    (evaluation.prompt_room). A user's data file with one that does not is an error naming its line;
    generated problems that do not fit are skipped with a counted note (all skipped: an error)."""
    from soar_agent.evaluation import refuse_long_prompts, too_long, too_long_reason
    from soar_agent.models import context_length

    context = context_length(model_path, tokenizer)
    if data:
        refuse_long_prompts(data, problems, domain, tokenizer, context, max_new_tokens, option)
        return problems
    refused = too_long(domain, tokenizer, problems, context, max_new_tokens)
    if not refused:
        return problems
    index, tokens = max(refused, key=lambda item: item[1])
    reason = too_long_reason(tokens, context, max_new_tokens, option)
    if len(refused) == len(problems):
        raise UserError(f"every generated problem is too long: {reason}")
    print(f"note: {len(refused)} of {len(problems)} generated problems skipped (the longest: {reason})",
          file=sys.stderr)
    skipped = {index for index, _ in refused}
    return [problem for index, problem in enumerate(problems) if index not in skipped]


# ---------------------------------------------------------------- soar eval


def cmd_eval(args) -> int:
    """Greedy accuracy and pass@k of a model on a domain, per level.

    Example: soar eval --model default --domain arith --levels 1,2,3 --samples 8 --json
    """
    from soar_agent.evaluation import default_ks, evaluate_problems, summarize
    from soar_agent.models import load_tokenizer
    from soar_agent.tasks import get_domain
    from soar_agent.tasks.chat import for_model

    domain = get_domain(args.domain)
    _require_strong_sandbox(domain.NAME, args.allow_weak_sandbox)
    problems = _eval_problems(args, domain)
    tokenizer = load_tokenizer(args.model)
    domain = for_model(domain, tokenizer)  # an instruct model's chat template, when it has one
    problems = _fitting(problems, domain, tokenizer, args.model, args.max_new_tokens, "--max-new-tokens", args.data)
    model, tokenizer, engine = _load(args.model, engine=args.engine, tokenizer=tokenizer)
    from rich.console import Console

    with _progress_bars(Console(stderr=True)) as progress:  # minutes: a bar with ETA, on stderr (--json stays clean)
        _track_eval_progress(engine, progress, len(problems), args.samples)
        results = evaluate_problems(engine, domain, problems, samples=args.samples, greedy=True,
                                    temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed)
    summary = summarize(results, default_ks(args.samples) if args.samples else [])
    summary.update(model=str(args.model), domain=args.domain, samples=args.samples,
                   tokens_per_second=round(engine.stats.tokens_per_second, 1))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    _print_eval_table(args, summary)
    _print_eval_notes(args, summary, engine)
    return 0


def _eval_problems(args, domain) -> list:
    """The problems `soar eval` scores: those of --data, else generated per level."""
    from soar_agent.tasks import generate_problems

    if args.data:
        return _problems_from_file(args.data, domain)
    if hasattr(domain, "generate"):
        levels = _parse_levels(args.levels, domain)
        rng = random.Random(args.seed)
        return generate_problems(domain, [lv for lv in levels for _ in range(args.per_level)], rng)
    raise UserError(f"--domain {args.domain}: a dataset domain needs --data FILE.jsonl")


def _track_eval_progress(engine, progress, problems: int, samples: int) -> None:
    if hasattr(engine, "on_rows"):  # every completion: one greedy and --samples sampled per problem
        total, done = problems * (1 + samples), [0]
        label = f"evaluating {problems} problems (greedy + {samples} samples each)"
        progress(label, 0, total)
        engine.on_rows = lambda rows: done.__setitem__(0, done[0] + rows) or progress(
            label, min(done[0], total), total)


def _print_eval_table(args, summary: dict) -> None:
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


def _print_eval_notes(args, summary: dict, engine) -> None:
    """What the table's columns mean, the level where greedy drops below half, and the speed."""
    levels = summary.get("levels", {})
    edge = next((level for level, figures in levels.items() if figures.get("greedy_acc", 0) < 0.5), None)
    print("greedy: share of problems solved by the model's single most likely completion"
          + (f"; pass@k: chance that at least one of k samples is right (unbiased estimate from {args.samples}"
             f" samples per problem at temperature {args.temperature})" if args.samples else "") + ".")
    if levels:
        print(f"edge: level {edge} is the first where greedy falls below 50%" if edge is not None
              else "edge: greedy is at least 50% on every level evaluated")
    print(f"{engine.stats.tokens_per_second:.0f} tokens/s")


# ---------------------------------------------------------------- soar mine-hard


def cmd_mine_hard(args) -> int:
    """Keep the problems a model fails k times out of k (fail@k), split train/val/test, store and write JSONL.

    Example: soar mine-hard --domain arith --levels 5,6,7 --k 128 --pool-per-level 200
    """
    from soar_agent.mining import SPLITS
    from soar_agent.models import load_tokenizer
    from soar_agent.tasks import get_domain
    from soar_agent.tasks.chat import for_model

    config = _mining_config(args)
    mining = config.mining
    domain = get_domain(config.domain.name)
    _require_strong_sandbox(domain.NAME, args.allow_weak_sandbox)
    # everything the user named is checked before the model is loaded and sampled for minutes
    db_path = Path(args.db or f"runs/mine-{domain.NAME}/soar.db")
    _check_store_target(db_path)
    out_dir = Path(args.out_dir)
    _writable_directory(out_dir, "--out-dir")
    pool = _mining_pool(args, domain, mining)
    tokenizer = load_tokenizer(config.model.path)
    domain = for_model(domain, tokenizer, config.model.chat_template)
    pool = _fitting(pool, domain, tokenizer, config.model.path, mining.max_new_tokens, "mining.max_new_tokens",
                    args.data)
    model, tokenizer, engine = _load(config.model.path, config.model.dtype, config.model.engine,
                                     config.model.device, tokenizer)
    report = _mine_with_progress(args, engine, domain, pool, mining, out_dir)
    written = [split for split in SPLITS if not args.split or split == args.split]
    # the sets first: they are what hours of sampling made, and a store that refuses a row must not lose them
    _write_mined_sets(report, written, out_dir, domain.NAME, args.append)
    _store_mined_sets(report, written, db_path, domain.NAME, config)
    summary = {"domain": domain.NAME, "k": mining.k, "pool": report.pool, "kept": report.kept,
               **{split: len(getattr(report, split)) for split in written}, "db": str(db_path),
               "out_dir": str(out_dir)}
    print(json.dumps(summary, indent=2) if args.json else
          f"kept {sum(report.kept.values())} fail@{mining.k} problems per level {report.kept} "
          f"of {report.pool}; wrote {out_dir}/{domain.NAME}-hard-{{{','.join(written)}}}.jsonl and {db_path}")
    return 0


def _mining_config(args):
    """The run config with --set applied, then the mine-hard options over it."""
    from soar_agent.config import ConfigError, apply_overrides, load_config

    flags = []  # (option, override): applied after --set, and an error names the option the user typed
    if args.domain:
        flags.append(("--domain", f"domain.name={args.domain}"))
    for key in ("k", "pool_per_level", "test_fraction", "val_fraction", "seed", "max_new_tokens"):
        if getattr(args, key) is not None:
            flags.append((f"--{key.replace('_', '-')}", f"mining.{key}={getattr(args, key)}"))
    if args.model:
        flags.append(("--model", f"model.path={args.model}"))
    config = load_config(args.config, list(args.set or []))
    for option, override in flags:
        try:
            config = apply_overrides(config, [override])
        except ConfigError as error:
            raise ConfigError(str(error).replace(f"--set {override.split('=', 1)[0]}", option, 1)) from None
    mining = config.mining
    if not args.split and mining.test_fraction + mining.val_fraction >= 1:
        raise UserError(f"mining.test_fraction + mining.val_fraction: {mining.test_fraction} + {mining.val_fraction}"
                        " leaves no hard-train; their sum must be below 1")
    return config


def _mining_pool(args, domain, mining) -> list:
    """The problems to mine: those of --data, else generated per level."""
    from soar_agent.tasks import generate_problems

    if args.data:
        return _problems_from_file(args.data, domain)
    if hasattr(domain, "generate"):
        levels = _parse_levels(args.levels, domain) if args.levels else list(mining.levels or domain.EDGE_LEVELS)
        if [level for level in levels if level not in domain.LEVELS]:  # a generator past its levels may not end
            raise UserError(f"mining.levels: {[lv for lv in levels if lv not in domain.LEVELS]} outside the"
                            f" {domain.NAME} domain's levels {list(domain.LEVELS)}")
        rng = random.Random(mining.seed)
        return generate_problems(domain, [lv for lv in levels for _ in range(mining.pool_per_level)], rng)
    raise UserError(f"--domain {domain.NAME}: a dataset domain needs --data FILE.jsonl")


def _mine_with_progress(args, engine, domain, pool: list, mining, out_dir: Path):
    from rich.console import Console

    from soar_agent.mining import SPLITS, mine_hard, read_jsonl

    with _progress_bars(Console(stderr=True)) as progress:
        if hasattr(engine, "on_rows"):  # an upper bound: each round drops the problems already solved
            total, done = len(pool) * mining.k, [0]
            engine.on_rows = lambda rows: done.__setitem__(0, done[0] + rows) or progress(
                f"mining fail@{mining.k} ({len(pool)} problems)", min(done[0], total), total)
        # the sets already in --out-dir: a question mined again never lands in two of them
        existing = {p.question for split in SPLITS if (out_dir / f"{domain.NAME}-hard-{split}.jsonl").is_file()
                    for p in read_jsonl(out_dir / f"{domain.NAME}-hard-{split}.jsonl", domain.NAME)}
        return mine_hard(engine, domain, pool, mining.k, mining.test_fraction, mining.val_fraction, mining.seed,
                         mining.temperature, mining.max_new_tokens,
                         log=lambda message: print(message, file=sys.stderr, flush=True), only=args.split,
                         exclude=existing if (args.append or args.split) else set())


def _write_mined_sets(report, written: list, out_dir: Path, domain_name: str, append: bool) -> None:
    from soar_agent.mining import merge_into_jsonl, write_jsonl

    for split in written:
        path = out_dir / f"{domain_name}-hard-{split}.jsonl"
        merge_into_jsonl(getattr(report, split), path) if append else write_jsonl(getattr(report, split), path)


def _store_mined_sets(report, written: list, db_path: Path, domain_name: str, config) -> None:
    """A complete mine-hard run in the store, one dataset per set written."""
    from soar_agent.store import Store

    mining = config.mining
    store = Store(db_path)
    run_id = store.create_run(name=f"mine-{domain_name}", mode="mine-hard",
                              config={"mining": vars(mining), "model": config.model.path, "domain": domain_name},
                              model_path=str(config.model.path))
    provenance = {"k": mining.k, "temperature": mining.temperature, "seed": mining.seed, "model": config.model.path}
    for split in written:
        problems = getattr(report, split)
        ids = store.add_problems(run_id=run_id, problems=problems, source="hard", split=split, provenance=provenance)
        store.create_dataset(run_id=run_id, name=f"{domain_name}-hard-{split}", kind=f"hard-{split}", problem_ids=ids)
    store.log_event(run_id=run_id, level="info", kind="mine-hard",
                    message=" + ".join(f"{len(getattr(report, split))} {split}" for split in written)
                    + f" fail@{mining.k} problems",
                    data={"pool": report.pool, "kept": report.kept})
    store.set_run_status(run_id, "complete")


# ---------------------------------------------------------------- soar pretrain-tiny


def cmd_pretrain_tiny(args) -> int:
    """Pretrain the embedded default model from scratch (seeded; ~30 minutes on 2 CPU cores).

    A non-empty --out is replaced only with --force; never the current directory or the --init model.
    Example: soar pretrain-tiny --out /tmp/tiny --seed 0
    """
    from soar_agent.export import check_model_target
    from soar_agent.models import resolve_model_path
    from soar_agent.pretrain import PretrainArgs, pretrain

    out = Path(args.out)  # checked before the corpus is built and minutes of training start
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out is a file, not a directory")
    _writable_directory(out.parent, "--out's directory")
    init = [resolve_model_path(args.init)] if args.init else []  # ModelLoadError naming it
    check_model_target(out, init, args.force, what="the --init model")  # the save deletes what --out holds
    pretrain(PretrainArgs(out=Path(args.out), seed=args.seed, steps=args.steps, lr=args.lr,
                          examples_per_domain=args.examples_per_domain, init=Path(args.init) if args.init else None),
             log=lambda message: print(message, flush=True))
    return 0


# ---------------------------------------------------------------- soar run / status / export / eval-pq


def _deadline(args) -> float | None:
    """Epoch seconds of --hours / --until (both parsed and bounded by argparse), else None."""
    import datetime as dt
    import time

    if args.hours is not None:
        return time.time() + args.hours * 3600
    if args.until is not None:
        now = dt.datetime.now()
        target = now.replace(hour=args.until[0], minute=args.until[1], second=0, microsecond=0)
        if target <= now:
            target += dt.timedelta(days=1)
        return target.timestamp()
    return None


def _eta_column():
    """The bars' ETA: the time left at the phase's average pace so far (elapsed / done x left). Rich's own
    TimeRemainingColumn estimates the speed from the last 30 s only, and shows -:--:-- for every phase whose
    updates come further apart: an evaluation batch, a training step of the final training, a sampling round."""
    import datetime

    from rich.progress import ProgressColumn
    from rich.text import Text

    class AveragePaceETA(ProgressColumn):
        def render(self, task) -> Text:
            if task.finished:
                return Text("0:00:00", style="progress.remaining")
            if not task.total or not task.completed or not task.elapsed:
                return Text("-:--:--", style="progress.remaining")
            left = task.elapsed / task.completed * (task.total - task.completed)
            return Text(str(datetime.timedelta(seconds=int(left))), style="progress.remaining")

    return AveragePaceETA()


@contextlib.contextmanager
def _progress_bars(console):
    """Rich progress bars with ETA for the agent's long phases (evaluations, teacher sampling, students):
    yields the (label, done, total) callback; a phase's bar goes away when it completes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bars: dict[str, int] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), _eta_column(), console=console, transient=True) as progress:
        def update(label: str, done: int, total: int) -> None:
            if label not in bars:
                bars[label] = progress.add_task(label, total=total)
            progress.update(bars[label], completed=done, total=total)
            if done >= total:
                progress.remove_task(bars.pop(label))

        yield update


def _stored_time_budget(run_dir: Path):
    """The time budget a run's last session left (status.time_budget), read before this command writes to
    the store: the resume's own event would count the time the run was down as used."""
    from soar_agent.status import time_budget
    from soar_agent.store import Store

    if not (run_dir / "soar.db").is_file():
        return None
    with Store(run_dir / "soar.db", readonly=True) as store:
        run = store.latest_run()
        return time_budget(store, run["id"]) if run else None


def _continue_budget(agent, budget, run_dir: Path, previous) -> None:
    """A run started (or resumed) without a budget of its own continues the time budget its last session had
    (`previous`): the rest of it (the time the run was down does not count; an --until keeps its clock time);
    a run without one gets budget.hours from its config."""
    import time

    if previous is None:
        if agent.config.budget.hours:
            budget.deadline = time.time() + agent.config.budget.hours * 3600
        return
    if previous.ended or previous.left() <= 0:
        untrained = agent.ends_with_final_training() and not agent.latest_checkpoint("pq")
        spent = ("its --until time has passed" if previous.until
                 else f"{previous.used / 3600:.2f} of {previous.seconds / 3600:.2f} h used")
        raise UserError(f"{run_dir}: the run's time budget is over ({spent}): give it more with --hours H"
                        + (f" (or soar eval-pq {run_dir} for its final training, which did not finish)"
                           if untrained else ""))
    now = time.time()
    budget.started = now - previous.used
    budget.deadline, budget.until = now + previous.left(now), previous.until
    agent.log(f"continuing the run's time budget: {previous.left(now) / 3600:.2f} h left"
              + ("" if previous.until else f" of {previous.seconds / 3600:.2f} h"))


def cmd_run(args) -> int:
    """Run the self-improvement loop until stopped (Ctrl-C / SIGTERM finish the current unit), the time
    budget ends or the teacher-step limit is reached. A budget's end is followed by the final training (a
    fresh student trained long on the questions the reward found helpful, budget.pq_steps; its time is kept free inside
    --hours), and that student is exported; after a stop, or without it, the best checkpoint is.

    Example: soar run curricula/default.toml --hours 8
             soar run --run-dir runs/default          # resume
    """
    from soar_agent.config import load_config
    from soar_agent.runlock import hold_run_dir

    if args.run_dir is not None and not args.run_dir.strip():  # not silently runs/default
        raise UserError(f"--run-dir: expected a directory, got {args.run_dir!r} (leave it out for runs/<run.name>)")
    overrides = (args.set or []) + ([f"run.mode={args.mode}"] if args.mode else [])  # --mode = --set run.mode
    config = load_config(args.config, overrides) if (args.config or overrides) else None
    run_dir = Path(args.run_dir or Path("runs") / (config.run.name if config else "default"))
    _writable_directory(run_dir, "run directory")  # a file in the way or a read-only parent: before any work
    args.go_on_with = f"every unit stored before it is kept: free space, then resume with soar run --run-dir {run_dir}"
    with hold_run_dir(run_dir, "soar run"):  # before the store is read: a second agent would redo its units
        return _run_session(args, config, run_dir)


def _run_session(args, config, run_dir: Path) -> int:
    """cmd_run once the run directory is held."""
    from rich.console import Console

    from soar_agent.agent import Agent, Budget
    from soar_agent.diskfull import is_disk_full
    from soar_agent.store import quick_check

    console = Console(highlight=False, log_path=False)
    if (run_dir / "soar.db").is_file():  # hours of training must not be written into a damaged store
        quick_check(run_dir / "soar.db")
    _require_strong_sandbox((config.domain.name if config else ""), args.allow_weak_sandbox)
    deadline = _deadline(args)  # counted from the command's start
    continues = all(getattr(args, name) is None for name in ("hours", "until", "max_teacher_steps", "more_steps"))
    previous = _stored_time_budget(run_dir) if continues else None
    resumed = (run_dir / "soar.db").is_file()
    given = None if args.config else {o.split("=", 1)[0].strip() for o in (args.set or [])} | (
        {"run.mode"} if args.mode else set())  # what the user set: a resume names those it ignores
    agent = Agent.open(config, run_dir, log=lambda message: console.log(message), given=given)
    _require_strong_sandbox(agent.config.domain.name, args.allow_weak_sandbox)  # a resumed run's own config
    done = sum(s["status"] == "complete" for s in agent.store.teacher_steps(agent.run_id))
    limit = args.max_teacher_steps if args.max_teacher_steps is not None else agent.config.budget.max_teacher_steps
    if continues and not limit and (session := agent.store.last_session(agent.run_id)):
        limit = int(session["data"].get("max_teacher_steps") or 0)  # the last session's --max-teacher-steps
    if args.more_steps is not None:  # argparse: at least 1
        limit = done + args.more_steps
    elif limit and done >= limit:
        untrained = agent.ends_with_final_training() and not agent.latest_checkpoint("pq")
        raise UserError(f"{run_dir}: the run already has {done} teacher steps and --max-teacher-steps counts the"
                        f" run's total ({limit}): use --more-steps N to add N steps"
                        + (f" (or soar eval-pq {run_dir} for its final training, which did not finish)"
                           if untrained else ""))
    budget = Budget(deadline, limit, until=args.until is not None)
    if continues:
        _continue_budget(agent, budget, run_dir, previous)
    console.log(_opening_line(agent, budget, run_dir, done, resumed))
    with _progress_bars(console) as progress:
        agent.progress = progress
        try:
            reason = agent.run(budget)
        except Exception as error:
            if is_disk_full(error):  # outside a teacher step (an evaluation, the final training)
                _record_write_failure(agent, error)
            raise
    console.log(f"stopped: {reason}")
    if agent.write_error is not None:  # nothing to export onto a full disk, and the session did not finish
        raise agent.write_error
    # the run's model is the PQ student when it ended with one (pq.py: the promoted student is short-trained)
    which = "pq" if agent.final_summary else "best"
    if not args.no_export:
        out = agent.export(which, None)
        console.log(f"exported the {'PQ student' if which == 'pq' else 'best checkpoint'} to {out}")
        if (line := agent.before_and_after(out)) is not None:  # whether the model got better, in one line
            console.print(line, soft_wrap=True)
    if which == "best" and agent.promotions():
        console.log(f"for a student trained long on the rewarded questions: soar eval-pq {run_dir}, then"
                    f" soar export {run_dir} --out DIR --checkpoint pq")
    return 0


def _opening_line(agent, budget, run_dir: Path, done: int, resumed: bool) -> str:
    """What `soar run` is about to do, said before its first minutes of silent work: the run, its budget,
    the plan of a step and where to watch it."""
    import time

    cfg = agent.config
    t, s = cfg.teacher, cfg.student
    run = f"resuming {run_dir} after {done} teacher steps" if resumed else f"new {cfg.run.mode} run in {run_dir}"
    limits = []
    if budget.deadline is not None:
        limits.append(f"until {time.strftime('%a %H:%M', time.localtime(budget.deadline))}"
                      f" ({max(0.0, budget.deadline - time.time()) / 3600:.1f} h)")
    if budget.max_teacher_steps:
        limits.append(f"{budget.max_teacher_steps} teacher steps in all")
    if cfg.run.mode in ("hard-only", "curated"):
        plan = (f"each step {t.datasets_per_step * s.students_per_dataset} {cfg.run.mode} trainings of {s.steps}"
                f" {s.backend} steps")
    else:
        plan = (f"each teacher step writes {t.datasets_per_step} datasets of {t.items_per_dataset} problems and trains"
                f" {s.students_per_dataset} student(s) of {s.steps} {s.backend} steps on each")
    plan += f"; hard-test evaluation every {cfg.eval.every_teacher_steps} steps"
    if agent.ends_with_final_training():
        plan += f"; at the budget's end a final training of {cfg.budget.pq_steps} steps"
    return (f"soar run: {run}; budget: {' and '.join(limits) or 'none (Ctrl-C stops it)'}; {plan};"
            f" watch it with `soar tui {run_dir}` (or `soar status {run_dir}`)")


def _record_write_failure(agent, error: Exception) -> None:
    """Mark the run stopped by `error` when the store can still take it (a failed checkpoint save has
    removed its partial files again); a full store refuses this too, and the run then reads as killed, which
    a resume handles the same way."""
    try:
        agent.store.set_run_status(agent.run_id, "stopped")
        agent.store.log_event(run_id=agent.run_id, level="error", kind="io-error",
                              message=f"cannot write to {agent.paths.root}: {error}; stopping (resume when fixed)")
    except Exception:  # the error the user must see is the first one, raised by the caller
        pass


def cmd_status(args) -> int:
    """Headless summary of a run: phase, teacher step, promotions, latest hard-test pass@k, budget.

    Example: soar status runs/default --json
    """
    from soar_agent.status import format_status, run_status

    if args.profile:
        from soar_agent.profile import format_profile, run_profile
        from soar_agent.store import Store

        db = Path(args.run_dir) / "soar.db"
        if not db.is_file():
            raise UserError(f"{args.run_dir}: not a run directory (no soar.db)")
        with Store(db, readonly=True) as store:
            profile = run_profile(store, store.require_run()["id"])
        print(json.dumps(profile, indent=2) if args.json else format_profile(profile))
        return 0
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
    # which checkpoint (role, step, path; or the base model, said plainly), then the directory written, last
    print(agent.export(args.checkpoint, args.out, force=args.force, log=print))
    return 0


def cmd_eval_pq(args) -> int:
    """SOAR-PQ: train a fresh base student on the rewarded questions (every dataset whose reward beat
    promotion.tau, the promoted ones among them) plus hard-train, report hard-test pass@k.

    The student is kept as the run's `pq` checkpoint: soar export RUN --checkpoint pq --out DIR writes it.
    Example: soar eval-pq runs/default --json
    """
    from soar_agent.agent import Agent
    from soar_agent.pq import evaluate_pq

    from soar_agent.runlock import hold_run_dir

    run_dir = Path(args.run_dir)
    if not (run_dir / "soar.db").is_file():
        raise UserError(f"{run_dir}: not a run directory (no soar.db)")
    args.go_on_with = f"the students kept before it stay: free space, then go on with soar eval-pq {run_dir}"
    with hold_run_dir(run_dir, "soar eval-pq"):  # it writes the run's pq checkpoints as the run's agent
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
    from soar_agent.store import Store
    from tui.app import SoarApp, resolve_db  # Textual is imported only for this command (and never torch)

    db = resolve_db(args.run_dir) if args.run_dir else None
    if db is not None:  # a file that is not a run's store is a one-line error, not a screen that cannot draw
        with Store(db, readonly=True) as store:
            store.require_run()
    SoarApp(db).run()
    return 0


# ---------------------------------------------------------------- entry point


_WEAK_SANDBOX_HELP = "run the code/program domains even when a sandbox layer is missing on this machine"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="soar", description="Self-improvement agent for language models (SOAR).")
    parser.add_argument("--version", action="version", version=f"soar-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_eval_arguments(_add_command(commands, "eval", cmd_eval))
    _add_mine_hard_arguments(_add_command(commands, "mine-hard", cmd_mine_hard))
    _add_pretrain_tiny_arguments(_add_command(commands, "pretrain-tiny", cmd_pretrain_tiny))
    _add_run_arguments(_add_command(commands, "run", cmd_run))
    _add_status_arguments(_add_command(commands, "status", cmd_status))
    _add_export_arguments(_add_command(commands, "export", cmd_export))
    _add_eval_pq_arguments(_add_command(commands, "eval-pq", cmd_eval_pq))
    tu = _add_command(commands, "tui", cmd_tui)
    tu.add_argument("run_dir", nargs="?", help="the run's directory (default: choose among runs/*)")
    return parser


def _add_command(commands, name: str, handler) -> argparse.ArgumentParser:
    """A subcommand whose help is its handler's docstring: the first sentence in the list, all of it in --help."""
    description = inspect.cleandoc(handler.__doc__)  # docstrings indent every line but the first
    summary = " ".join(description.split("\n\n")[0].split()).split(". ")[0].rstrip(".")
    sub = commands.add_parser(name, help=summary, description=description,
                              formatter_class=_HelpFormatter)
    sub.set_defaults(handler=handler)
    return sub


def _add_eval_arguments(ev: argparse.ArgumentParser) -> None:
    ev.add_argument("--model", default="default", help="'default' (embedded) or a local HF model directory")
    ev.add_argument("--domain", default="arith", help="arith | program | math | code | gym:<dataset>")
    ev.add_argument("--levels", default="all", help="'all' or comma-separated levels (built-in domains)")
    ev.add_argument("--data", help="evaluate on the problems of a JSONL file instead of generated ones")
    ev.add_argument("--samples", type=_integer(0, MAX_SAMPLES), default=4,
                    help=f"sampled completions per problem for pass@k (0 = greedy only; at most {MAX_SAMPLES})")
    ev.add_argument("--per-level", type=_integer(1, MAX_PER_LEVEL), default=50,
                    help=f"generated problems per level (at most {MAX_PER_LEVEL})")
    ev.add_argument("--temperature", type=_number(0.0, MAX_TEMPERATURE), default=1.0,
                    help=f"sampling temperature of the pass@k samples (0 to {MAX_TEMPERATURE:g})")
    ev.add_argument("--max-new-tokens", type=_integer(1, MAX_NEW_TOKENS), default=400,
                    help=f"token budget per completion (at most {MAX_NEW_TOKENS}); a prompt that does not fit the"
                         " model's context with it is refused")
    ev.add_argument("--seed", type=_integer(0, MAX_SEED), default=7, help="seed of the generated problems and samples")
    ev.add_argument("--engine", default="hf", choices=("hf", "vllm"), help="generation engine (vllm needs a GPU)")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.add_argument("--allow-weak-sandbox", action="store_true", help=_WEAK_SANDBOX_HELP)


def _add_mine_hard_arguments(mh: argparse.ArgumentParser) -> None:
    mh.add_argument("config", nargs="?", help="run config TOML (its [mining], [model] and [domain] sections)")
    mh.add_argument("--domain", help="arith | program | math | code | gym:<dataset> (default: the config's)")
    mh.add_argument("--model", help="'default' (embedded) or a local HF model directory (default: the config's)")
    mh.add_argument("--levels", help="comma-separated levels to draw the pool from (built-in domains)")
    mh.add_argument("--data", help="pool of problems as JSONL (dataset domains)")
    mh.add_argument("--k", type=_config_bound("mining.k"),
                    help="samples per problem; a problem is kept when all k are wrong (mining.k)")
    mh.add_argument("--pool-per-level", type=_config_bound("mining.pool_per_level"),
                    help="generated problems per level to mine from (mining.pool_per_level)")
    mh.add_argument("--test-fraction", type=_config_bound("mining.test_fraction"),
                    help="share of the kept problems held out as hard-test (mining.test_fraction)")
    mh.add_argument("--val-fraction", type=_config_bound("mining.val_fraction"),
                    help="share of the kept problems kept as hard-val (mining.val_fraction)")
    mh.add_argument("--seed", type=_config_bound("mining.seed"), help="seed of the pool and the samples (mining.seed)")
    mh.add_argument("--max-new-tokens", type=_config_bound("mining.max_new_tokens"),
                    help="token budget per sampled completion (mining.max_new_tokens)")
    mh.add_argument("--db", help="store to write (default runs/mine-<domain>/soar.db)")
    mh.add_argument("--out-dir", default=str(HARD_SET_DIR), help="where to write <domain>-hard-{train,val,test}.jsonl")
    mh.add_argument("--split", choices=("train", "val", "test"),
                    help="write every kept problem to this one set (e.g. add hard-val beside existing sets); the"
                         " questions of the sets already in --out-dir are left out")
    mh.add_argument("--append", action="store_true", help="add to the JSONL sets in --out-dir instead of replacing them")
    mh.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config field")
    mh.add_argument("--json", action="store_true", help="print the report as JSON")
    mh.add_argument("--allow-weak-sandbox", action="store_true", help=_WEAK_SANDBOX_HELP)


def _add_pretrain_tiny_arguments(pt: argparse.ArgumentParser) -> None:
    pt.add_argument("--out", required=True, help="directory to write the HF model to")
    pt.add_argument("--seed", type=_integer(0, MAX_SEED), default=0, help="seed of the data and the weights")
    pt.add_argument("--steps", type=_integer(1, MAX_PRETRAIN_STEPS), default=2400,
                    help=f"optimizer steps (at most {MAX_PRETRAIN_STEPS})")
    pt.add_argument("--examples-per-domain", type=_integer(1, MAX_PRETRAIN_EXAMPLES), default=60000,
                    help=f"generated training examples per domain (at most {MAX_PRETRAIN_EXAMPLES})")
    pt.add_argument("--lr", type=_number(0.0, 1.0, low_open=True), default=2e-3,
                    help="peak learning rate (cosine schedule; in (0, 1])")
    pt.add_argument("--init", help="continue training this model directory (second stage)")
    pt.add_argument("--force", action="store_true",
                    help="replace a non-empty --out directory (never the current directory or the --init model)")


def _add_run_arguments(rn: argparse.ArgumentParser) -> None:
    rn.add_argument("config", nargs="?", help="run config TOML (default: the embedded default)")
    rn.add_argument("--run-dir", help="run directory (default runs/<run.name>); an existing run resumes")
    limit = rn.add_mutually_exclusive_group()
    max_hours, max_steps = _config_meta("budget.hours")["le"], _config_meta("budget.max_teacher_steps")["le"]
    limit.add_argument("--hours", type=_number(0.0, max_hours, low_open=True),
                       help=f"stop after this many hours from now (more than 0, at most {max_hours:g}); a resumed"
                       " run given none of these four limits continues the time and step budget its last session had"
                       " (default: the config's budget.hours and budget.max_teacher_steps; 0 = no limit)")
    limit.add_argument("--until", type=_clock_time, help="stop at this local time (HH:MM)")
    limit.add_argument("--max-teacher-steps", type=_config_bound("budget.max_teacher_steps"),
                       help=f"stop once the run has this many teacher steps (0 = no limit; at most {max_steps})")
    limit.add_argument("--more-steps", type=_integer(1, max_steps), metavar="N",
                       help=f"stop after N more teacher steps (on a resumed run; at most {max_steps})")
    rn.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config field")
    rn.add_argument("--mode", choices=("soar", "hard-only", "intrinsic", "curated"),
                    help="run.mode: soar, or a baseline/ablation (same as --set run.mode=MODE; default: the config's,"
                         " soar)")
    rn.add_argument("--no-export", action="store_true", help="do not export the run's model at the end (the PQ student, else the best)")
    rn.add_argument("--allow-weak-sandbox", action="store_true", help=_WEAK_SANDBOX_HELP)


def _add_status_arguments(st: argparse.ArgumentParser) -> None:
    st.add_argument("run_dir", help="the run's directory (holding soar.db), e.g. runs/default")
    st.add_argument("--json", action="store_true", help="print every figure as JSON (for scripts)")
    st.add_argument("--profile", action="store_true",
                    help="where the run's wall clock went, phase by phase (with --json: as JSON)")


def _add_export_arguments(ex: argparse.ArgumentParser) -> None:
    ex.add_argument("run_dir", help="the run's directory (holding soar.db)")
    ex.add_argument("--out", required=True, help="directory to write the Hugging Face model to")
    ex.add_argument("--checkpoint", default="best",
                    help="best | latest | pq (the PQ student a run ends with, or `soar eval-pq` trained) | checkpoint id")
    ex.add_argument("--force", action="store_true",
                    help="replace a non-empty --out directory (never the run itself or the model exported)")


def _add_eval_pq_arguments(pq: argparse.ArgumentParser) -> None:
    pq.add_argument("run_dir", help="the run's directory (holding soar.db)")
    pq.add_argument("--steps", type=_integer(1, MAX_PQ_STEPS),
                    help=f"student RL steps in all, as a chain of trainings of {PQ_TRAINING_STEPS} steps each"
                         f" (default: the run's budget.pq_steps; at most {MAX_PQ_STEPS})")
    pq.add_argument("--json", action="store_true", help="print JSON instead of one line")
    pq.add_argument("--allow-weak-sandbox", action="store_true", help=_WEAK_SANDBOX_HELP)


def main(argv: list[str] | None = None) -> int:
    from soar_agent.config import ConfigError
    from soar_agent.diskfull import disk_full_error
    from soar_agent.models import ModelLoadError
    from soar_agent.store import StoreError
    from soar_agent.tasks.base import RejectedItem

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help / --version (0), or a bad argument (2, its one line already printed)
        return exit_.code
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("soar: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if (full := disk_full_error(error)) is not None:
            print(f"soar: error: {_one_line(_disk_full_message(full, args))}", file=sys.stderr)
            return EXIT_DISK_FULL
        if isinstance(error, (UserError, ConfigError, ModelLoadError, RejectedItem, ValueError, FileNotFoundError,
                              StoreError)):
            print(f"soar: error: {_one_line(error)}", file=sys.stderr)
            return EXIT_USER_ERROR
        if isinstance(error, OSError):  # the machine refused (permissions): name the file, not a traceback
            where = f"{error.filename}: " if error.filename else ""
            print(f"soar: error: {_one_line(where + (error.strerror or str(error)))}", file=sys.stderr)
            return EXIT_USER_ERROR
        raise


def _disk_full_message(error: BaseException, args) -> str:
    """What filled up (the file that could not be written, its device's free space) and how to go on."""
    import shutil

    filename = getattr(error, "filename", None)
    what = (error.strerror if isinstance(error, OSError) and error.strerror else "no space left on device")
    free = ""
    existing = next((p for p in (Path(filename), *Path(filename).parents) if p.exists()), None) if filename else None
    with contextlib.suppress(OSError):
        free = f" ({shutil.disk_usage(existing).free / 2**20:.1f} MiB free there now)" if existing else ""
    go_on = getattr(args, "go_on_with", None) or "free space, then run the command again"
    return f"{filename + ': ' if filename else ''}{what}{free}; {go_on}"


if __name__ == "__main__":
    sys.exit(main())
