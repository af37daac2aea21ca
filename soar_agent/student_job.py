"""One student training as a pure job, and the executors that run a step's jobs.

`run_student_job(job)`: (the baseline's weights on disk, the problems, the reward questions and the
baseline's scores on them, the config, a seed) -> the trained checkpoint written to `job.out_dir`, the
student's per-question scores, its metrics and its rollouts. It reads nothing else and writes nothing but
`out_dir`, so it runs in the agent's process, in a worker process, or as a Ray task on another machine,
and the same job gives the same result. Only the driver (`Agent`) writes the store: a unit is recorded
once, whatever order the jobs finish in, and a job whose worker dies is retried with the same seed.

`run.workers = 1` runs the jobs one after another in the agent's process (no Ray). With more workers the
jobs are Ray tasks (`pip install 'soar-agent[ray]'`): `ray.init()` starts a local instance with
`run.workers` CPUs, or joins `run.ray_address` / `RAY_ADDRESS` so a cluster adds machines.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from soar_agent.tasks.base import Problem


@dataclass(frozen=True)
class StudentJob:
    key: tuple  # the driver's name for the unit, e.g. (dataset index, dataset id, student index)
    baseline_path: str  # a checkpoint directory, or the config's model path before any promotion
    config: dict  # config_to_dict(RunConfig)
    problems: list[Problem]
    reward_questions: list[Problem]
    steps: int
    seed: int
    reward_seed: int  # the step's sampling seed for reward scores (paired with the baseline's)
    out_dir: str
    ref: str  # names the unit's rollouts in the store, e.g. step-3/student-1-0
    add_lora: bool = False  # the base model, trained with LoRA: wrap it in a fresh adapter first
    # srpo: question -> correctness of earlier trainings' rollouts (rl.srpo.stored_history), so History
    # Resampling survives a resume; empty for the other backends
    history: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class StudentResult:
    key: tuple
    checkpoint_path: str | None
    after: list[float] | None  # per-question scores under reward.metric (None: training failed)
    metrics: dict = field(default_factory=dict)  # StudentMetrics without per_step, or {"error": ...}
    rollouts: list[dict] = field(default_factory=list)  # with "question" (the driver maps it to a problem id)


def rollout_rows(batch, scores, ref: str) -> list[dict]:
    """Stored rollouts of one sampled batch. SRL batches hold StepPrompts: phase "srl", ref .../srl-K,
    reward = step similarity (-1 = bad format)."""
    return [{"question": getattr(item, "problem", item).question,
             "phase": "srl" if hasattr(item, "expert_step") else "student",
             "ref": f"{ref}/srl-{item.index}" if hasattr(item, "expert_step") else ref,
             "completion": text, "reward": None if score != score else score,
             "correct": None if score != score or hasattr(item, "expert_step") else int(score > 0)}
            for item, text, score in zip(batch.problems, batch.texts, scores)]


_ENGINES: dict = {}  # one vLLM engine per process: it reserves its share of GPU memory once


def student_engine(config):
    """The engine students sample from when it is not the student itself: vLLM with model.engine = vllm
    for the outcome-reward backends (rloo, grpo, sft-rlvr's RL phase; the others sample with their own HF
    loops), built once per process from the base model and given each student's weights as it trains.
    None = HF sampling."""
    if config.model.engine != "vllm" or config.student.backend not in ("rloo", "grpo", "sft-rlvr"):
        return None
    key = (config.model.path, config.model.dtype)
    if key not in _ENGINES:
        from soar_agent.engine import make_engine
        from soar_agent.models import resolve_model_path

        _ENGINES[key] = make_engine("vllm", None, None, resolve_model_path(config.model.path), config.model.dtype)
    return _ENGINES[key]


def reward_scores(model, tokenizer, domain, config, questions: list[Problem], seed: int, tick=None) -> list[float]:
    """Per-question scores under reward.metric. The baseline and its students are scored by this one
    function with the step's seed, so their samples are paired. `tick()`: the agent's heartbeat (question_scores)."""
    from soar_agent.reward import question_scores

    return question_scores(model, tokenizer, domain, questions, config.reward.metric, samples=config.reward.samples,
                           seed=seed, temperature=config.student.temperature, max_new_tokens=config.eval.max_new_tokens,
                           tick=tick)


def train_and_score(baseline, tokenizer, domain, config, job: StudentJob, on_step: Callable[[int], None] | None = None,
                    tick: Callable[[], None] | None = None):
    """Train a student from `baseline` (a model in memory) and score it: (student, StudentResult). `on_step(n)`
    after each training step, `tick()` while the student is scored (the agent's progress and heartbeat)."""
    from soar_agent.models import save_checkpoint
    from soar_agent.rl import trainer
    from soar_agent.rl.train import NonFiniteLoss

    rollouts: list[dict] = []
    extra = {"history": job.history} if config.student.backend == "srpo" else {}
    engine = student_engine(config)
    if engine is not None:
        extra["engine"] = engine
    started = time.time()
    try:
        student, metrics = trainer(config.student.backend)(
            baseline, tokenizer, job.problems, domain, config.student, steps=job.steps, seed=job.seed,
            on_rollout=lambda batch, scores: rollouts.extend(rollout_rows(batch, scores, job.ref)),
            log=None if on_step is None else (lambda record: on_step(record["step"] + 1)), **extra)
    except NonFiniteLoss as error:
        return None, StudentResult(job.key, None, None, {"error": str(error), "non_finite": True}, rollouts)
    train_seconds = time.time() - started
    after = reward_scores(student, tokenizer, domain, config, job.reward_questions, job.reward_seed, tick)
    score_seconds = time.time() - started - train_seconds
    directory = save_checkpoint(student, tokenizer, job.out_dir)
    save_seconds = time.time() - started - train_seconds - score_seconds  # the three apart: soar status --profile
    # the training alone (not its scoring), and its supervised and RL steps apart: what the end of a run's
    # time budget is estimated from (pq.measured_costs; an RL step samples, so it costs several supervised ones)
    sft = [r.get("seconds", 0.0) for r in metrics.per_step if r.get("phase") == "sft"]
    summary = {k: v for k, v in vars(metrics).items() if k != "per_step"} | {
        "train_seconds": train_seconds, "score_seconds": score_seconds, "save_seconds": save_seconds,
        "sft_steps": len(sft), "sft_seconds": sum(sft),
        "rl_seconds": sum(r.get("seconds", 0.0) for r in metrics.per_step if r.get("phase") != "sft")}
    return student, StudentResult(job.key, str(directory), after, summary, rollouts)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def release_freed_memory() -> None:
    """Give the memory the process has freed back to the OS: after each teacher step (agent) and before each
    job in a reused worker. glibc keeps freed heap pages for reuse, so once a step's student copies,
    optimizers and sampling buffers are gone the resident size still sits 70-150 MB above what is live, by a
    different amount each step. Measured on the shipped model (a 2-step student plus an evaluation per unit,
    3 units): RSS 549 / 508 / 587 MB after each unit, 437 MB after each trim. It does not explain all
    growth: a 74-minute default arith run with it still rose ~96 MB/hour (bench/memory.py)."""
    gc.collect()  # tensors held in reference cycles are freed first
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def run_student_job(job: StudentJob, threads: int | None = None) -> StudentResult:
    """The job from disk to disk (see the module docstring)."""
    import torch

    release_freed_memory()  # what the worker's previous job freed

    from soar_agent.config import config_from_dict
    from soar_agent.models import add_lora, load_model, load_tokenizer
    from soar_agent.tasks import get_domain
    from soar_agent.tasks.chat import for_model

    if threads:
        torch.set_num_threads(threads)
    config = config_from_dict(job.config)
    tokenizer = load_tokenizer(config.model.path)
    model = load_model(job.baseline_path, config.model.dtype, device=config.model.device)
    if job.add_lora:
        model = add_lora(model, config.model.lora_rank, config.model.lora_alpha, config.model.lora_dropout)
    domain = for_model(get_domain(config.domain.name), tokenizer, config.model.chat_template)
    return train_and_score(model, tokenizer, domain, config, job)[1]


def run_on_ray(jobs: list[StudentJob], workers: int, address: str = "",
               waiting: Callable[[], None] = lambda: None) -> Iterator[StudentResult]:
    """The jobs as Ray tasks (one CPU and one torch thread each), yielded as they finish; `waiting` is called
    every few seconds until one does (the agent's heartbeat). A task whose worker dies is retried (same job,
    same seed, same result); a job that raises is re-raised here."""
    try:
        import ray
    except ImportError:
        raise ValueError("run.workers > 1 needs Ray: pip install 'soar-agent[ray]' (or set run.workers = 1)") from None
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS", "")
        ray.init(**({"address": address} if address else {"num_cpus": workers}), include_dashboard=False,
                 log_to_driver=False, ignore_reinit_error=True,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}})
    # on GPUs the workers share them: each task takes its fraction (vLLM's memory share is not split: untested)
    gpus = ray.cluster_resources().get("GPU", 0.0)
    task = ray.remote(num_cpus=1, num_gpus=min(1.0, gpus / workers) if gpus else 0, max_retries=3)(run_student_job)
    pending = [task.remote(job, 1) for job in jobs]
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=10.0)
        if done:
            yield ray.get(done[0])
        else:
            waiting()
