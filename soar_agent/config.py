"""Run configuration: the nested dataclasses of one SOAR run, their documented defaults, and the loader.

This module owns the shape of a run config (``RunConfig`` and its ten sections), the default value and
the allowed range of every setting, reading a TOML file plus ``--set section.key=value`` overrides with
strict validation (``load_config``), and writing a config back out (``config_to_dict``, ``dump_toml``).

Validation is data-driven: every field carries its help text and constraints in ``field(metadata=...)``
(built by ``_opt``), and one checker walks the fields. Any problem raises ``ConfigError`` with a single
line ``<source>: <section.key>: expected <what>, got <value>``, where the source is the file path or
``--set section.key`` for an override.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "RunConfig",
    "RunSection",
    "ModelSection",
    "DomainSection",
    "TeacherSection",
    "StudentSection",
    "RewardSection",
    "PromotionSection",
    "EvalSection",
    "BudgetSection",
    "MiningSection",
    "load_config",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "dump_toml",
]


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line naming the source, the dotted key and what
    was expected."""


def _opt(default: Any, help: str, **constraints: Any) -> Any:
    """A dataclass field with its help text and validation constraints in ``metadata``.

    Constraints: ``ge``/``gt``/``le``/``lt`` (numeric bounds, also applied to list items), ``choices``
    (allowed values), ``pattern`` (regex a string must fully match), ``distinct`` (list without repeats),
    ``expect`` (human wording of the expectation, replacing the generated one)."""
    if "le" in constraints:  # every size has a documented maximum, so no setting can exhaust memory
        help += f" (at most {constraints['le']:g})" if isinstance(constraints["le"], float) else \
            f" (at most {constraints['le']})"
    metadata = {"help": help, **constraints}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


_PROB = {"ge": 0.0, "le": 1.0}


@dataclass
class RunSection:
    """[run]: identity of the run."""

    name: str = _opt(
        "default",
        "run directory name under runs/ (letters, digits, '.', '_', '-')",
        pattern=r"[A-Za-z0-9][A-Za-z0-9._-]*",
        expect="a run name of letters, digits, '.', '_' or '-' (not starting with '.', '_' or '-')",
    )
    seed: int = _opt(0, "global random seed (python, numpy, torch)", ge=0, le=2**31 - 1)
    mode: str = _opt(
        "soar",
        "soar = teacher-student meta-RL; hard-only = train students on the hard set directly (baseline);"
        " intrinsic = teacher rewarded by an intrinsic, ungrounded signal (ablation; promotion stays on the"
        " grounded reward, as the paper's Intrinsic-T changes the teacher's reward only); curated = train the"
        " baseline with the same student compute on the domain's own problems across its levels or domain.curated"
        " (the paper's full-curated-train-set ceiling)",
        choices=("soar", "hard-only", "intrinsic", "curated"),
    )
    workers: int = _opt(1, "student trainings of a SOAR step run at once: 1 = one after another in this process;"
                           " more = Ray tasks with one CPU and one torch thread each (needs the ray extra; on 2"
                           " cores 2 workers made a teacher step 1.8x (first) to 2.3x (next) faster, bench/parallel.py;"
                           " 1 by default so the core install needs no Ray)", ge=1, le=1024)
    ray_address: str = _opt("", 'Ray cluster to join when workers > 1 ("" = RAY_ADDRESS, else a local instance)')


@dataclass
class ModelSection:
    """[model]: the base model shared by teacher and students."""

    path: str = _opt(
        "default",
        '"default" = the embedded tiny model shipped in the package, else a local Hugging Face directory',
        pattern=r"(?s).*\S.*",
        expect="a non-empty model path",
    )
    dtype: str = _opt("auto", "weights/compute dtype: auto = bfloat16 on a GPU that supports it, else float32",
                      choices=("auto", "float32", "bfloat16", "float16"))
    device: str = _opt("auto", "where models train and sample: auto = the first CUDA GPU when there is one, else cpu;"
                               " or cpu, cuda, cuda:N", pattern=r"auto|cpu|cuda(:[0-9]{1,2})?",
                       expect="auto, cpu, cuda or cuda:N")
    lora: bool = _opt(False, "train LoRA adapters instead of full weights")
    lora_rank: int = _opt(16, "LoRA rank r (only with lora = true)", ge=1, le=1024)
    lora_alpha: int = _opt(32, "LoRA scaling alpha (only with lora = true)", ge=1, le=4096)
    lora_dropout: float = _opt(0.0, "LoRA dropout probability (only with lora = true)", ge=0.0, lt=1.0)
    engine: str = _opt("hf", "generation engine: hf = transformers generate, vllm = vLLM", choices=("hf", "vllm"))
    chat_template: bool = _opt(True, "render student and teacher prompts with the tokenizer's chat template when it"
                                     " has one (instruct models); the shipped model has none")


