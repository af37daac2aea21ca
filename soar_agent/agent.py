"""The long-running SOAR loop behind `soar run`: teacher -> students -> grounded reward -> promotion.

Units of work, each made durable in one store transaction before the next starts (so `kill -9` loses at
most the unit in progress, and `soar run --run-dir DIR` continues from the last completed one):
  1. teacher sampling: g datasets of n items -> `store.add_curriculum`
  2. each student training (r per dataset, from the current baseline, deterministic seed) -> its weights
     under checkpoints/step-N/ then `store.add_training` with its reward
  3. teacher update + promotion -> teacher checkpoint (weights + optimizer) and, on promotion, the new
     baseline -> `store.complete_teacher_step`
  4. every `eval.every_teacher_steps`: reporting evaluation of the baseline on hard-test and easy levels.
Every seed is derived from (run seed, teacher step, dataset, student), so a redone unit gives the same
result; the teacher's optimizer state lives in its checkpoint.

Modes: `soar` (the paper), `hard-only` (RL directly on hard-train, same student compute per step),
`curated` (the same, on the domain's own problems across its levels or a given JSONL: the paper's "full
curated train set" ceiling), `intrinsic` (teacher rewarded by the Intrinsic-T learnability score instead
of measured improvement). The grounded reward's metric is `reward.metric` (see soar_agent/reward.py).
"""

from __future__ import annotations

import random
import shutil
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import fmean

from soar_agent import evalcache
from soar_agent.config import ConfigError, RunConfig, config_from_dict, config_to_dict
from soar_agent.preflight import check_machine, check_session, check_teacher_items
from soar_agent.store import Store, StoreError, content_hash
from soar_agent.student_job import release_freed_memory
from soar_agent.tasks import generate_problems, get_domain
from soar_agent.tasks.base import Problem

EASY_LEVELS = (1, 2, 3)
EASY_PER_LEVEL = 20
MAX_GARBAGE_STEPS = 3
EVAL_PROBE_SHARE = 0.05  # of a first hard-test evaluation's completions: what its time is projected from
HEARTBEAT_S = 10.0  # inside a unit; status.STALE_S and the TUI's ATTACHED_WITHIN_S allow for gaps


@dataclass
class RunPaths:
    root: Path

    @property
    def db(self) -> Path:
        return self.root / "soar.db"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def exports(self) -> Path:
        return self.root / "exports"


@dataclass
class Budget:
    deadline: float | None = None  # epoch seconds
    max_teacher_steps: int = 0  # 0 = no limit (counts completed steps of the whole run)
    # the budget's start: the session's, or for a resumed budget (status.time_budget) that much earlier as the
    # run's earlier sessions used of it; budget.pq_share is of deadline - started, the whole budget
    started: float = field(default_factory=time.time)
    until: bool = False  # the deadline is a clock time (--until), which a resume keeps, not an amount of time

    def exhausted(self, completed_steps: int) -> str | None:
        if self.deadline is not None and time.time() >= self.deadline:
            return "time budget reached"
        if self.max_teacher_steps and completed_steps >= self.max_teacher_steps:
            return f"{self.max_teacher_steps} teacher steps done"
        return None


def _seed(*parts: int) -> int:
    value = 17
    for part in parts:
        value = (value * 1_000_003 + int(part)) % (2**31 - 1)
    return value


def shipped_hard_set(domain_name: str, split: str) -> Path:
    return Path(__file__).resolve().parent.parent / "curricula" / "hard" / f"{domain_name}-hard-{split}.jsonl"


def load_problem_file(path: Path, domain) -> list[Problem]:
    """A data file's problems (tasks.load_problem_file: one-line errors naming the file and line)."""
    from soar_agent.tasks import load_problem_file as load

    return load(path, domain)


def check_run_config(config: RunConfig) -> tuple[RunConfig, str | None]:
    """Config errors that need the domain or its data files, raised before a run is created (so a bad file
    never leaves a run without its hard sets): every data file the run reads must load, hold problems, and
    hold at least one problem whose prompt fits the model's context with its completion budget
    (evaluation.prompt_room; the others are skipped with a counted note when the run stores them). Errors
    are one line naming the file, the line and the config field. Returns the config to run and a note when
    it differs: reward.metric expert-logprob falls back to sampled where the hard-train questions have no
    expert solutions (math, code, gym; a JSONL without steps), as sft-rlvr students fall back to rloo."""
    from soar_agent.reward import expert_logprob_unusable
    from soar_agent.tasks.base import RejectedItem

    check_machine(config)  # the engine, device and Ray cluster (preflight), before the data files
    domain, cfg = get_domain(config.domain.name), config.domain
    if cfg.curated and not Path(cfg.curated).is_file():
        raise ConfigError(f"domain.curated: {cfg.curated}: no such file")
    if config.run.mode == "curated" and not cfg.curated and not hasattr(domain, "generate"):
        raise ConfigError(f"domain.curated: run.mode = curated on the {domain.NAME} domain needs a JSONL of"
                          " curated training problems (the domain has no generator)")
    s, e = config.student.max_new_tokens, config.eval.max_new_tokens
    files = {  # field -> (file, the completion budget its problems are sampled with)
        "hard_train": (Path(cfg.hard_train) if cfg.hard_train else shipped_hard_set(domain.NAME, "train"),
                       (s, "student.max_new_tokens") if s > e else (e, "eval.max_new_tokens")),
        "hard_test": (Path(cfg.hard_test) if cfg.hard_test else shipped_hard_set(domain.NAME, "test"),
                      (e, "eval.max_new_tokens"))}
    if cfg.curated and config.run.mode == "curated":
        files["curated"] = (Path(cfg.curated), (s, "student.max_new_tokens"))
    loaded = {}
    for name, (path, budget) in files.items():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: {name.replace('_', '-')} set not found (domain.{name})")
        try:
            loaded[name] = load_problem_file(path, domain)
        except RejectedItem as error:
            raise RejectedItem(f"{error} (domain.{name})") from None
    _check_prompt_room(config, domain, {name: (files[name][0], files[name][1], loaded[name]) for name in loaded})
    check_teacher_items(config.run.mode, config.domain.name)  # after the files: a bad one is named first
    if config.reward.metric == "expert-logprob" and (reason := expert_logprob_unusable(domain, loaded["hard_train"])):
        return replace(config, reward=replace(config.reward, metric="sampled")), (
            f"reward.metric expert-logprob: {reason}, so students are scored with sampled"
            f" (k = {config.reward.samples}) instead")
    return config, None


def _check_prompt_room(config: RunConfig, domain, files: dict) -> None:
    """A data file none of whose prompts fits the model's context with its completion budget is a
    RejectedItem naming its first line, the reason and the field (the model's tokenizer and chat template,
    as the loop sees them)."""
    from soar_agent.evaluation import refuse_long_prompts, too_long
    from soar_agent.models import context_length, load_tokenizer
    from soar_agent.tasks.base import RejectedItem
    from soar_agent.tasks.chat import for_model

    tokenizer = load_tokenizer(config.model.path)
    context = context_length(config.model.path, tokenizer)
    if context is None:
        return
    seen = for_model(domain, tokenizer, config.model.chat_template)
    for name, (path, (budget, budget_name), problems) in files.items():
        if len(too_long(seen, tokenizer, problems, context, budget)) < len(problems):
            continue
        try:
            refuse_long_prompts(path, problems, seen, tokenizer, context, budget, budget_name)
        except RejectedItem as error:
            raise RejectedItem(f"{error}; no problem of the file fits (domain.{name})") from None


# What a resume may change: how long and where the run goes on, not what it measures (the experiment's settings)
RESUMABLE = ("budget.", "model.device", "model.engine", "run.workers", "run.ray_address")


def resume_config(stored: RunConfig, given: RunConfig, keys: set[str] | None = None) -> tuple[RunConfig, list[str]]:
    """The config a resumed run goes on with, and the lines saying so: the stored one, with the given values
    of the settings in RESUMABLE (budget.*, model.device, model.engine, run.workers) applied; the given
    experiment's settings that differ are ignored and named. ``keys``: the settings the user set (`--set`),
    else (a config file) every setting that differs counts."""
    old, new = config_to_dict(stored), config_to_dict(given)
    changed = [f"{section}.{key}" for section in new for key in new[section]
               if new[section][key] != old[section][key] and (keys is None or f"{section}.{key}" in keys)]
    applied = [name for name in changed if name.startswith(RESUMABLE)]
    ignored = [name for name in changed if not name.startswith(RESUMABLE)]
    value = lambda data, name: data[name.split(".")[0]][name.split(".")[1]]
    for name in applied:
        old[name.split(".")[0]][name.split(".")[1]] = value(new, name)
    notes = []
    if applied:
        notes.append("resuming with the run's stored configuration and this session's "
                     + ", ".join(f"{name} = {value(new, name)!r}" for name in applied))
    if ignored:
        notes.append("note: ignored on a resume (the experiment's settings are the run's stored ones; a new"
                     " --run-dir starts a run with them): " + ", ".join(
                         f"{name} = {value(new, name)!r} (stored {value(old, name)!r})" for name in ignored)
                     + "; a resume takes only budget.*, model.device, model.engine and run.workers")
    return (config_from_dict(old, source="the stored config with this session's settings") if applied else stored,
            notes)


def promotion_decision(history: list[float], mean_reward: float, tau: float, window: int,
                       force: bool = False) -> tuple[float, bool]:
    """(moving average of the last `window` step rewards including this one, promote?): promote when the
    moving average exceeds tau, or when forced (the TUI's promote command)."""
    recent = (history[-(window - 1):] if window > 1 else []) + [mean_reward]
    moving_average = sum(recent) / len(recent)
    return moving_average, force or moving_average > tau


