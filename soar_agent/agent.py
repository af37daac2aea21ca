"""The long-running SOAR loop behind `soar run`, read top to bottom in `Agent.run`: each teacher step (soar_step:
the teacher writes, students train, the grounded reward, the teacher's update, promotion; or a baseline's
chain of trainings: baselines), an evaluation when one is due (reporting), until the budget ends (budget),
then the final training. `Agent` is the run's context: its config, store, models and control state.

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

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from soar_agent import budget as budgets, control, reporting
from soar_agent.baselines import chain_step
from soar_agent.budget import Budget, BudgetTooSmall  # noqa: F401 (the CLI's and the tests' names for them)
from soar_agent.config import ConfigError, RunConfig, config_from_dict, config_to_dict
from soar_agent.control import UnitStopped
from soar_agent.hard_sets import load_problem_file, shipped_hard_set, store_hard_sets
from soar_agent.preflight import check_machine, check_session, check_teacher_items
from soar_agent.soar_step import StepSkipped, soar_step
from soar_agent.store import Store, StoreError
from soar_agent.student_job import release_freed_memory
from soar_agent.students import students_train_on
from soar_agent.tasks import get_domain
from soar_agent.tasks.base import Problem

MAX_GARBAGE_STEPS = 3


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
    _garbage_attempt: int = 0  # teacher steps in a row that wrote garbage: the retry samples with another seed
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
        store_hard_sets(agent)
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
        """One session of the run, until its budget ends or it is stopped; returns why it stopped."""
        self.session_started, self._stop_in_unit = control.store_time(), False
        control.install_signal_handlers(self)
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
            reason = self._loop(budget)
        except UnitStopped:  # a stop command read inside a unit, after its current step: the unit is redone
            self.log(f"{self.stop_reason}: stopped inside a unit of work; what it had not stored is redone on resume")
            reason = self.stop_reason
        except KeyboardInterrupt:  # a second signal: stopped at once, whatever the unit
            self.store.set_run_status(self.run_id, "stopped")
            self.store.log_event(run_id=self.run_id, level="warning", kind="stopped",
                                 message="interrupted: stopped at once; the unit in progress is redone on resume")
            raise
        self.store.set_run_status(self.run_id, "stopped")
        self.store.log_event(run_id=self.run_id, level="info", kind="stopped", message=reason)
        return reason

    def _loop(self, budget: Budget) -> str:
        """Teacher steps until the budget ends or a stop, each followed by its evaluation when one is due;
        then the final training (SOAR-PQ) when the budget, not a stop, ended the steps."""
        budgets.check_budget(self, budget)
        if (missing := budgets.missing_evaluation(self)) is not None:  # given up early when it would end too late
            self.report_evaluation(step=missing, **({"deadline": budget.deadline} if budget.deadline else {}))
        self._garbage_attempt = 0
        while True:
            release_freed_memory()  # the last step's models and buffers: RSS stays at what is live
            self.poll_commands()
            done = self.completed_steps()
            reason = self.stop_reason or budget.exhausted(len(done)) or budgets.no_time_for_a_step(self, budget, done)
            if reason:
                break
            step = (done[-1]["step"] if done else 0) + 1
            if not self._step(step):
                break
            if step % self.config.eval.every_teacher_steps == 0 and not self.stop_reason:
                self.report_evaluation(step)
        if not self.stop_reason and budgets.ends_with_final_training(self):  # the budget ended, not a stop
            self.final_summary = budgets.final_training(self, budget)
            if self.stop_reason:  # stopped inside it: not the budget's end, and a resume continues its chain
                reason = None
        return reason or self.stop_reason

    def _step(self, step: int) -> bool:
        """One teacher step, its time remembered for sizing later runs; False when the run must stop (a write
        that failed, e.g. a full disk; the teacher writing garbage MAX_GARBAGE_STEPS times in a row)."""
        fresh = not any(s["step"] == step for s in self.store.teacher_steps(self.run_id)) and \
            not self.store.trainings(self.run_id, step)  # a resumed step's time is a remainder
        try:
            self.teacher_step(step)
        except OSError as error:  # stored data stays intact
            self.write_error = error
            self.stop_reason = f"cannot write to {self.paths.root}: {error}; stopping (resume when fixed)"
            self.store.log_event(run_id=self.run_id, level="error", kind="io-error", message=self.stop_reason,
                                 data={"step": step})
            return False
        except StepSkipped as skipped:
            self._garbage_attempt += 1  # the retry samples with another seed
            self.store.log_event(run_id=self.run_id, level="warning", kind="teacher-garbage",
                                 message=str(skipped), data={"step": step})
            self.log(f"[step {step}] skipped: {skipped}")
            if self._garbage_attempt >= MAX_GARBAGE_STEPS:
                self.stop_reason = f"teacher wrote garbage for {self._garbage_attempt} steps in a row; stopping"
                self.store.log_event(run_id=self.run_id, level="error", kind="stopped", message=self.stop_reason)
                return False
            return True
        self._garbage_attempt = 0
        finished = self.completed_steps()
        if fresh and finished and finished[-1]["step"] == step:
            budgets.remember_timing(self, step=finished[-1]["metrics"].get("seconds"))
        return True

    def teacher_step(self, step: int) -> None:
        """A SOAR step (soar_step), or in the hard-only and curated modes a baseline's chain of trainings."""
        if self.config.run.mode in ("hard-only", "curated"):
            return chain_step(self, step)
        return soar_step(self, step)

    # ------------------------------------------------------------------ what other modules ask of a run

    def beat(self) -> None:
        control.beat(self)

    def poll_commands(self) -> None:
        control.poll_commands(self)

    def report_evaluation(self, step: int, deadline: float | None = None) -> dict:
        return reporting.report_evaluation(self, step, deadline)

    def export(self, which: str = "best", out: str | None = None, force: bool = False, log=None) -> Path:
        return reporting.export(self, which, out, force, log)

    def best_checkpoint(self) -> dict | None:
        return reporting.best_checkpoint(self)

    def before_and_after(self, exported: Path) -> str | None:
        return reporting.before_and_after(self, exported)

    def promotions(self) -> int:
        return len(self.store.datasets(self.run_id, kind="promotion"))

    def ends_with_final_training(self) -> bool:
        return budgets.ends_with_final_training(self)


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