@dataclass
class DomainSection:
    """[domain]: the task family and its data files (JSONL paths are used as given, relative to the
    working directory)."""

    name: str = _opt("arith", "task domain: arith, program, math, code, or gym:<dataset> (a reasoning-gym dataset,"
                     " e.g. gym:chain_sum; needs the gym extra)", pattern=r"arith|program|math|code|gym:[a-z0-9_]+",
                     expect="arith, program, math, code or gym:<reasoning-gym dataset name>")
    hard_train: str = _opt(
        "", 'JSONL of hard training questions (reward pool Q_R); "" = the shipped hard set of a built-in domain'
    )
    hard_test: str = _opt(
        "", 'JSONL of held-out hard questions for evaluation; "" = the shipped hard set of a built-in domain'
    )
    hard_val: str = _opt(
        "", 'JSONL of held-out hard questions for choosing settings (benchmarks read it; never trained on, never'
            ' the reported figure); "" = the shipped hard-val of a built-in domain, when there is one'
    )
    transfer: str = _opt("", 'optional held-out transfer set (JSONL), evaluated only, never used for reward; "" = none')
    curated: str = _opt(
        "", 'JSONL of curated training problems for run.mode = "curated"; "" = generated by a built-in domain'
        " across all its levels"
    )


@dataclass
class TeacherSection:
    """[teacher]: the copy of the model that writes stepping-stone datasets."""

    datasets_per_step: int = _opt(
        2, "g: datasets the teacher writes per teacher step (2: each needs thousands of items, see n; with split ="
        " length, its short and its long half)", ge=1, le=64)
    items_per_dataset: int = _opt(
        2880, "n: problems per dataset (2,880 = the 45 supervised steps of 64 expert solutions a 50-step sft-rlvr"
        " student takes in one pass. Measured on the shipped model: students of 8 steps on 16 items moved the"
        " reward by -0.0002 +- 0.0036 (bench/reward_noise.py, noise); of 50 steps on 2,880 items by +0.040 to"
        " +0.048 nats/token, +- 0.008 (bench/dataset_split.py, random split))", ge=1, le=4096)
    temperature: float = _opt(1.0, "sampling temperature for writing problems (0 = greedy)", ge=0.0, le=10.0)
    max_new_tokens: int = _opt(128, "token budget for one generated problem", ge=1, le=32768)
    max_sampling_rounds: int = _opt(
        8, "rejection-sampling rounds to fill the datasets, each sized by the share accepted so far, before the"
        " step is declared garbage (sooner when that share cannot fill them in the rounds left)", ge=1, le=100
    )
    reward_target: str = _opt(
        "verified",
        "what students are rewarded against: teacher = the teacher's own answers (the paper); verified = answers"
        " from the domain's exact solver where it has one (arith, program), else the teacher's; drop-unverified = teacher answers, dropping items the verifier does not confirm",
        choices=("teacher", "verified", "drop-unverified"),
    )
    split: str = _opt(
        "length",
        "how the step's g x n items are split into its g datasets: random = in sampling order, i.i.d. (the"
        " paper); length = by question length, shortest n first, so the datasets differ in difficulty and the"
        " teacher's RLOO compares its short items with its long ones (the reward decides which way it moves)."
        " Measured on the shipped model (arith, expert-logprob, 2 x 2,880 items, 50-step students): the reward"
        " gap between the two datasets was 1.4 paired standard errors with random and 11.8 with length"
        " (bench/dataset_split.py); in the loop, length moved the teacher's mean item level 3.08 -> 6.06 in 8"
        " updates (random: 3.08 -> 2.71 in 9). Its final-training figures (bench/README.md, \"What the teacher's"
        " data is worth\") were measured before hard-val existed: bench/soar_effect.py --arms soar,soar-random"
        " --eval-set val compares the two where settings are chosen",
        choices=("random", "length"),
    )
    lr: float = _opt(1e-4, "teacher learning rate (RLOO over its datasets' rewards); 0 = a frozen teacher that is"
                           " never updated (the ablation that shows what the teacher's learning adds)", ge=0.0, le=1.0)
    reject_penalty: float = _opt(
        1.0, "the teacher update's advantage for its rejected completions (up to one step's items of them), in"
             " units of the step's mean |advantage|, negated: it keeps the teacher writing items that parse as it"
             " learns longer questions. 0 = the paper's rejection sampling alone, under which the share of samples"
             " kept fell ~5 points a teacher step in every default run (67% -> 36% by step 7) until the sampler"
             " came up short. Measured without students (bench/teacher_format.py: the longer half winning each"
             " step by 0.1, 2 x 720 items): kept 66% -> 18% over 10 updates with 0, 66% -> 58% over 12 with 1 at"
             " the same growth of the questions (mean level 2.9 -> 6.1 and 6.3), 67% throughout with 2 but slower"
             " growth (5.5 after 12)", ge=0.0, le=100.0)