def promoted_student(trainings: list[dict]) -> dict | None:
    """The student of the best dataset that becomes the baseline: the upper median by reward (the paper's
    "median" student; with r = 2 the lower median would always be the worse of two, so the upper one,
    i.e. the better of two, is taken)."""
    ranked = sorted((t for t in trainings if t["reward"] is not None and t["checkpoint_path"]),
                    key=lambda t: t["reward"])
    return ranked[len(ranked) // 2] if ranked else None


def best_by_reward(checkpoints: list[dict]) -> dict | None:
    """The complete baseline checkpoint estimated best on hard-train. Each baseline checkpoint's
    metrics["reward"] is its grounded improvement over the previous baseline on that step's hard-train
    reward questions, so the running sum (over every baseline checkpoint, pruned ones included) estimates
    its improvement over the base model. Never hard-test: that set is for reporting only. Ties go to the
    later checkpoint (more training at equal measured quality)."""
    best, best_score, total = None, None, 0.0
    for checkpoint in sorted(checkpoints, key=lambda c: c["id"]):
        total += (checkpoint.get("metrics") or {}).get("reward") or 0.0
        if checkpoint["status"] == "complete" and (best_score is None or total >= best_score):
            best, best_score = checkpoint, total
    return best


def curriculum_problems(dataset: dict, rows: list[dict], domain, reward_target: str,
                        forbidden: set[str]) -> list[Problem]:
    """What students train on from one teacher dataset: each item as the teacher wrote it (re-checked from
    its text and its worked solution, so its own answer and steps, or the solver's per teacher.reward_target),
    never the stored row a
    repeated question maps to; items repeating a hard-set question are left out (a reward question's
    answer must never reach a student). Datasets without texts fall back to their rows."""
    from soar_agent.tasks.base import RejectedItem
    from soar_agent.teacher import check_item
    from soar_agent.store import to_problem

    texts = (dataset.get("meta") or {}).get("texts")
    solutions = (dataset.get("meta") or {}).get("solutions") or []
    problems = []
    for index, row in enumerate(rows):
        problem = to_problem(row)
        if texts and index < len(texts):
            try:
                text = texts[index] if "</answer>" in texts[index] else texts[index] + "</answer>"  # EOS-ended
                problem = check_item(domain, text, reward_target,
                                     solutions[index] if index < len(solutions) else None).problem
            except RejectedItem:  # cannot happen for an accepted item; the row is all there is then
                pass
        problems.append(problem)
    return without_questions(problems, forbidden)


def students_train_on(config: RunConfig, domain) -> str:
    """One line: what a soar run's students will learn from (said when a session starts)."""
    from soar_agent.teacher import writes_solutions

    target = config.teacher.reward_target
    hard = ("hard-train's answers (RL) and worked solutions" if target == "verified" else
            "hard-train's answers (RL only)")
    if not writes_solutions(domain, target):
        return (f"students train on the solver's answers and worked solutions to the teacher's questions"
                f" (teacher.reward_target = verified; \"teacher\" trains them on the teacher's own); the final"
                f" training adds {hard}")
    checked = ("a solver records whether each is right and changes nothing students see" if hasattr(domain, "make_problem")
               else "no solver checks them")
    kept = " (the right ones only: drop-unverified)" if target == "drop-unverified" else ", right or wrong"
    return (f"students train on the teacher's own worked solutions and answers{kept}; {checked}; the final"
            f" training adds {hard}")


def without_questions(problems: list[Problem], forbidden: set[str]) -> list[Problem]:
    """The problems whose content hash is not in `forbidden` (hard-set questions must never be trained on
    with their answers outside hard-only)."""
    return [p for p in problems if content_hash(p.domain, p.question) not in forbidden]


@dataclass
class Agent:
    config: RunConfig
    paths: RunPaths
    log: callable = print
    store: Store = None
    run_id: int = 0
    stop_reason: str | None = None
    paused: bool = False
    force_promotion: bool = False
    final_summary: dict | None = None  # the PQ student's hard-test summary when this session's run ended with it
    _baseline_scoring_seconds: float = 0.0  # this session's scoring of the step's baseline (0 for a resumed step)
    progress: callable = None  # (label, done, total) for long phases: the CLI draws bars from it
    write_error: OSError | None = None  # the failed write (e.g. a full disk) that stopped this session
    _models: dict = field(default_factory=dict)
    _last_beat: float = float("-inf")  # time.monotonic() of the last heartbeat written inside a unit
    # when this session (`run`) started, as the store writes times: a command sent before it is dropped, not
    # obeyed (a stop queued while no agent was attached must not end the next resume); None outside `run`
    session_started: str | None = None
    _stop_in_unit: bool = False  # a stop command read inside a unit: beat() ends the unit (UnitStopped)

    def _track(self, label: str, total: int):
        """Report one long phase's progress: the returned function sets the number of units done. It also
        keeps the run's heartbeat fresh inside a unit (at most every HEARTBEAT_S), so that the TUI and
        `soar status` tell a run at work from one that was killed."""
        def report(done: int) -> None:
            self.beat()
            if self.progress is not None:
                self.progress(label, min(done, total), total)

        report(0)
        return report

    def _counter(self, label: str, total: int):
        """Like _track, for callbacks that report increments (the engine's finished batches)."""
        report, done = self._track(label, total), [0]

        def advance(count: int) -> None:
            done[0] += count
            report(done[0])

        return advance

    # ------------------------------------------------------------------ set-up and resume

    @classmethod
    def open(cls, config: RunConfig | None, run_dir: Path, log=print, existing_only: bool = False,
             given: set[str] | None = None) -> "Agent":
        """A new run in an empty run_dir, or the existing run there (its stored config wins, but for the
        settings a resume may change: resume_config). ``given``: the dotted keys the user set (`--set`), when
        not a whole config file. ``existing_only`` (export, eval-pq): the run must exist; StoreError rather
        than a new run."""
        paths = RunPaths(Path(run_dir))
        metric_note = None
        if not existing_only:
            if not paths.db.exists():  # a new run: a config or data file it cannot use leaves no store behind
                config, metric_note = check_run_config(config or RunConfig())
            paths.root.mkdir(parents=True, exist_ok=True)
        try:
            # A store file without a run lost it (e.g. its WAL): a new run there would write over the old
            # run's checkpoints, so it must be moved away by hand.
            store = Store(paths.db, require_run=existing_only or paths.db.exists())
        except StoreError as error:
            raise StoreError(f"{error}; move it away to start a new run in {paths.root}" if not existing_only
                             and paths.db.is_file() and "holds no run" in str(error) else str(error)) from None
        existing = store.latest_run()
        if existing is not None:
            stored = config_from_dict(existing["config"], source=f"{paths.db} (stored config)")
            if config is not None:
                stored, notes = resume_config(stored, config, given)
                for note in notes:
                    log(note)
            if not existing_only:  # this machine and the settings the session goes on with, before any work
                check_session(stored)
            agent = cls(stored, paths, log, store, existing["id"])
            if not existing_only:  # export and eval-pq read the run, they do not resume it
                store.log_event(run_id=agent.run_id, level="info", kind="resume", message="run resumed")
            return agent
        run_id = store.create_run(name=config.run.name, mode=config.run.mode, config=config_to_dict(config),
                                  model_path=config.model.path)
        agent = cls(config, paths, log, store, run_id)
        agent._store_hard_sets()
        store.log_event(run_id=run_id, level="info", kind="start", message=f"run created in {paths.root}")
        if config.student.backend == "sft-rlvr" and not hasattr(agent.domain, "expert_completion"):
            note = (f"student.backend sft-rlvr: the {config.domain.name} domain has no expert solutions, so its"
                    " students train with RL (rloo) for all their steps")
            store.log_event(run_id=run_id, level="warning", kind="no-expert-solutions", message=note)
            log(f"note: {note}")
        if metric_note:
            store.log_event(run_id=run_id, level="warning", kind="reward-metric-fallback", message=metric_note)
            log(f"note: {metric_note}")
        return agent

    @property
    def domain(self):
        """The run's domain, seen through the model's chat template when it has one (tasks.chat)."""
        if "domain" not in self._models:
            from soar_agent.models import load_tokenizer
            from soar_agent.tasks.chat import for_model

            tokenizer = self._models.get("tokenizer") or load_tokenizer(self.config.model.path)
            self._models["domain"] = for_model(get_domain(self.config.domain.name), tokenizer,
                                               self.config.model.chat_template)
        return self._models["domain"]

    def _store_hard_sets(self) -> None:
        domain, cfg = self.domain, self.config.domain
        for split, configured in (("train", cfg.hard_train), ("val", cfg.hard_val), ("test", cfg.hard_test)):
            path = Path(configured) if configured else shipped_hard_set(domain.NAME, split)
            if split == "val" and not configured and not path.is_file():
                continue  # optional: hard-val is for choosing settings (benchmarks), a run needs none
            if not path.is_file():
                raise FileNotFoundError(f"{path}: hard-{split} set not found (domain.hard_{split})")
            from soar_agent.evaluation import unique_problems

            s, e = self.config.student.max_new_tokens, self.config.eval.max_new_tokens
            budget = ((s, "student.max_new_tokens") if s > e else (e, "eval.max_new_tokens")) if split == "train" \
                else (e, "eval.max_new_tokens")
            problems, repeats = unique_problems(self._without_long_prompts(path, load_problem_file(path, domain),
                                                                           budget[0], f"domain.hard_{split}",
                                                                           budget[1]))
            if repeats:
                note = f"{path}: {repeats} repeated question(s) skipped (domain.hard_{split})"
                self.log(f"note: {note}")
                self.store.log_event(run_id=self.run_id, level="warning", kind="hard-set-repeats", message=note)
            ids = self.store.add_problems(run_id=self.run_id, problems=problems, source="hard", split=split,
                                          provenance={"file": str(path)})
            self.store.create_dataset(run_id=self.run_id, name=f"hard-{split}", kind=f"hard-{split}",
                                      problem_ids=ids)

    def hard_set(self, split: str) -> list[Problem]:
        (dataset,) = self.store.datasets(self.run_id, kind=f"hard-{split}")
        return [self.store.to_problem(row) for row in self.store.dataset_problems(dataset["id"])]

    def hard_train_for_students(self) -> list[Problem]:
        """hard-train as the final training and hard-only students see it: with its worked solutions only
        under teacher.reward_target = verified (the solver's setting, where a shipped hard set's steps are
        the solver's too); otherwise with its answers alone, for RL, as the paper's Hard-Only and PQ, so that
        no solver step reaches a student of a run that learns from the teacher's own solutions."""
        problems = self.hard_set("train")
        if self.config.teacher.reward_target == "verified":
            return problems
        return [replace(problem, steps=()) for problem in problems]

    def completed_steps(self) -> list[dict]:
        return [s for s in self.store.teacher_steps(self.run_id) if s["status"] == "complete"]

    def latest_checkpoint(self, role: str) -> dict | None:
        rows = self.store.checkpoints(self.run_id, role=role, status="complete")
        return rows[-1] if rows else None

    def _load(self, role: str):
        """Baseline or teacher: the newest complete checkpoint of that role, else the base model."""
        import torch

        from soar_agent.models import add_lora, load_model

        checkpoint = self.latest_checkpoint(role)
        m = self.config.model
        if checkpoint is not None:
            model = load_model(checkpoint["path"], m.dtype, device=m.device)
        else:
            model = load_model(m.path, m.dtype, device=m.device)
            if m.lora:
                model = add_lora(model, m.lora_rank, m.lora_alpha, m.lora_dropout)
        if role == "teacher":
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=self.config.teacher.lr, weight_decay=0.0)
            if checkpoint is not None and (Path(checkpoint["path"]) / "optimizer.pt").is_file():
                optimizer.load_state_dict(torch.load(Path(checkpoint["path"]) / "optimizer.pt"))
            self._models["teacher_optimizer"] = optimizer
        self._models[role] = model
        return model

    def model(self, role: str):
        return self._models[role] if role in self._models else self._load(role)

    @property
    def tokenizer(self):
        # loaded on its own: a resumed chain step puts its last student in place as the baseline without _load
        if "tokenizer" not in self._models:
            from soar_agent.models import load_tokenizer

            self._models["tokenizer"] = load_tokenizer(self.config.model.path)
        return self._models["tokenizer"]

    # ------------------------------------------------------------------ the loop

    def run(self, budget: Budget) -> str:
        self.session_started, self._stop_in_unit = _store_time(), False
        self._install_signal_handlers()
        self.store.set_run_status(self.run_id, "running")
        self.store.log_event(run_id=self.run_id, level="info", kind="session",
                             message="session started",
                             data={"deadline": budget.deadline, "max_teacher_steps": budget.max_teacher_steps,
                                   "until": budget.until, "used_s": max(0.0, time.time() - budget.started)})
        if self.config.run.mode in ("soar", "intrinsic"):
            line = students_train_on(self.config, self.domain)
            self.log(line)
            self.store.log_event(run_id=self.run_id, level="info", kind="students-train-on", message=line)
        try:
            return self._run(budget)
        except UnitStopped:  # a stop command read inside a unit, after its current step: the unit is redone
            self.log(f"{self.stop_reason}: stopped inside a unit of work; what it had not stored is redone on resume")
            self.store.set_run_status(self.run_id, "stopped")
            self.store.log_event(run_id=self.run_id, level="info", kind="stopped", message=self.stop_reason)
            return self.stop_reason
        except KeyboardInterrupt:  # a second signal: stopped at once, whatever the unit
            self.store.set_run_status(self.run_id, "stopped")
            self.store.log_event(run_id=self.run_id, level="warning", kind="stopped",
                                 message="interrupted: stopped at once; the unit in progress is redone on resume")
            raise

    def _run(self, budget: Budget) -> str:
        self.check_budget(budget)
        if (missing := self._missing_evaluation()) is not None:  # (given up early when it would end too late)
            self.report_evaluation(step=missing, **({"deadline": budget.deadline} if budget.deadline else {}))
        garbage_in_a_row = self._garbage_attempt = 0
        while True:
            release_freed_memory()  # the last step's models and buffers: RSS stays at what is live
            self.poll_commands()
            done = self.completed_steps()
            reason = self.stop_reason or budget.exhausted(len(done)) or self._no_time_for_a_step(budget, done)
            if reason:
                break
            step = (done[-1]["step"] if done else 0) + 1
            fresh = not any(s["step"] == step for s in self.store.teacher_steps(self.run_id)) and \
                not self.store.trainings(self.run_id, step)  # a resumed step's time is a remainder
            try:
                self.teacher_step(step)
                garbage_in_a_row = self._garbage_attempt = 0
                finished = self.completed_steps()
                if fresh and finished and finished[-1]["step"] == step:
                    self._remember_timing(step=finished[-1]["metrics"].get("seconds"))
            except OSError as error:  # e.g. a full disk while saving a checkpoint: stored data stays intact
                self.write_error = error
                self.stop_reason = f"cannot write to {self.paths.root}: {error}; stopping (resume when fixed)"
                self.store.log_event(run_id=self.run_id, level="error", kind="io-error", message=self.stop_reason,
                                     data={"step": step})
                break
            except _StepSkipped as skipped:
                garbage_in_a_row += 1
                self._garbage_attempt = garbage_in_a_row  # the retry samples with another seed
                self.store.log_event(run_id=self.run_id, level="warning", kind="teacher-garbage",
                                     message=str(skipped), data={"step": step})
                self.log(f"[step {step}] skipped: {skipped}")
                if garbage_in_a_row >= MAX_GARBAGE_STEPS:
                    self.stop_reason = f"teacher wrote garbage for {garbage_in_a_row} steps in a row; stopping"
                    self.store.log_event(run_id=self.run_id, level="error", kind="stopped", message=self.stop_reason)
                    break
                continue
            if step % self.config.eval.every_teacher_steps == 0 and not self.stop_reason:
                self.report_evaluation(step)
        if not self.stop_reason and self._ends_with_final_training():  # the budget ended, not a stop
            self.final_summary = self._final_training(budget)
            if self.stop_reason:  # stopped inside it: not the budget's end, and a resume continues its chain
                reason = None
        self.store.set_run_status(self.run_id, "stopped")
        self.store.log_event(run_id=self.run_id, level="info", kind="stopped", message=reason or self.stop_reason)
        return reason or self.stop_reason

    def _missing_evaluation(self) -> int | None:
        """The planned hard-test evaluation a kill or a stop left undone, or None: step 0's, or the last
        complete step's when it is an eval.every_teacher_steps-th step. Only that one can be redone as planned
        (its baseline is still the latest: no teacher step runs before it), and a session that redoes it
        first leaves no earlier one missing."""
        completed = self.completed_steps()
        last = completed[-1]["step"] if completed else 0
        if last and last % self.config.eval.every_teacher_steps:
            return None
        evaluated = {e["teacher_step"] for e in self.store.evaluations(self.run_id, set_name="hard-test")}
        return None if last in evaluated else last

    def _ends_with_final_training(self) -> bool:
        return self.config.run.mode in ("soar", "intrinsic") and self.config.budget.pq_steps > 0

    def check_budget(self, budget: Budget) -> None:
        """A session with a deadline and no teacher step yet: BudgetTooSmall, before any work, when what
        earlier runs of this configuration measured on this machine (evalcache timings) says one teacher step
        does not fit: the step-0 hard-test evaluation still to do (none when stored or cached), a teacher step,
        and the time _no_time_for_a_step keeps for the final training; the error names the --hours that fits.
        Without such measurements it says so, and the units are sized as they are measured."""
        if budget.deadline is None or self.completed_steps():
            return
        timings, now = self._remembered_timings(), time.time()
        evaluation = 0.0 if self._missing_evaluation() is None or self._base_evaluation_cached() \
            else timings.get("evaluation")
        final, share = 0.0, 0.0
        if self._ends_with_final_training():
            share = self.config.budget.pq_share
            final = (timings["evaluation"] + timings["pq_step"] * self.config.budget.pq_steps
                     if {"evaluation", "pq_step"} <= timings.keys() else None)
        if evaluation is None or final is None or "step" not in timings:
            note = ("no earlier run of this configuration measured its units on this machine: the budget is"
                    " checked as they are measured (a first teacher step starts without an estimate)")
            self.store.log_event(run_id=self.run_id, level="info", kind="budget-unmeasured", message=note)
            self.log(f"note: {note}")
            return
        work = evaluation + timings["step"]
        if now + work + max(share * (budget.deadline - budget.started), final) <= budget.deadline:
            return
        fits = max(work / (1 - share) if share < 1 else float("inf"), work + final) * 1.1  # 10% to spare
        hours = max(0.05, -(-fits // 180) * 0.05)  # rounded up to 3 minutes
        given = budget.deadline - budget.started
        message = (f"a time budget of {given / 3600:.2f} h is too small for one teacher step of this run on this"
                   f" machine (measured by earlier runs of its configuration: "
                   + (f"the base model's hard-test evaluation ~{evaluation / 60:.0f} min, " if evaluation else "")
                   + f"a teacher step ~{timings['step'] / 60:.0f} min"
                   + (f", the final training kept {max(share * given, final) / 60:.0f} min (budget.pq_share"
                      f" {share:g} or budget.pq_steps' time)" if final else "")
                   + f"): --hours {hours:.2f} fits one; curricula/trial.toml is a short trial")
        self.store.log_event(run_id=self.run_id, level="error", kind="budget-too-small", message=message,
                             data={"hours": hours, "evaluation": evaluation, "step": timings["step"], "final": final})
        self.store.set_run_status(self.run_id, "stopped")
        raise BudgetTooSmall(message)

    def _base_evaluation_cached(self) -> bool:
        """Whether the step-0 hard-test evaluation of the base model is in the evaluation cache."""
        from soar_agent.evaluation import unique_problems

        if self.latest_checkpoint("baseline") is not None:
            return False
        problems = unique_problems(self.hard_set("test"))[0]
        key = self._base_evaluation_key(problems, self.config.eval.samples, _seed(self.config.run.seed, 0, 7))
        return key is not None and evalcache.load_evaluation(key) is not None

    def _evaluation_seconds(self) -> float:
        """What a hard-test evaluation costs: the run's latest (measured, or cached with its measured time),
        else earlier runs' on this machine, else 0 (unknown)."""
        measured = [e["summary"]["seconds"] for e in self.store.evaluations(self.run_id, set_name="hard-test")
                    if e["summary"].get("seconds")]
        return measured[-1] if measured else self._remembered_timings().get("evaluation", 0.0)

    def _no_time_for_a_step(self, budget: Budget, done: list[dict]) -> str | None:
        """With a deadline: the reason not to start the next teacher step when it would end (taking as long
        as the longest of the last three, plus an evaluation when one is due) inside the time kept for the final
        training: budget.pq_share of the run's budget (a resumed budget's whole, not what is left), or
        budget.pq_steps' time (pq.measured_costs) when that is longer, so that the run ends with its model at
        the deadline rather than one step late. None
        while it fits, and before the first step when no earlier run of this configuration on this machine
        measured one (evalcache timings; this run's own measurements come first).
        The last three, not the median of all: steps grow longer as the teacher learns to write longer
        questions (5.8 -> 9.2 minutes over 7 steps of a default run on one thread), and a resumed step's
        time counts only its remainder."""
        from soar_agent.pq import chain_seconds, expert_solutions, measured_costs

        if budget.deadline is None:
            return None
        durations = [s["metrics"]["seconds"] for s in done[-3:] if s["metrics"].get("seconds")]
        remembered = {} if durations else self._remembered_timings()
        if not durations and "step" not in remembered:
            return None
        costs = measured_costs(self.store, self.run_id, self.config.promotion.tau)
        step_seconds = max(durations) if durations else remembered["step"]
        if costs and ((done[-1]["step"] if done else 0) + 1) % self.config.eval.every_teacher_steps == 0:
            step_seconds += costs.evaluation
        reserved = 0.0
        if self._ends_with_final_training():
            reserved = self.config.budget.pq_share * (budget.deadline - budget.started)
            if costs:
                reserved = max(reserved, costs.evaluation + chain_seconds(
                    costs, self.config.student, self.config.budget.pq_steps, expert_solutions(self)))
            elif {"evaluation", "pq_step"} <= remembered.keys():
                reserved = max(reserved, remembered["evaluation"] + remembered["pq_step"] * self.config.budget.pq_steps)
        if time.time() + step_seconds + reserved <= budget.deadline:
            return None
        return (f"time budget reached: a teacher step (~{step_seconds / 60:.0f} min) would not end before "
                + (f"the final training's ~{reserved / 60:.0f} min" if reserved else "the deadline"))

    def _final_training(self, budget: Budget) -> dict | None:
        """The run's last unit when its budget ends: the PQ student (pq.evaluate_pq) with budget.pq_steps, or,
        with a deadline, as many steps as the time left allows (more than budget.pq_steps when the teacher steps
        left more: the final training's length follows the budget); skipped, with the command that trains it
        later, when fewer than one training's worth fit and no interrupted chain of it is stored (which goes on
        from its last training: pq.evaluate_pq). Returns its hard-test summary (None when skipped or stopped)."""
        from soar_agent.pq import (PQ_TRAINING_STEPS, chain_seconds, evaluate_pq, expert_solutions,
                                   interrupted_chain, measured_costs, rewarded_datasets)

        wanted = steps = self.config.budget.pq_steps
        costs = measured_costs(self.store, self.run_id, self.config.promotion.tau)
        evaluation, pace = (costs.evaluation if costs else self._evaluation_seconds()), None
        if budget.deadline is not None and costs is not None:
            training = chain_seconds(costs, self.config.student, PQ_TRAINING_STEPS, expert_solutions(self))
            per_step = pace = training / PQ_TRAINING_STEPS
            steps = max(0, int((budget.deadline - time.time() - costs.evaluation) / per_step))
        elif budget.deadline is not None:  # no student measured here: earlier runs' pace, else the chain's own
            pace = self._remembered_timings().get("pq_step")  # first few steps size it (pq.evaluate_pq)
            left = budget.deadline - time.time() - evaluation
            steps = max(0, int(left / pace)) if pace else (steps if left > 0 else 0)
        if steps < min(wanted, PQ_TRAINING_STEPS) and not interrupted_chain(self, self.config.run.seed):
            # (an interrupted chain is continued as far as the time allows, and evaluated)
            message = (f"no time left for the final training ({steps} of {wanted} steps fit):"
                       f" soar eval-pq {self.paths.root} trains the PQ student later")
            self.store.log_event(run_id=self.run_id, level="warning", kind="pq-skipped", message=message)
            self.log(message)
            return None
        promotions = self._promotions()
        rewarded = len(rewarded_datasets(self.store, self.run_id, self.config.promotion.tau))
        message = (f"final training: a fresh student, {steps} steps on the questions of the {rewarded} datasets"
                   f" the reward found helpful ({promotions} promoted) plus hard-train (SOAR-PQ)")
        self.store.log_event(run_id=self.run_id, level="info", kind="pq-training", message=message,
                             data={"steps": steps, "promotions": promotions, "datasets": rewarded})
        self.log(message)
        started = time.time()
        summary = evaluate_pq(self, steps, seed=self.config.run.seed, stop=lambda: self.stop_reason,
                              deadline=budget.deadline, evaluation_seconds=evaluation, pace=pace,
                              fill=True)  # the estimate of steps may be short or long: the deadline ends it
        if summary is None:
            self.log(f"final training stopped: {self.stop_reason}")
            return None
        steps = summary["steps"]  # fewer when the chain met the deadline
        self._remember_timing(pq_step=summary.get("seconds_per_step"))
        message = ("PQ student: hard-test " + " ".join(f"{k} {v:.3f}" for k, v in summary.items()
                                                       if k.startswith("pass@")) + f" ({time.time() - started:.0f}s)")
        self.store.log_event(run_id=self.run_id, level="info", kind="pq-done", message=message,
                             data={"steps": steps, "seconds": time.time() - started})
        self.log(message)
        return summary

    def _install_signal_handlers(self) -> None:
        """SIGINT / SIGTERM: the first stops the run after the current unit; the second stops it at once
        (KeyboardInterrupt at the main thread's next Python instruction, whatever the unit: `run` then marks
        the run stopped, and as every store write is one transaction nothing is half-written; the unit in
        progress is redone on resume); a third gets the default action, which ends the process even inside
        native code that has not returned to Python."""
        received: list[int] = []

        def request_stop(signum, frame):
            received.append(signum)
            if len(received) > 1:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_DFL)
                raise KeyboardInterrupt
            self.stop_reason = f"{signal.Signals(signum).name} received: stopping after the current unit"
            self.log(self.stop_reason + " (Ctrl-C again: stop at once, the unit in progress is redone on resume;"
                     f" resume with `soar run --run-dir {self.paths.root}`)")


        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, request_stop)

    def beat(self) -> None:
        """Inside a unit of work (each training step, evaluation batch, teacher sampling round, teacher update
        micro-batch, decoded token): the run's heartbeat and, in a `soar run` session, the TUI's commands, at most
        every HEARTBEAT_S, so that they are answered within seconds rather than after a unit of minutes. A pause
        waits here, at the step boundary; a stop ends the unit (UnitStopped: it is redone on resume, as after a
        second Ctrl-C; the final training keeps its chain's last training)."""
        if time.monotonic() - self._last_beat < HEARTBEAT_S:
            return
        self._last_beat = time.monotonic()
        self.store.heartbeat(self.run_id)
        if self.session_started is None:  # outside `soar run` (eval-pq): the heartbeat alone
            return
        self._obey_commands(inside_unit=True)
        while self.paused and not self.stop_reason:
            time.sleep(1.0)
            self.store.heartbeat(self.run_id)
            self._obey_commands(inside_unit=True)
        self._last_beat = time.monotonic()
        if self._stop_in_unit:
            raise UnitStopped(self.stop_reason)

    def poll_commands(self) -> None:
        """Commands from the TUI (or `soar` scripts), each acknowledged; pause blocks here."""
        while True:
            self.store.heartbeat(self.run_id)
            self._obey_commands()
            if not self.paused or self.stop_reason:
                return
            time.sleep(1.0)

    def _obey_commands(self, inside_unit: bool = False) -> None:
        """Each pending command, acknowledged with what the agent does. One sent before this session started
        is dropped: a stop queued while no agent was attached would end the resume at once (and export), a
        pause hold it; the user sends it again to mean it now."""
        for command in self.store.pending_commands(self.run_id):
            name = command["command"]
            if self.session_started is not None and command["created_at"] < self.session_started:
                sent = _local_time(command["created_at"])
                note = f"ignored a {name} sent at {sent} before this session started; send it again to {name}"
                self.store.ack_command(command["id"], f"dropped: sent at {sent}, before this session started;"
                                                      f" send it again to {name}")
                self.store.log_event(run_id=self.run_id, level="warning", kind="command-dropped", message=note,
                                     data={"command": name, "command_id": command["id"]})
                self.log(note)
                continue
            if name == "pause":
                self.paused = True
                message = "pausing at the next step" if inside_unit else "paused after the current unit"
            elif name == "resume":
                self.paused, message = False, "resumed"
            elif name == "stop":
                self.stop_reason = "stop command received"
                message = "stopping after the current unit"
                if inside_unit:
                    self._stop_in_unit = True
                    message = "stopping after the current step; the unit it interrupts is redone on resume"
            elif name == "promote":
                self.force_promotion, message = True, "the best student of the next completed step will be promoted"
            else:  # export
                try:
                    out = self.export(command["args"].get("checkpoint", "best"), command["args"].get("out"))
                    message = f"exported to {out}"
                except ValueError as error:  # a refused --out or unknown checkpoint must not end the run
                    message = f"export failed: {error}"
            self.store.ack_command(command["id"], message)
            self.store.log_event(run_id=self.run_id, level="info", kind=f"command-{name}", message=message)
            if inside_unit:
                self.log(f"{name}: {message}")

    # ------------------------------------------------------------------ one teacher step

    def teacher_step(self, step: int) -> None:
        started = time.time()
        if self.config.run.mode in ("hard-only", "curated"):
            return self._chain_step(step, started)
        datasets = self._curriculum(step)
        reward_questions = self._reward_questions(step)
        baseline = self.model("baseline")
        scoring_started = time.time()
        before = self._reward_scores(baseline, reward_questions, step)
        self._baseline_scoring_seconds = time.time() - scoring_started  # the step's metrics (soar status --profile)
        cfg = self.config
        units = [(index, d, j) for index, d in enumerate(datasets) for j in range(cfg.student.students_per_dataset)]
        done = {(t["dataset_id"], t["student_index"]) for t in self.store.trainings(self.run_id, step)}
        if cfg.run.workers > 1:
            self.poll_commands()
            if self.stop_reason:
                return
            self._train_on_workers(step, [(i, d, j) for i, d, j in units if (d["id"], j) not in done],
                                   reward_questions, before)
            return self._finish_step(step, datasets, before, started)
        for number, (index, dataset, j) in enumerate(units, 1):
            if (dataset["id"], j) in done:
                continue
            self.poll_commands()
            if self.stop_reason:
                return
            self._train_one(step, index, dataset, j, reward_questions, before)
            eta = (time.time() - started) / number * (len(units) - number)
            self.log(f"[step {step}] students {number}/{len(units)}  ETA {eta:.0f}s")
        self._finish_step(step, datasets, before, started)

    def _curriculum(self, step: int) -> list[dict]:
        """The step's datasets: from the store when already sampled (resume), else sampled now."""
        from soar_agent.engine import HFEngine
        from soar_agent.teacher import TeacherGarbage, sample_items, split_items, writes_solutions

        existing = [d for d in self.store.datasets(self.run_id, kind="curriculum") if d["teacher_step"] == step]
        if existing:
            return existing
        t = self.config.teacher
        teacher = self.model("teacher")
        count = t.datasets_per_step * t.items_per_dataset
        sampling_started = time.time()
        try:
            items, stats = sample_items(HFEngine(teacher, self.tokenizer, tick=self.beat), self.domain, count, t,
                                        seed=_seed(self.config.run.seed, step, *([self._garbage_attempt]
                                                                                  if self._garbage_attempt else [])),
                                        progress=self._track(f"step {step}: teacher writing problems", count),
                                        **({"solution_tokens": self.config.student.max_new_tokens}
                                           if writes_solutions(self.domain, t.reward_target) else {}),
                                        **({"fits": fits} if (fits := self._fits_students()) else {}))
        except TeacherGarbage as error:
            raise _StepSkipped(str(error)) from None
        stats["seconds"] = time.time() - sampling_started  # soar status --profile
        rejected = stats.pop("rejected_token_ids", [])  # kept with the first dataset: a resumed step's update
        datasets = []
        for k, chunk in enumerate(split_items(items, t.datasets_per_step, t.split)):
            datasets.append({
                "name": f"step-{step}-dataset-{k}", "problems": [i.problem for i in chunk],
                "provenance": [{"teacher_step": step, "dataset": k, "text": i.text, "teacher_answer": i.teacher_answer,
                                **({"teacher_solution": i.solution} if i.solution is not None else {})}
                               for i in chunk],
                # the raw texts live with the dataset: an item that repeats a stored problem maps to that row
                "answer_verified": [i.verified for i in chunk], "meta": {"index": k, "texts": [i.text for i in chunk],
                                                                   "token_ids": [i.token_ids for i in chunk],
                                                                   **({"solutions": [i.solution for i in chunk],
                                                                       "solution_token_ids": [i.solution_token_ids
                                                                                              for i in chunk]}
                                                                      if chunk and chunk[0].solution is not None else {}),
                                                                   **({"rejected_token_ids": rejected} if k == 0 else {})}})
        self.store.add_curriculum(run_id=self.run_id, teacher_step=step, datasets=datasets)
        verified = sum(bool(i.verified) for i in items)
        checked = [i.verified for i in items if i.verified is not None]
        self.store.log_event(run_id=self.run_id, level="info", kind="teacher-sampled",
                             message=f"step {step}: {count} items ({verified} verified)",
                             data={"step": step, **stats, "teacher_right": verified, "teacher_checked": len(checked)})
        # without solutions the run is in the solver's setting (teacher.writes_solutions)
        solved = items[0].solution is not None
        answers = (f"the teacher's {'worked solution' if solved else 'answer'} was right for {verified},"
                   f" wrong for {len(checked) - verified} (students train on the {'teacher' if solved else 'solver'}'s)"
                   if checked else "answers unchecked (no solver for this domain)")
        self.log(f"[step {step}] teacher: {count} items, {answers}; "
                 f"{sum(stats['rejected'].values())} samples rejected")
        return [d for d in self.store.datasets(self.run_id, kind="curriculum") if d["teacher_step"] == step]

    def _prompt_room(self, max_new_tokens: int) -> int | None:
        """The most prompt tokens that leave `max_new_tokens` in the model's context (evaluation.prompt_room);
        None when the context is unknown."""
        from soar_agent.evaluation import prompt_room
        from soar_agent.models import context_length, load_tokenizer

        tokenizer = self._models.get("tokenizer") or load_tokenizer(self.config.model.path)
        return prompt_room(context_length(self.config.model.path, tokenizer), max_new_tokens)

    def _fits_students(self):
        """problem -> whether its student prompt leaves student.max_new_tokens in the model's context, for
        the teacher's items; None when every item fits anyway (the teacher writes at most
        teacher.max_new_tokens) or the context is unknown."""
        room = self._prompt_room(self.config.student.max_new_tokens)
        size = lambda problem: len(self.tokenizer(self.domain.student_prompt(problem.question))["input_ids"])
        if room is None or size(Problem("", "", self.domain.NAME)) + self.config.teacher.max_new_tokens <= room:
            return None
        return lambda problem: size(problem) <= room

    def _without_long_prompts(self, path: Path, problems: list[Problem], max_new_tokens: int, field: str,
                              budget_name: str) -> list[Problem]:
        """The problems whose prompt leaves `max_new_tokens` in the model's context; the others are skipped
        with a note (log and event) naming the file, the first one's line and the reason."""
        from soar_agent.evaluation import problem_line, too_long, too_long_reason
        from soar_agent.models import context_length, load_tokenizer

        tokenizer = self._models.get("tokenizer") or load_tokenizer(self.config.model.path)
        context = context_length(self.config.model.path, tokenizer)
        refused = too_long(self.domain, tokenizer, problems, context, max_new_tokens)
        if not refused:
            return problems
        index, tokens = refused[0]
        note = (f"{path}: {len(refused)} of {len(problems)} question(s) skipped ({field}), too long for the model;"
                f" the first, {problem_line(path, problems, index)}: "
                f"{too_long_reason(tokens, context, max_new_tokens, budget_name)}")
        self.log(f"note: {note}")
        self.store.log_event(run_id=self.run_id, level="warning", kind="hard-set-too-long", message=note)
        skipped = {i for i, _ in refused}
        return [problem for i, problem in enumerate(problems) if i not in skipped]

    def _reward_questions(self, step: int) -> list[Problem]:
        hard_train = self.hard_set("train")
        rng = random.Random(_seed(self.config.run.seed, step, 99))
        return rng.sample(hard_train, min(self.config.reward.questions, len(hard_train)))

    def _reward_scores(self, model, problems: list[Problem], step: int) -> list[float]:
        """Per-question scores under reward.metric; one sampling seed per step, so a student and its
        baseline are scored on paired samples."""
        from soar_agent.student_job import reward_scores

        return reward_scores(model, self.tokenizer, self.domain, self.config, problems, self._reward_seed(step),
                             tick=self.beat)

    def _reward_seed(self, step: int) -> int:
        return _seed(self.config.run.seed, step, 55)

    def _dataset_problems(self, dataset: dict) -> list[Problem]:
        return curriculum_problems(dataset, self.store.dataset_problems(dataset["id"]), self.domain,
                                   self.config.teacher.reward_target, self._hard_questions())

    def _student_dir(self, step: int, index: int, j: int) -> Path:
        return self.paths.checkpoints / f"step-{step}" / f"student-{index}-{j}"

    def _student_job(self, step: int, index: int, dataset: dict | None, j: int, reward_questions,
                     problems: list[Problem] | None = None, steps: int | None = None, source: str = "hard"):
        """The unit's job (see student_job), and the ids its rollouts map to; None when nothing is trainable."""
        from soar_agent.config import config_to_dict
        from soar_agent.rl.srpo import stored_history
        from soar_agent.student_job import StudentJob

        cfg = self.config
        problems = problems or self._dataset_problems(dataset)
        if not problems:  # every item repeated a hard-set question: nothing a student may train on
            return None, {}
        steps = steps or cfg.student.steps + (cfg.student.extra_steps_after_promotion if self._promotions() else 0)
        row_ids = {content_hash(row["domain"], row["question"]): row["id"]
                   for row in (self.store.dataset_problems(dataset["id"]) if dataset else [])}
        ids = dict(zip((p.question for p in problems),
                       self.store.add_problems(run_id=self.run_id, problems=problems, source=source)
                       if dataset is None else [row_ids.get(content_hash(p.domain, p.question)) for p in problems]))
        checkpoint = self.latest_checkpoint("baseline")
        job = StudentJob(key=(index, dataset and dataset["id"], j),
                         baseline_path=checkpoint["path"] if checkpoint else cfg.model.path,
                         config=config_to_dict(cfg), problems=problems, reward_questions=list(reward_questions),
                         steps=steps, seed=_seed(cfg.run.seed, step, index, j),
                         reward_seed=self._reward_seed(step), out_dir=str(self._student_dir(step, index, j)),
                         ref=f"step-{step}/student-{index}-{j}", add_lora=cfg.model.lora and checkpoint is None,
                         history=stored_history(self.store, self.run_id, ids, step)
                         if cfg.student.backend == "srpo" else {})
        return job, ids

    def _train_one(self, step: int, index: int, dataset: dict, j: int, reward_questions, before: list[float],
                   problems: list[Problem] | None = None, steps: int | None = None,
                   source: str = "hard") -> tuple[object, float, list[float] | None]:
        """Train one student from the baseline in memory and score it against the baseline's per-question
        scores `before`: (student, reward, its per-question scores), or (None, nan, None) on a failure."""
        from soar_agent.student_job import train_and_score

        job, ids = self._student_job(step, index, dataset, j, reward_questions, problems, steps, source)
        if job is None:
            self._record_training(step, index, dataset, j, before, None, ids)
            return None, float("nan"), None
        step_done = self._track(f"step {step}: student {index}-{j} ({self.config.student.backend})", job.steps)
        student, result = train_and_score(self.model("baseline"), self.tokenizer, self.domain, self.config, job,
                                          on_step=step_done, tick=self.beat)
        reward = self._record_training(step, index, dataset, j, before, result, ids)
        return (student, reward, result.after) if result.after is not None else (None, float("nan"), None)

    def _train_on_workers(self, step: int, units: list[tuple[int, dict, int]], reward_questions,
                          before: list[float]) -> None:
        """A SOAR step's student units as parallel jobs (run.workers > 1), each recorded when it finishes."""
        from soar_agent.student_job import run_on_ray

        jobs, ids, datasets = [], {}, {}
        for index, dataset, j in units:
            job, unit_ids = self._student_job(step, index, dataset, j, reward_questions)
            if job is None:
                self._record_training(step, index, dataset, j, before, None, unit_ids)
                continue
            jobs.append(job)
            ids[job.key], datasets[job.key] = unit_ids, dataset
        label = f"step {step}: {len(jobs)} students on {self.config.run.workers} workers"
        finished = self._track(label, len(jobs))
        for number, result in enumerate(run_on_ray(jobs, self.config.run.workers, self.config.run.ray_address,
                                                   waiting=self.beat), 1):
            index, _, j = result.key
            self._record_training(step, index, datasets[result.key], j, before, result, ids[result.key])
            finished(number)

    def _record_training(self, step: int, index: int, dataset: dict | None, j: int, before: list[float],
                         result, ids: dict) -> float:
        """Store one unit's training (the driver's side of a student job); returns its reward (nan if none)."""
        from soar_agent.reward import paired_reward

        def failed(message: str) -> float:
            self.store.add_training(run_id=self.run_id, teacher_step=step, dataset_id=dataset and dataset["id"],
                                    student_index=j, reward=None, accuracy_before=fmean(before),
                                    accuracy_after=None, checkpoint_path=None, metrics={"error": message})
            return float("nan")

        if result is None:
            return failed("no trainable item (all repeat hard-set questions)")
        if result.after is None:
            self.store.log_event(run_id=self.run_id, level="error", kind="non-finite-loss",
                                 message=result.metrics["error"],
                                 data={"step": step, "dataset": dataset["id"] if dataset else None, "student": j})
            return failed(result.metrics["error"])
        metrics, after = dict(result.metrics), result.after
        # accuracy_before/after hold the metric's mean score (nats/token for expert-logprob)
        accuracy_before, accuracy_after = fmean(before), fmean(after)
        if metrics["completion_length"] < 1.0:
            self.store.log_event(run_id=self.run_id, level="warning", kind="student-collapse",
                                 message=f"step {step}: student {index}-{j} writes empty answers",
                                 data={"step": step})
        if metrics.get("updates") == 0:
            # its weights are the baseline's, so its reward is exactly zero: say why instead of a quiet +0.000
            note = (f"step {step}: student {index}-{j} made no update in {metrics.get('steps', 0)} steps: no worked"
                    f" solution to train on and every sampled answer scored alike (train reward"
                    f" {metrics.get('reward_mean', 0.0):.2f})")
            self.log(f"[step {step}] warning: {note[len(f'step {step}: '):]}")
            self.store.log_event(run_id=self.run_id, level="warning", kind="student-no-update", message=note,
                                 data={"step": step, "dataset": dataset["id"] if dataset else None, "student": j})
        reward, stderr = paired_reward(before, after)
        # the per-question differences let a step pool its students' standard error (reward.pooled_reward)
        metrics.update(reward_metric=self.config.reward.metric, reward_stderr=stderr,
                       reward_differences=[round(a - b, 6) for a, b in zip(after, before)])
        rollouts = [{**{k: v for k, v in row.items() if k != "question"}, "problem_id": ids.get(row["question"])}
                    for row in result.rollouts]
        self.store.add_training(run_id=self.run_id, teacher_step=step, dataset_id=dataset and dataset["id"],
                                student_index=j, reward=reward, accuracy_before=accuracy_before,
                                accuracy_after=accuracy_after, checkpoint_path=result.checkpoint_path,
                                metrics=metrics, rollouts=rollouts)
        self.log(f"[step {step}] student {index}-{j}: reward {reward:+.3f} ± {stderr or 0:.3f} "
                 f"({self.config.reward.metric} {accuracy_before:.3f} -> {accuracy_after:.3f}), "
                 f"train reward {metrics['reward_mean']:.2f}, {metrics['tokens_per_second']:.0f} tok/s")
        return reward

    def _promotions(self) -> int:
        return len(self.store.datasets(self.run_id, kind="promotion"))

    def _finish_step(self, step: int, datasets: list[dict], before: list[float], started: float) -> None:
        from soar_agent.reward import pooled_reward, question_means
        from soar_agent.teacher import TeacherItem, intrinsic_rewards, rloo_dataset_advantages

        cfg = self.config
        trainings = self.store.trainings(self.run_id, step)
        by_dataset = {d["id"]: [t for t in trainings if t["dataset_id"] == d["id"] and t["reward"] is not None]
                      for d in datasets}
        rewards = {d["id"]: (sum(t["reward"] for t in by_dataset[d["id"]]) / len(by_dataset[d["id"]])
                             if by_dataset[d["id"]] else 0.0) for d in datasets}
        differences = {d["id"]: question_means([t["metrics"].get("reward_differences") or []
                                                for t in by_dataset[d["id"]]]) for d in datasets}
        dataset_stderr = {k: pooled_reward([v])[1] for k, v in differences.items()}
        _, step_stderr = pooled_reward(list(differences.values()))
        teacher_rewards = list(rewards.values())
        if cfg.run.mode == "intrinsic":
            teacher_rewards = intrinsic_rewards([self._success_rates(d, step) for d in datasets])
        items = [[TeacherItem(text, self.store.to_problem(row), "", None, ids, solution, solution_ids)
                  for text, row, ids, solution, solution_ids in zip(
                      d["meta"]["texts"], self.store.dataset_problems(d["id"]),
                      *(d["meta"].get(key) or [None] * len(d["meta"]["texts"])
                        for key in ("token_ids", "solutions", "solution_token_ids")))]
                 for d in datasets]
        teacher = self.model("teacher")
        if cfg.teacher.lr == 0:  # a frozen teacher: the ablation that shows what the teacher's learning adds
            update = {"advantages": rloo_dataset_advantages(teacher_rewards), "updated": False, "frozen": True}
        else:
            update = self._update_teacher(step, teacher, items, teacher_rewards, datasets)
        mean_reward = sum(rewards.values()) / len(rewards)
        updated = sum(1 for t in trainings if (t["metrics"] or {}).get("updates", 1) > 0)
        if trainings and not updated:
            note = (f"step {step}: no student could update (no worked solution and no reward signal), so the"
                    f" step's reward {mean_reward:+.3f} measures nothing the teacher wrote")
            self.log(f"[step {step}] warning: {note[len(f'step {step}: '):]}")
            self.store.log_event(run_id=self.run_id, level="warning", kind="no-student-update", message=note,
                                 data={"step": step})
        # promotion is on the grounded reward in every mode: the intrinsic ablation replaces the teacher's
        # reward only (as the paper's Intrinsic-T), so that arm differs from SOAR in one thing
        moving_average, promote = promotion_decision([s["mean_reward"] for s in self.completed_steps()],
                                                     mean_reward, cfg.promotion.tau, cfg.promotion.window,
                                                     self.force_promotion)
        checkpoints = [{"path": self._save_teacher(step, teacher), "role": "teacher", "metrics": update}]
        promoted = None
        if promote:
            best = max(datasets, key=lambda d: rewards[d["id"]])
            chosen = promoted_student(by_dataset[best["id"]])
            if chosen is not None:
                target = self.paths.checkpoints / f"baseline-step-{step}"
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(chosen["checkpoint_path"], target)
                checkpoints.append({"path": str(target), "role": "baseline",
                                    "metrics": {"reward": chosen["reward"], "from_dataset": best["id"]}})
                promoted = best["id"]
        self.store.complete_teacher_step(
            run_id=self.run_id, step=step, dataset_rewards=rewards, mean_reward=mean_reward,
            moving_average=moving_average, promoted_dataset_id=promoted, checkpoints=checkpoints,
            metrics={"teacher_update": update, "teacher_rewards": teacher_rewards, "accuracy_before": fmean(before),
                     "reward_metric": cfg.reward.metric, "reward_stderr": step_stderr,
                     "dataset_reward_stderr": {str(k): v for k, v in dataset_stderr.items()},
                     "seconds": time.time() - started, "mode": cfg.run.mode,
                     "students_updated": updated, "students": len(trainings),
                     "baseline_scoring_seconds": self._baseline_scoring_seconds})
        self.force_promotion = False
        if promoted is not None:
            self._models.pop("baseline", None)  # reload the promoted student on next use
            self.store.log_event(run_id=self.run_id, level="info", kind="promotion",
                                 message=f"step {step}: {best['name']} promoted",  # the name Curricula shows
                                 data={"step": step, "dataset_id": promoted})
        shutil.rmtree(self.paths.checkpoints / f"step-{step}", ignore_errors=True)
        self._prune_checkpoints()
        self.log(f"[step {step}] done in {time.time() - started:.0f}s: mean reward {mean_reward:+.4f}"
                 f" ± {step_stderr or 0:.4f}, "
                 f"moving average {moving_average:+.4f}{', PROMOTED' if promoted else ''}")

    def _update_teacher(self, step: int, teacher, items, teacher_rewards: list[float], datasets: list[dict]) -> dict:
        """One RLOO step of the teacher on its datasets' rewards (teacher.teacher_update); a non-finite loss
        takes no step and is logged, and the run goes on."""
        from soar_agent.teacher import teacher_update

        cfg = self.config
        # minutes in one step: `soar status` and the TUI say so (the last event is the phase), and a bar follows
        # its micro-batches, with the heartbeat and the commands (beat)
        message = f"step {step}: updating the teacher on its {sum(len(d) for d in items)} items"
        self.store.log_event(run_id=self.run_id, level="info", kind="teacher-update", message=message,
                             data={"step": step})
        self.log(f"[step {step}] {message[len(f'step {step}: '):]}")
        bar = []

        def progress(done: int, rows: int) -> None:
            if not bar:
                bar.append(self._track(f"step {step}: teacher update ({rows} rows)", rows))
            bar[0](done)

        try:
            rejected = [ids for d in datasets for ids in d["meta"].get("rejected_token_ids") or []]
            return teacher_update(teacher, self._models["teacher_optimizer"], self.tokenizer, self.domain, items,
                                  teacher_rewards, cfg.student.grad_clip, rejected=rejected,
                                  reject_penalty=cfg.teacher.reject_penalty, progress=progress)
        except FloatingPointError as error:  # NaN/inf teacher loss: no step taken, the run goes on
            self.store.log_event(run_id=self.run_id, level="error", kind="non-finite-loss",
                                 message=f"teacher: {error}", data={"step": step})
            return {"error": str(error), "updated": False}

    def _success_rates(self, dataset: dict, step: int) -> list[float]:
        """Baseline success rate per item (group_size samples against the item's target answer), seeded per
        (run, step, dataset) so a redone step scores the same."""
        from soar_agent.engine import HFEngine
        from soar_agent.evaluation import evaluate_problems

        s = self.config.student
        results = evaluate_problems(HFEngine(self.model("baseline"), self.tokenizer, tick=self.beat), self.domain,
                                    self._dataset_problems(dataset), samples=s.group_size, greedy=False,
                                    temperature=s.temperature, max_new_tokens=s.max_new_tokens,
                                    seed=_seed(self.config.run.seed, step, dataset["id"], 77))
        return [r.correct / r.samples for r in results]

    def _save_teacher(self, step: int, teacher) -> str:
        from soar_agent.models import save_checkpoint, save_torch

        directory = save_checkpoint(teacher, self.tokenizer, self.paths.checkpoints / f"teacher-step-{step}")
        temporary = directory / "optimizer.pt.tmp"
        save_torch(self._models["teacher_optimizer"].state_dict(), temporary, "saving the teacher's optimizer")
        temporary.replace(directory / "optimizer.pt")
        return str(directory)

    def _chain_step(self, step: int, started: float) -> None:
        """The Hard-Only and curated baselines: the same student compute as a SOAR step (g * r trainings),
        spent as consecutive RL trainings of the baseline (each continues from the last), on hard-train
        (hard-only) or on curated problems (curated); the baseline is updated every step."""
        from soar_agent.reward import pooled_reward

        cfg = self.config
        mode = cfg.run.mode
        units = cfg.teacher.datasets_per_step * cfg.student.students_per_dataset
        # what `soar status` reads as the phase (a SOAR step's is "teacher-sampled")
        self.store.log_event(run_id=self.run_id, level="info", kind="chain-step",
                             message=f"step {step}: {units} {mode} trainings", data={"step": step})
        reward_questions = self._reward_questions(step)
        done = self.store.trainings(self.run_id, step)
        if done and done[-1]["checkpoint_path"]:
            from soar_agent.models import load_model

            self._models["baseline"] = load_model(done[-1]["checkpoint_path"], cfg.model.dtype,
                                                  device=cfg.model.device)
        scores = self._reward_scores(self.model("baseline"), reward_questions, step)
        for unit in range(len(done), units):
            self.poll_commands()
            if self.stop_reason:
                return
            problems = self.hard_train_for_students() if mode == "hard-only" else self._curated_problems(step, unit)
            student, reward, after = self._train_one(step, unit, None, unit, reward_questions, scores,
                                                     problems=problems, steps=cfg.student.steps,
                                                     source="hard" if mode == "hard-only" else "seed")
            if student is not None:
                self._models["baseline"] = student
                scores = after
        trainings = self.store.trainings(self.run_id, step)
        last = [t for t in trainings if t["checkpoint_path"]]
        checkpoints = []
        if last:
            target = self.paths.checkpoints / f"baseline-step-{step}"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(last[-1]["checkpoint_path"], target)
            # the step's improvement over the previous baseline (best_by_reward sums these)
            checkpoints.append({"path": str(target), "role": "baseline",
                                "metrics": {"reward": sum(t["reward"] for t in trainings if t["reward"] is not None)}})
        rewards = [t["reward"] for t in trainings if t["reward"] is not None]
        mean_reward = sum(rewards) / len(rewards) if rewards else 0.0
        # consecutive differences: their question-wise mean is (last - first) / units, paired per question
        _, stderr = pooled_reward([t["metrics"].get("reward_differences") or [] for t in trainings])
        self.store.complete_teacher_step(run_id=self.run_id, step=step, dataset_rewards={}, mean_reward=mean_reward,
                                         moving_average=mean_reward, promoted_dataset_id=None,
                                         checkpoints=checkpoints,
                                         metrics={"mode": mode, "seconds": time.time() - started,
                                                  "reward_metric": cfg.reward.metric, "reward_stderr": stderr})
        self._models.pop("baseline", None)
        shutil.rmtree(self.paths.checkpoints / f"step-{step}", ignore_errors=True)
        self._prune_checkpoints()
        self.log(f"[step {step}] {mode} done in {time.time() - started:.0f}s: mean reward {mean_reward:+.4f}"
                 f" ± {stderr or 0:.4f}")

    def _hard_questions(self) -> set[str]:
        """Content hashes of the hard sets (train, val when stored, test): curated data must hold none of them."""
        splits = ("train", "val", "test") if self.store.datasets(self.run_id, kind="hard-val") else ("train", "test")
        return {content_hash(p.domain, p.question) for split in splits for p in self.hard_set(split)}

    def _curated_problems(self, step: int, unit: int) -> list[Problem]:
        """One curated training's problems: the domain.curated JSONL, else as many fresh generator problems
        as a training draws (`rl.sft.problems_drawn`: steps x batch_prompts, x group_size on sft-rlvr's
        supervised steps), at levels drawn uniformly. Hard-set questions are removed either way (a reward
        question's answer must never reach a student)."""
        cfg = self.config
        if cfg.domain.curated:
            problems = load_problem_file(Path(cfg.domain.curated), self.domain)
            room = self._prompt_room(cfg.student.max_new_tokens)
            if room is not None:  # problems too long for the students' context are left out
                from soar_agent.evaluation import prompt_lengths

                problems = [p for p, n in zip(problems, prompt_lengths(self.domain, self.tokenizer, problems))
                            if n <= room]
        else:
            rng = random.Random(_seed(cfg.run.seed, step, unit, 31))
            from soar_agent.rl.sft import problems_drawn

            count = problems_drawn(cfg.student, cfg.student.steps)
            levels = [rng.choice(self.domain.LEVELS) for _ in range(count)]  # uniform over the levels
            problems = generate_problems(self.domain, levels, rng)
        kept = without_questions(problems, self._hard_questions())
        if not kept:
            raise ConfigError(f"domain.curated: no curated problem left once hard-set questions are removed"
                              f" ({len(problems)} given)")
        return kept

    def _prune_checkpoints(self) -> None:
        """Keep the newest `keep_checkpoints` of each role, and always the best-evaluated baseline."""
        keep = self.config.budget.keep_checkpoints
        best = self.best_checkpoint()
        for role in ("baseline", "teacher"):
            rows = self.store.checkpoints(self.run_id, role=role, status="complete")
            for row in rows[:-keep]:
                if best is not None and row["id"] == best["id"]:
                    continue
                shutil.rmtree(row["path"], ignore_errors=True)
                self.store.mark_checkpoint(row["id"], "deleted")

    # ------------------------------------------------------------------ evaluation and export

    def report_evaluation(self, step: int, deadline: float | None = None) -> dict:
        """pass@1..pass@k on hard-test (never used for reward) and greedy accuracy on easy levels. With a
        `deadline` and no measurement of a hard-test evaluation's time (this run's or an earlier run's here),
        its pace over its first EVAL_PROBE_SHARE of completions says when it would end: past the deadline it
        is given up at once (BudgetTooSmall, nothing stored), rather than found out an evaluation later."""
        from soar_agent.engine import HFEngine
        from soar_agent.evaluation import default_ks, evaluate_problems, summarize, unique_problems

        cfg = self.config
        engine = HFEngine(self.model("baseline"), self.tokenizer, tick=self.beat)
        checkpoint = self.latest_checkpoint("baseline")
        started = time.time()
        sets = {"hard-test": self.hard_set("test")}
        if hasattr(self.domain, "generate"):
            rng = random.Random(_seed(cfg.run.seed, 4242))
            sets["easy"] = generate_problems(self.domain, [lv for lv in EASY_LEVELS for _ in range(EASY_PER_LEVEL)], rng)
        # Small easy levels repeat questions, and hard sets stored before repeats were skipped may hold
        # them: one result per stored problem is all an evaluation can keep.
        sets = {name: unique_problems(problems)[0] for name, problems in sets.items()}
        summaries = {}
        for name, problems in sets.items():
            set_started = time.time()
            samples = cfg.eval.samples if name == "hard-test" else 0
            # the base model's evaluation is the same in every run on this model and set: kept across runs
            key = self._base_evaluation_key(problems, samples, _seed(cfg.run.seed, step, 7)) if checkpoint is None \
                else None
            cached = evalcache.load_evaluation(key) if key else None
            results = evalcache.cached_results(cached, problems) if cached else None
            if results is not None:  # stored like a measured one, its measured seconds kept (an evaluation's cost)
                summary = {**cached["summary"], "cached": True}
            else:
                engine.on_rows = self._counter(f"step {step}: {name} evaluation ({len(problems)} problems)",
                                               len(problems) * (1 + samples))
                if deadline is not None and name == "hard-test" and not self._evaluation_seconds():
                    engine.on_rows = self._watch_evaluation(engine.on_rows, len(problems) * (1 + samples), deadline)
                results = evaluate_problems(engine, self.domain, problems, samples=samples, greedy=True,
                                            max_new_tokens=cfg.eval.max_new_tokens, seed=_seed(cfg.run.seed, step, 7),
                                            keep_completions=True)
                summary = summarize(results, default_ks(samples) if samples else [])
                summary.update(tokens_per_second=engine.stats.tokens_per_second, seconds=time.time() - set_started)
                if key:
                    evalcache.save_evaluation(key, summary, results, summary["seconds"])
            if name == "hard-test":  # what the final training's evaluation will cost (check_budget)
                self._remember_timing(evaluation=summary.get("seconds"))
            # already stored problems map to their existing ids (content hash), new ones are added once
            ids = self.store.add_problems(run_id=self.run_id, problems=problems,
                                          source="seed" if name == "easy" else "hard")
            rows = [{"problem_id": ids[i], "samples": r.samples,
                     "correct": r.correct, "greedy_correct": r.greedy_correct,
                     "pass_at": r.pass_at(default_ks(samples)) if samples else {}} for i, r in enumerate(results)]
            self.store.add_rollouts(run_id=self.run_id, rows=[
                {"problem_id": ids[i], "phase": "eval", "ref": f"eval-step-{step}/{name}", "completion": text}
                for i, r in enumerate(results) for text in r.completions])
            self.store.add_evaluation(run_id=self.run_id, set_name=name, results=rows, summary=summary,
                                      samples_per_problem=samples, temperature=1.0, teacher_step=step,
                                      checkpoint_id=checkpoint["id"] if checkpoint else None)
            summaries[name] = summary
        hard = summaries["hard-test"]
        self.log(f"[eval step {step}] hard-test " + " ".join(f"{k} {v:.3f}" for k, v in hard.items()
                                                            if k.startswith("pass@")) +
                 (f"; easy greedy {summaries['easy']['greedy_acc']:.3f}" if "easy" in summaries else "") +
                 (f" (cached: the base model's evaluation from an earlier run, {hard['seconds']:.0f}s then;"
                  f" SOAR_CACHE_DIR=\"\" measures it again)" if hard.get("cached") else
                  f" ({time.time() - started:.0f}s)"))
        return summaries

    def _watch_evaluation(self, on_rows, total: int, deadline: float):
        """on_rows, and once EVAL_PROBE_SHARE of the `total` completions are done, BudgetTooSmall when their
        pace says the evaluation ends after `deadline`."""
        began, seen = time.time(), [0]

        def watched(count: int) -> None:
            on_rows(count)
            seen[0] += count
            if total * EVAL_PROBE_SHARE <= seen[0] < total:
                projected = (time.time() - began) / seen[0] * total
                if began + projected > deadline:
                    message = (f"a time budget of {max(0.0, deadline - began) / 3600:.2f} h is too small: the base"
                               f" model's hard-test evaluation alone would take ~{projected / 60:.0f} min here (its first"
                               f" {seen[0]} of {total} completions took {time.time() - began:.0f} s), and a teacher"
                               f" step and the final training come after it; curricula/trial.toml is a short trial,"
                               f" and a run of a configuration records its units' times so that later runs of it"
                               f" are sized (or refused) at their start")
                    self.store.log_event(run_id=self.run_id, level="error", kind="budget-too-small",
                                         message=message, data={"evaluation": projected})
                    self.store.set_run_status(self.run_id, "stopped")
                    raise BudgetTooSmall(message)

        return watched

    def _base_evaluation_key(self, problems: list[Problem], samples: int, seed: int) -> dict | None:
        """The evalcache key of the base model's evaluation on `problems` with this run's settings; None
        when the cache is off."""
        from soar_agent.evalcache import cache_dir, evaluation_key, model_hash, problems_hash

        if cache_dir() is None:
            return None
        cfg, parameter = self.config, next(self.model("baseline").parameters())
        return evaluation_key(model_hash(cfg.model.path), problems_hash(problems), samples=samples, seed=seed,
                              greedy=True, temperature=1.0, max_new_tokens=cfg.eval.max_new_tokens,
                              domain=self.domain.NAME, chat_template=cfg.model.chat_template, lora=cfg.model.lora,
                              device=parameter.device.type, dtype=str(parameter.dtype))

    def _cost_signature(self) -> str:
        """What a teacher step's, an evaluation's and a final-training step's time follow besides the machine:
        the model's files, the hard sets and the settings of the work (evalcache's timings are kept under it)."""
        import hashlib
        import json

        import torch

        from soar_agent.evalcache import model_hash, problems_hash

        if "cost_signature" not in self._models:
            cfg = config_to_dict(self.config)
            payload = [model_hash(self.config.model.path), self.config.domain.name, torch.get_num_threads(),
                       *(problems_hash(self.hard_set(split)) for split in ("train", "test")),
                       {name: cfg[name] for name in ("model", "teacher", "student", "reward", "eval")},
                       cfg["run"]["mode"], cfg["run"]["workers"]]
            self._models["cost_signature"] = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str)
                                                            .encode()).hexdigest()
        return self._models["cost_signature"]

    def _remember_timing(self, **seconds: float) -> None:
        from soar_agent.evalcache import cache_dir, remember_timing

        if cache_dir() is not None:
            remember_timing(self._cost_signature(), **seconds)

    def _remembered_timings(self) -> dict:
        from soar_agent.evalcache import cache_dir, remembered_timings

        return remembered_timings(self._cost_signature()) if cache_dir() is not None else {}

    def best_checkpoint(self) -> dict | None:
        """The baseline checkpoint with the highest estimated improvement on hard-train (best_by_reward)."""
        return best_by_reward(self.store.checkpoints(self.run_id, role="baseline"))

    def export(self, which: str = "best", out: str | None = None, force: bool = False, log=None) -> Path:
        """Export a checkpoint (export.export_checkpoint); `log` gets one line saying which (default: the
        agent's log)."""
        from soar_agent.export import export_checkpoint, prune_exports

        # milliseconds: two exports in one second must not collide (an existing --out is refused)
        target = export_checkpoint(self.store, self.run_id, self.config, which,
                                   Path(out) if out else self.paths.exports / f"export-{int(time.time() * 1000)}",
                                   best=self.best_checkpoint(), force=force, log=log or self.log)
        if out is None:  # one per session otherwise, kept forever
            prune_exports(self.paths.exports, self.config.budget.keep_checkpoints)
        return target

    def before_and_after(self, exported: Path) -> str | None:
        """One line `hard-test pass@K: base X -> exported Y`: the base model's step-0 hard-test evaluation, and
        the evaluation of the exported checkpoint itself, found by its content: the run's evaluation (the PQ
        student's, a baseline's or the base model's) of the checkpoint whose weights and config hash as the
        exported directory's (evalcache.model_hash): the same model, not another's figure (its tokenizer is the
        run's, as evaluated). When the run evaluated none such, the line says how to measure it. None without
        a step-0 evaluation."""
        from soar_agent.evalcache import model_hash
        from soar_agent.models import ModelLoadError

        evaluations = [e for e in self.store.evaluations(self.run_id) if e["set_name"] in ("hard-test", "hard-test-pq")]
        base = next((e for e in evaluations if e["set_name"] == "hard-test" and e["teacher_step"] == 0
                     and e["checkpoint_id"] is None), None)
        ks = sorted((int(name[5:]) for name in (base or {"summary": {}})["summary"] if name.startswith("pass@")))
        if not ks:
            return None
        k = f"pass@{ks[-1]}"
        line = f"hard-test {k}: base {base['summary'][k]:.3f} -> exported"
        checkpoints = {c["id"]: c for c in self.store.checkpoints(self.run_id)}
        target = model_hash(exported, weights_only=True)
        for evaluation in reversed(evaluations):  # the newest first: the PQ student's when the run ended with it
            checkpoint = checkpoints.get(evaluation["checkpoint_id"])
            path = (checkpoint["path"] if checkpoint else
                    self.config.model.path if evaluation["set_name"] == "hard-test" else None)
            try:
                same = path is not None and k in evaluation["summary"] and model_hash(path, True) == target
            except (OSError, ModelLoadError):  # a pruned checkpoint
                same = False
            if same:
                return f"{line} {evaluation['summary'][k]:.3f}"
        hard_test = self.config.domain.hard_test or shipped_hard_set(self.domain.NAME, "test")
        return (f"{line} not evaluated (the run evaluated no checkpoint with its weights): soar eval --model"
                f" {exported} --domain {self.config.domain.name} --data {hard_test}"
                f" --samples {self.config.eval.samples} --max-new-tokens {self.config.eval.max_new_tokens} measures it")


class UnitStopped(Exception):
    """A stop command read inside a unit of work (Agent.beat): the unit ends after its current step and is
    redone on resume; `Agent.run` records the stop."""


def _store_time() -> str:
    """Now, as the store writes times (UTC ISO with milliseconds): comparable with its rows' as text."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _local_time(stored: str) -> str:
    """A stored (UTC ISO) time as a local date and clock time, for messages."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(stored).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return stored


class BudgetTooSmall(ValueError):
    """A time budget that this machine's measurements say holds no teacher step (Agent.check_budget): one line
    naming the --hours that fits; `soar run` exits with status 2 before any work."""


class _StepSkipped(RuntimeError):
    """A teacher step that could not run (the teacher wrote no usable dataset)."""
