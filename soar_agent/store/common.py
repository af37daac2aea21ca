"""What every part of the store shares: the values its enumerated columns take, its errors, and the encoding
and checking of the values a record is written with (JSON columns, 0/1 flags, content hashes, checkpoint
paths relative to the run directory)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Enumerations. Only ``problems.source`` (and the 0/1 flags) are CHECK constraints in the schema: SQLite cannot
# alter a CHECK without rebuilding the table, so sets that are likely to grow are enforced here instead.
PROBLEM_SOURCES = ("seed", "hard", "teacher", "promotion")
PROBLEM_SPLITS = ("train", "val", "test")
DATASET_KINDS = ("curriculum", "hard-train", "hard-val", "hard-test", "promotion", "seed", "transfer")
CHECKPOINT_ROLES = ("baseline", "student", "teacher", "export", "pq", "pq-chain")
CHECKPOINT_STATUSES = ("writing", "complete", "deleted")
EVENT_LEVELS = ("debug", "info", "warning", "error")  # in increasing severity
ROLLOUT_PHASES = ("student", "srl", "eval", "teacher")  # srl: one step of an expert solution (ref ends in /srl-K)
COMMANDS = ("pause", "resume", "stop", "promote", "export")
RUN_MODES = ("soar", "hard-only", "intrinsic", "mine-hard", "eval")  # documentation only: modes may grow

# Tables callers may count with ``Store.count``.
TABLES = (
    "runs", "problems", "datasets", "dataset_items", "evaluations", "evaluation_results",
    "checkpoints", "events", "rollouts", "commands", "teacher_steps", "trainings",
)


class StoreError(RuntimeError):
    """A store that cannot be opened or used as asked; the message is one line naming the file."""


class SchemaVersionError(StoreError):
    """The database was written by newer code (or needs a migration a read-only store cannot run)."""


def _no_run(path: str) -> str:
    return f"{path}: holds no run (an empty store, or one whose write-ahead log {Path(path).name}-wal was lost)"


def normalize_question(question: str) -> str:
    """Whitespace-collapsed question text: what deduplication compares."""
    return " ".join(question.split())


def content_hash(domain: str, question: str) -> str:
    """sha256 hex of domain + normalized question; problems are unique per (run, content_hash)."""
    # The NUL separator keeps ("ab", "c") and ("a", "bc") apart.
    return hashlib.sha256(f"{domain.strip()}\0{normalize_question(question)}".encode()).hexdigest()


def run_relative(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """A checkpoint path as the store keeps it: relative to `root` (the run directory, the store file's) when it
    lies inside it, so that a run moved with `mv` still finds its checkpoints; else absolute."""
    absolute = os.path.abspath(path)
    real, base = os.path.realpath(absolute), os.path.realpath(root)
    if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
        return os.path.relpath(real, base)
    return absolute


def _json_default(value: Any) -> Any:
    # Configs and metrics routinely carry paths and small dataclasses; anything else is a caller bug and
    # should fail loudly rather than be stored as an opaque repr.
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _dumps(value: Any, field: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{field}: not JSON-serialisable ({exc})") from None


def _decode(row: dict | None) -> dict | None:
    """Replace every ``x_json`` column by a decoded ``x`` key."""
    if row is None:
        return None
    out = {}
    for key, value in row.items():
        if key.endswith("_json"):
            out[key[:-5]] = json.loads(value) if value is not None else None
        else:
            out[key] = value
    return out


def _int_keys(mapping: dict) -> dict:
    """JSON object keys are strings; pass@k dicts are keyed by int k, so restore them."""
    return {int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k: v for k, v in mapping.items()}


def _flag(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if value in (0, 1):  # True/False compare equal to 1/0
        return int(value)
    raise ValueError(f"{field} must be 0/1, True/False or None: got {value!r}")


def _check(value: Any, allowed: Sequence[str], field: str, optional: bool = False) -> None:
    if optional and value is None:
        return
    if value not in allowed:
        raise ValueError(f"{field} must be one of {', '.join(allowed)}: got {value!r}")


def _per_item(value: Any, n: int, field: str) -> list:
    """A scalar applied to every item, or a list with one entry per item."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{field}: got {len(value)} entries for {n} problems")
        return list(value)
    return [value] * n