@dataclass
class StudentSection:
    """[student]: the copies trained on each teacher dataset to measure its value."""

    backend: str = _opt("sft-rlvr", "student training: sft-rlvr = supervised steps on the expert solutions for"
                                " sft_share of the steps (at most one pass over them), then rloo from those weights;"
                                " domains without expert solutions train with rloo only (the built-in arith and"
                                " program domains have them). The default by measurement on the shipped model"
                                " (bench/README.md): bench/student_learns.py 500 steps arith L3-5 greedy +27.1 points"
                                " (rloo, 100 steps at the same time: -2.0); at the loop's 8 steps on 16 items -2.3"
                                " (rloo -3.0)."
                                " rloo / grpo = outcome reward (RLVR); srl = step-wise similarity to"
                                " expert steps (SRL, needs expert steps); srl-rlvr = SRL for srl_share of the steps,"
                                " then rloo from the SRL weights;"
                                " srpo = GRPO with history resampling and two stages"
                                " (SRPO, the srpo_ settings); nested = rloo with rollouts from the student with some middle"
                                " layers skipped, importance-weighted (Nested-ReFT, the nested_ settings)",
                        choices=("rloo", "grpo", "srl", "srl-rlvr", "sft-rlvr", "srpo", "nested"))
    students_per_dataset: int = _opt(
        1, "r: independent students trained per dataset (reward is their mean; 1: a 50-step student's reward"
        " carries a paired standard error of 0.004-0.01 nats, below the gaps the teacher learns from)", ge=1, le=64)
    steps: int = _opt(50, "student training steps from the current baseline (50: see teacher.items_per_dataset)",
                      ge=1, le=100_000)
    extra_steps_after_promotion: int = _opt(
        5, "additional training steps for every student once the baseline has been promoted at least once (the"
        " paper's 10 steps, +5 after a promotion: a promoted baseline needs more steps to show a dataset's"
        " value; 0 = none)", ge=0, le=100_000
    )
    batch_prompts: int = _opt(8, "prompts per student training step", ge=1, le=1024)
    group_size: int = _opt(8, "completions sampled per prompt (RLOO/GRPO group; needs >= 2 for a baseline)", ge=2, le=256)
    temperature: float = _opt(1.0, "sampling temperature for student rollouts (0 = greedy)", ge=0.0, le=10.0)
    max_new_tokens: int = _opt(384, "token budget for one student completion (the longest built-in solutions are ~360 tokens)", ge=1, le=32768)
    lr: float = _opt(3e-5, "student learning rate (measured on the shipped model, bench/README.md: 1e-4 lowers"
                           " level 3-4 greedy accuracy by 6-15 points within 60 steps, 1e-5 to 5e-5 leave it within"
                           " noise; the paper used 1e-5 on 3B models)", gt=0.0, le=1.0)
    kl_coef: float = _opt(0.001, "KL penalty to the baseline policy (0 = none)", ge=0.0, le=100.0)
    eps_low: float = _opt(0.2, "PPO-style ratio clip below 1 (ratio >= 1 - eps_low)", ge=0.0, le=1.0)
    eps_high: float = _opt(0.2, "PPO-style ratio clip above 1 (ratio <= 1 + eps_high)", ge=0.0, le=10.0)
    loss_aggregation: str = _opt(
        "token", "token = average over all tokens in the batch; sequence = average per sequence, then over sequences",
        choices=("token", "sequence"),
    )
    grad_clip: float = _opt(1.0, "gradient norm clip", gt=0.0, le=1e6)
    micro_batch: int = _opt(8, "rows (completions) per forward/backward pass of the student loss, gradients"
                               " accumulated to the same update, rows of similar length together; 0 = the whole"
                               " batch at once. Either way never more rows than keep a pass (logits and activations) within a"
                               " quarter of the device's memory (rl.train.rows_per_pass), so no batch size exhausts"
                               " it. 8 measured on the shipped model (8 x 8 completions, 1 thread): policy"
                               " step 2.9 s against 3.6-4.9 s for the whole batch (less padding); big-vocabulary"
                               " models on a GPU need a few rows (the logits are rows x tokens x vocabulary)",
                            ge=0, le=4096)
    srl_share: float = _opt(0.5, "srl-rlvr: share of the student's steps spent on SRL before RLVR (the SRL paper"
                                 " publishes no schedule)", ge=0.0, le=1.0)
    sft_share: float = _opt(0.9, "sft-rlvr: share of the student's steps spent on supervised steps (batch_prompts x"
                                 " group_size expert solutions each, at most one pass over them) before RLVR (0.9:"
                                 " the measured +27.1 above; 0.5 at 8 steps measured -3.7)", ge=0.0, le=1.0)
    sft_lr: float = _opt(3e-4, "sft-rlvr: learning rate of the supervised steps, warmed up linearly over their first"
                               " tenth (bench/sft_ceiling.py on the shipped model: 1e-4 leaves it flat, 3e-4 lifts"
                               " arith L3-5 by +19 to +30 points in 600 steps of 48)", gt=0.0, le=1.0)
    srl_epsilon: float = _opt(0.01, "SRL dynamic sampling: keep a step prompt only when its rollout rewards' std"
                                    " exceeds this (not published in the paper; 0.01 as a community"
                                    " reimplementation)", ge=0.0, le=1.0)
    srl_think: bool = _opt(False, "SRL: the student writes <think>...</think> before each step (the shipped tiny"
                                  " model writes none)")
    nested_skip_ratio: float = _opt(0.25, "Nested-ReFT: share of the decoder layers skipped by the rollout model,"
                                          " drawn per batch from the middle layers (never the first or last; 0 ="
                                          " plain rloo)", ge=0.0, lt=1.0)
    nested_correction: str = _opt("truncated", "Nested-ReFT bias correction of the off-policy update (our formulas;"
                                               " the paper's are not public): truncated = per-token IS weight"
                                               " min(rho, nested_is_cap); retrace = cumulative product of"
                                               " nested_trace_lambda * min(1, rho) along the completion; masked ="
                                               " drop completions whose mean log rho leaves +-nested_mask_band",
                                  choices=("truncated", "retrace", "masked"))
    nested_is_cap: float = _opt(2.0, "Nested-ReFT truncated: cap C on the per-token importance weight", ge=1.0,
                                le=100.0)
    nested_trace_lambda: float = _opt(1.0, "Nested-ReFT retrace: trace decay lambda per token", gt=0.0, le=1.0)
    nested_mask_band: float = _opt(0.5, "Nested-ReFT masked: a completion trains only while its mean per-token log"
                                        " ratio (full student over rollout model) lies within +-this (nats)",
                                   gt=0.0, le=10.0)
    srpo_resample_every: int = _opt(0, "SRPO history resampling boundary, where problems whose rollouts were all"
                                       " correct are dropped: 0 = after each pass over the stage's problems (the"
                                       " paper's epoch), N = every N steps (a student's training is often about one"
                                       " pass)", ge=0, le=100_000)
    srpo_stage1: str = _opt("harder-half", "SRPO stage-1 problems: harder-half = those at or above the median level"
                                           " (all when levels are unknown or equal), all = the problems as given",
                            choices=("harder-half", "all"))
    srpo_stage2: str = _opt("all", "SRPO stage-2 problems, trained from the stage-1 weights",
                            choices=("all", "harder-half"))
    srpo_switch_step: int = _opt(0, "SRPO: stage 2 starts before this step (0 = halfway through the training; the"
                                    " paper publishes no switch rule)", ge=0, le=100_000)
    srpo_plateau_window: int = _opt(0, "SRPO: with W > 0, stage 2 starts earlier once stage 1's mean train reward"
                                       " over its last W steps is no higher than over the W before (0 = off)", ge=0, le=1000)
    srpo_kl_coef: float = _opt(0.0, "SRPO's KL penalty to the baseline (the paper uses none; srpo ignores kl_coef)",
                               ge=0.0, le=100.0)
    srpo_mask_overlong: bool = _opt(True, "SRPO: completions that run into max_new_tokens without finishing get"
                                          " advantage 0 (the paper's setting)")


# Chosen by measurement (see curricula/default.toml for the figures).
METRIC_DEFAULT = "expert-logprob"
METRIC_MEASUREMENT = ("default by measurement on the shipped model: paired stderr between measurements of one"
                      " student (bench/reward_noise.py, |Q_R| 64) greedy 0.0136 (above tau 0.01), sampled k=8"
                      " 0.0036, expert-logprob 0.0027 nats/token; sampled is ~0 before and after on fail@128"
                      " questions, so the same SOAR run (50-step students, 2 x 512 items) promoted nothing in 9"
                      " teacher steps with sampled and 4 times in 17 with expert-logprob; domains or hard-train"
                      " files without expert steps fall back to sampled, with a note")


@dataclass
class RewardSection:
    """[reward]: the grounded teacher reward (student improvement on hard training questions)."""

    questions: int = _opt(64, "|Q_R|: hard-train questions sampled per teacher step to score students", ge=1, le=100_000)
    metric: str = _opt(
        METRIC_DEFAULT,
        "student improvement on Q_R: greedy = greedy accuracy delta (the paper's); sampled = mean accuracy of"
        " reward.samples samples, same seed before and after (paired); expert-logprob = mean per-token"
        " log-likelihood (nats) of the expert solution, for domains with expert steps"
        + (f" ({METRIC_MEASUREMENT})" if METRIC_MEASUREMENT else ""),
        choices=("greedy", "sampled", "expert-logprob"),
    )
    samples: int = _opt(8, "k: sampled completions per reward question (reward.metric = sampled)", ge=1, le=1024)


@dataclass
class PromotionSection:
    """[promotion]: when the best students replace the baseline."""

    tau: float = _opt(
        0.01,
        "promote when the moving average of the reward exceeds tau, in reward.metric's unit: an accuracy gain in"
        " [-1, 1] for greedy and sampled, nats per token for expert-logprob (its students' measured moves are"
        " about 0.01 nats, so the same 0.01 is a comparable bar)",
        ge=-1.0, le=1.0)
    window: int = _opt(3, "teacher steps in the reward moving average", ge=1, le=1000)


@dataclass
class EvalSection:
    """[eval]: periodic evaluation on the held-out hard test set."""

    every_teacher_steps: int = _opt(5, "evaluate every this many teacher steps", ge=1, le=100_000)
    samples: int = _opt(32, "completions sampled per test question (pass@k / mean accuracy)", ge=1, le=1024)
    max_new_tokens: int = _opt(384, "token budget for one evaluation completion", ge=1, le=32768)


@dataclass
class BudgetSection:
    """[budget]: when to stop and how much to keep."""

    hours: float = _opt(0.0, "wall-clock limit in hours (0 = no limit)", ge=0.0, le=8760.0)
    max_teacher_steps: int = _opt(0, "teacher steps before stopping (0 = no limit)", ge=0, le=1_000_000)
    keep_checkpoints: int = _opt(3, "most recent checkpoints kept on disk", ge=1, le=1000)
    pq_steps: int = _opt(
        800,
        "RL steps of the final training that ends a run with a teacher (soar, intrinsic): a fresh base student"
        " trained on the run's rewarded questions (every teacher dataset whose reward beat promotion.tau, the"
        " promoted ones among them) plus hard-train (SOAR-PQ, pq.py), in trainings of 100 steps"
        " each continuing from the last, then evaluated on hard-test and kept as the run's `pq` checkpoint, the"
        " one `soar run` exports; with --hours these steps' time is kept free at the end of the budget, estimated"
        " from the run's own students, and the final training takes every step that fits in the time the teacher"
        " steps leave (budget.pq_share) (0 = none: `soar run` exports the best promoted student). It runs when the"
        " time or step budget ends, not after a stop. Its length and questions were measured before hard-val"
        " existed (bench/README.md, \"The final training's questions\"); bench/teacher_data.py --eval-set val"
        " measures them where settings are chosen",
        ge=0, le=100_000)
    pq_share: float = _opt(
        0.6,
        "with --hours: the share of the budget kept for the final training (at least budget.pq_steps' time);"
        " teacher steps stop when the next would end inside it, and the final training then takes every step"
        " that fits before the deadline, so its length follows the night's budget. Too large a share leaves the"
        " final training the questions of a single teacher step; the one-hour runs behind 0.6 were measured"
        " before hard-val existed (bench/README.md, \"The default at one hour\"): bench/soar_effect.py"
        " --eval-set val --set budget.pq_share=X re-checks it where settings are chosen",
        ge=0.0, lt=1.0)


@dataclass
class MiningSection:
    """[mining]: building the hard train/test sets (questions the base model fails at pass@k)."""

    k: int = _opt(128, "samples per question; a question is hard when none of the k is correct", ge=1, le=4096)
    pool_per_level: int = _opt(150, "candidate questions generated per difficulty level", ge=1, le=100_000)
    levels: list[int] = _opt([], "difficulty levels to mine (empty = domain default)", ge=1, distinct=True, le=1000)
    test_fraction: float = _opt(0.33, "share of the mined hard questions held out as hard-test (reported only)",
                                gt=0.0, lt=1.0)
    val_fraction: float = _opt(0.33, "share of the mined hard questions kept as hard-val (for choosing settings;"
                                     " the rest is hard-train, the teacher's reward pool)", ge=0.0, lt=1.0)
    temperature: float = _opt(1.0, "sampling temperature while mining", ge=0.0, le=10.0)
    max_new_tokens: int = _opt(384, "token budget for one mining completion", ge=1, le=32768)
    seed: int = _opt(1234, "seed for question generation and the train/test split", ge=0, le=2**31 - 1)


@dataclass
class RunConfig:
    """A whole run: one attribute per TOML section."""

    run: RunSection = field(default_factory=RunSection)
    model: ModelSection = field(default_factory=ModelSection)
    domain: DomainSection = field(default_factory=DomainSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    student: StudentSection = field(default_factory=StudentSection)
    reward: RewardSection = field(default_factory=RewardSection)
    promotion: PromotionSection = field(default_factory=PromotionSection)
    eval: EvalSection = field(default_factory=EvalSection)
    budget: BudgetSection = field(default_factory=BudgetSection)
    mining: MiningSection = field(default_factory=MiningSection)


# ----------------------------------------------------------------------------------------------------
# Field table and validation


def _sections() -> dict[str, type]:
    """Section name -> section dataclass, in file order."""
    hints = typing.get_type_hints(RunConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(RunConfig)}


def _fields(section_cls: type) -> dict[str, tuple[Any, dict]]:
    """Key -> (type, metadata) for one section."""
    hints = typing.get_type_hints(section_cls)
    return {f.name: (hints[f.name], dict(f.metadata)) for f in dataclasses.fields(section_cls)}


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _expectation(tp: Any, meta: dict) -> str:
    """Human wording of what a field accepts, e.g. 'an integer >= 2' or "one of 'hf', 'vllm'"."""
    if "expect" in meta:
        return meta["expect"]
    if "choices" in meta:
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    is_list = typing.get_origin(tp) is list
    base = typing.get_args(tp)[0] if is_list else tp
    noun = {int: "an integer", float: "a number", bool: "a boolean", str: "a string"}[base]
    lo = (">=", meta["ge"]) if "ge" in meta else (">", meta["gt"]) if "gt" in meta else None
    hi = ("<=", meta["le"]) if "le" in meta else ("<", meta["lt"]) if "lt" in meta else None
    if lo and hi:
        bounds = f" in {'[' if lo[0] == '>=' else '('}{_num(lo[1])}, {_num(hi[1])}{']' if hi[0] == '<=' else ')'}"
    elif lo or hi:
        op, x = lo or hi
        bounds = f" {op} {_num(x)}"
    else:
        bounds = ""
    if is_list:
        plural = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}[base]
        return f"a list of {'distinct ' if meta.get('distinct') else ''}{plural}{bounds}"
    return noun + bounds


def _show(value: Any) -> str:
    """Short one-line rendering of an offending value."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# The longest text setting (a path, a name, an address): Linux's PATH_MAX. Longer text is refused before it is
# used, so that no error message repeats megabytes of it.
MAX_TEXT_CHARS = 4096


def _scalar_ok(base: type, value: Any, meta: dict) -> tuple[bool, Any]:
    """(accepted, converted value) for one scalar against its base type and constraints."""
    if base is bool:
        return isinstance(value, bool), value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return False, value
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        value = float(value)
        if not math.isfinite(value):
            return False, value
    elif base is str:
        if not isinstance(value, str):
            return False, value
        if "pattern" in meta and not re.fullmatch(meta["pattern"], value):
            return False, value
    if "choices" in meta and value not in meta["choices"]:
        return False, value
    if base in (int, float):
        if ("ge" in meta and not value >= meta["ge"]) or ("gt" in meta and not value > meta["gt"]):
            return False, value
        if ("le" in meta and not value <= meta["le"]) or ("lt" in meta and not value < meta["lt"]):
            return False, value
    return True, value


def _check(where: str, tp: Any, meta: dict, value: Any) -> Any:
    """Validate and convert one value; ``where`` is the error prefix ('<source>: <section.key>')."""
    if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:  # a 5 MB path: the error names it, short
        raise ConfigError(f"{where}: expected at most {MAX_TEXT_CHARS} characters, got {len(value)}: {_show(value)}")
    if typing.get_origin(tp) is list:
        base = typing.get_args(tp)[0]
        ok = isinstance(value, list)
        out: list = []
        if ok:
            for item in value:
                item_ok, item = _scalar_ok(base, item, meta)
                ok = ok and item_ok
                out.append(item)
            if ok and meta.get("distinct") and len(set(out)) != len(out):
                ok = False
        if not ok:
            raise ConfigError(f"{where}: expected {_expectation(tp, meta)}, got {_show(value)}")
        return out
    ok, out = _scalar_ok(tp, value, meta)
    if not ok:
        raise ConfigError(f"{where}: expected {_expectation(tp, meta)}, got {_show(value)}")
    return out


def _unknown(where: str, what: str, name: str, known: Iterable[str]) -> ConfigError:
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(known)
    return ConfigError(f"{where}: unknown {what} ({hint})")


# Keys a committed version had and a later one removed, with the value that behaves exactly like the code
# without them. Every run stores its whole config, so a run created before the removal carries the key: it
# must still resume (and export) after an upgrade when it used that value, and fail clearly when it did not.
REMOVED_KEYS: dict[tuple[str, str], Any] = {
    ("student", "updates_per_batch"): 1,  # removed in 131bfef: 2 passes per batch were within noise of 1
}


def config_from_dict(data: dict, source: str = "<dict>") -> RunConfig:
    """Build a validated RunConfig from a ``{section: {key: value}}`` mapping; missing keys keep their
    defaults. ``source`` names the origin in error messages."""
    sections = _sections()
    built: dict[str, Any] = {}
    for name, table in data.items():
        if name not in sections:
            raise _unknown(f"{source}: {name}", "section", name, sections)
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {name}: expected a [{name}] table, got {_show(table)}")
        fields = _fields(sections[name])
        values = {}
        for key, value in table.items():
            if (name, key) in REMOVED_KEYS:
                kept = REMOVED_KEYS[name, key]
                if value != kept or isinstance(value, bool) != isinstance(kept, bool):
                    raise ConfigError(f"{source}: {name}.{key}: this option was removed; only its old default"
                                      f" {_show(kept)} (today's behaviour) can be read, got {_show(value)}")
                continue
            if key not in fields:
                raise _unknown(f"{source}: {name}.{key}", "key", key, fields)
            tp, meta = fields[key]
            values[key] = _check(f"{source}: {name}.{key}", tp, meta, value)
        built[name] = sections[name](**values)
    return RunConfig(**built)


def _parse_override(raw: str) -> tuple[str, str, Any, str]:
    """'section.key=value' -> (section, key, parsed value, raw value text)."""
    if "=" not in raw:
        raise ConfigError(f"--set {raw.strip()}: expected section.key=value")
    dotted, text = (part.strip() for part in raw.split("=", 1))
    if dotted.count(".") != 1 or not all(dotted.split(".")):
        raise ConfigError(f"--set {dotted}: expected section.key=value (e.g. student.lr=3e-6)")
    section, key = dotted.split(".")
    try:
        parsed = tomllib.loads(f"v = {text}")
        value = parsed["v"] if list(parsed) == ["v"] else text
    except (ValueError, RecursionError):  # TOMLDecodeError is a ValueError; RecursionError: nested too deeply
        value = text
    return section, key, value, text


def apply_overrides(cfg: RunConfig, overrides: Iterable[str]) -> RunConfig:
    """A copy of ``cfg`` with ``section.key=value`` overrides applied, in order (the last one wins).

    The value is parsed as a TOML value, falling back to the plain text when that fails; for string
    settings the plain text is kept whenever it does not parse to a string (so ``run.name=2024`` is the
    name "2024"). Errors name ``--set section.key`` as their source."""
    out = copy.deepcopy(cfg)
    sections = _sections()
    for raw in overrides:
        section, key, value, text = _parse_override(raw)
        where = f"--set {section}.{key}"
        if section not in sections:
            raise _unknown(where, "section", section, sections)
        fields = _fields(sections[section])
        if key not in fields:
            raise _unknown(where, "key", key, fields)
        tp, meta = fields[key]
        if tp is str and not isinstance(value, str):
            value = text
        setattr(getattr(out, section), key, _check(where, tp, meta, value))
    return out


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> RunConfig:
    """Read and validate a run config. ``path=None`` starts from the defaults; ``overrides`` are
    ``section.key=value`` strings (from ``--set``) applied after the file. Raises ConfigError."""
    if path is None:
        cfg = RunConfig()
    else:
        source = str(path)
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"{source}: no such config file")
        if not p.is_file():
            raise ConfigError(f"{source}: not a file")
        try:
            data = tomllib.loads(p.read_bytes().decode("utf-8"))
        except tomllib.TOMLDecodeError as exc:
            message = " ".join(str(exc).split())
            raise ConfigError(f"{source}: invalid TOML: {message}") from None
        except RecursionError:
            raise ConfigError(f"{source}: invalid TOML: nested too deeply") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{source}: invalid TOML: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read config file: {exc.strerror or exc}") from None
        cfg = config_from_dict(data, source)
    return apply_overrides(cfg, overrides)


# ----------------------------------------------------------------------------------------------------
# Writing


def config_to_dict(cfg: RunConfig) -> dict:
    """``{section: {key: value}}`` plain-data view of a config (what ``config_from_dict`` reads)."""
    return dataclasses.asdict(cfg)


def _toml_str(s: str) -> str:
    """A TOML basic string."""
    out = []
    for ch in s:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dump_toml(cfg: RunConfig, comments: bool = False) -> str:
    """The config as TOML text (every section and key, in declaration order); ``load_config`` reads it
    back to an equal RunConfig. ``comments=True`` adds each field's help text and default as a comment."""
    lines: list[str] = []
    for name, section_cls in _sections().items():
        if lines:
            lines.append("")
        lines.append(f"[{name}]")
        section = getattr(cfg, name)
        for key, (_tp, meta) in _fields(section_cls).items():
            if comments:
                default = getattr(section_cls(), key)
                lines.append(f"# {meta['help']} (default {_toml_value(default)})")
            lines.append(f"{key} = {_toml_value(getattr(section, key))}")
    return "\n".join(lines) + "\n"
