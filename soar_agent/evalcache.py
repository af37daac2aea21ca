"""What this machine has already measured, kept across runs in a small cache directory (SOAR_CACHE_DIR, else
$XDG_CACHE_HOME/soar-agent, else ~/.cache/soar-agent; SOAR_CACHE_DIR="" turns it off):

* evaluations of a base model: every run evaluates its base model on its hard-test at step 0 (14-17 minutes
  for the shipped model's 107 x 32 on 2 busy cores), and that evaluation is a function of the model's files,
  the problems and the evaluation's settings (samples, seed, token budget, temperature, device, dtype, chat
  template, library versions). It is kept under a hash of all of them (evaluations/<key>.json): a second
  run on the same model and hard set stores the first one's results (marked `cached`) instead of computing
  them again; another hard set, k or seed is another key.
* timings: the seconds a hard-test evaluation, a teacher step and a final-training step took, per cost
  signature (the model's files, the hard sets and the config sections that set a step's work), so that a
  run can say at its start whether its time budget holds one teacher step (budget.check_budget).

The cache is an optimisation: a file that cannot be read or written is a miss, never an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

CACHE_ENV = "SOAR_CACHE_DIR"
FORMAT = 1
_SKIPPED = {"README.md", "optimizer.pt"}  # a model card and a teacher's optimizer: not the model's behaviour


def cache_dir() -> Path | None:
    """The cache directory, or None when SOAR_CACHE_DIR is set empty (off)."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return Path(value).expanduser() if value.strip() else None
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "soar-agent"


def _sha(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _weights(name: str) -> bool:
    return name in ("config.json", "adapter_config.json") or name.endswith((".safetensors", ".bin", ".pt", ".pth"))


def model_hash(directory, weights_only: bool = False) -> str:
    """sha256 over a model directory's files (names and contents: weights, config, tokenizer; not a model card
    README.md or an optimizer state), so that two directories holding the same model hash alike wherever they
    are; `weights_only`: its weights and config.json alone, what an export of a checkpoint keeps unchanged (it
    writes its own generation config and tokenizer limits). Remembered in the cache by (path, size, mtime) of
    each file: a model of gigabytes is read once."""
    from soar_agent.models import resolve_model_path

    root = resolve_model_path(directory).resolve()
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".") and p.name not in _SKIPPED
                   and (_weights(p.name) or not weights_only))
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    memo_file = (cache_dir() / "model-hashes.json") if cache_dir() else None
    memo = _read_json(memo_file) if memo_file else None
    memo = memo if isinstance(memo, dict) else {}
    where = f"{root}{' (weights)' if weights_only else ''}"
    if isinstance(memo.get(where), dict) and memo[where].get("files") == stamp:
        return memo[where]["hash"]
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    value = digest.hexdigest()
    if memo_file:
        memo[where] = {"files": stamp, "hash": value}
        _write_json(memo_file, memo)
    return value


def problems_hash(problems) -> str:
    """sha256 of a problem list as evaluated: each question with its answer, domain and level, in order."""
    return _sha([[p.domain, p.question, p.answer, p.level] for p in problems])


def evaluation_key(model: str, problems: str, **settings) -> dict:
    """The fields an evaluation is a function of (model and problems hashes, and settings); versions of the
    libraries that sample are part of it, so an upgrade measures again."""
    import torch
    import transformers

    from soar_agent import __version__

    return {"format": FORMAT, "model": model, "problems": problems, "soar": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, **settings}


def _entry_path(key: dict) -> Path | None:
    root = cache_dir()
    return root / "evaluations" / f"{_sha(key)}.json" if root else None


def load_evaluation(key: dict) -> dict | None:
    """The cached evaluation under `key`, or None (no cache, no entry, or an unreadable or foreign one)."""
    path = _entry_path(key)
    entry = _read_json(path) if path else None
    if not isinstance(entry, dict) or entry.get("key") != json.loads(json.dumps(key, default=str)):
        return None
    if not isinstance(entry.get("results"), list) or not isinstance(entry.get("summary"), dict):
        return None
    return entry


def save_evaluation(key: dict, summary: dict, results, seconds: float) -> None:
    """Keep an evaluation (its summary, per-problem counts and completions) under `key`."""
    path = _entry_path(key)
    if path is None:
        return
    _write_json(path, {"key": key, "measured_at": time.time(), "seconds": seconds, "summary": summary,
                       "results": [{"samples": r.samples, "correct": r.correct, "greedy_correct": r.greedy_correct,
                                    "completions": list(r.completions)} for r in results]})


def cached_results(entry: dict, problems) -> list | None:
    """The entry's per-problem results for `problems` (the list its key's problems hash was taken of)."""
    from soar_agent.evaluation import ProblemResult

    rows = entry["results"]
    if len(rows) != len(problems):
        return None
    try:
        return [ProblemResult(problem, int(row["samples"]), int(row["correct"]), row.get("greedy_correct"),
                              [str(text) for text in row.get("completions") or []])
                for problem, row in zip(problems, rows)]
    except (KeyError, TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------- timings


def remembered_timings(signature: str) -> dict:
    """What earlier runs with this cost signature measured on this machine: seconds of `evaluation`
    (hard-test), `step` (a teacher step) and `pq_step` (a final-training step), each where measured."""
    root = cache_dir()
    table = _read_json(root / "timings.json") if root else None
    entry = table.get(signature) if isinstance(table, dict) else None
    return {k: float(v) for k, v in (entry or {}).items() if k in ("evaluation", "step", "pq_step")
            and isinstance(v, (int, float)) and v > 0}


def remember_timing(signature: str, **seconds: float) -> None:
    root = cache_dir()
    if root is None:
        return
    table = _read_json(root / "timings.json")
    table = table if isinstance(table, dict) else {}
    entry = table.get(signature) if isinstance(table.get(signature), dict) else {}
    entry.update({name: float(value) for name, value in seconds.items() if value and value > 0}, at=time.time())
    table[signature] = entry
    _write_json(root / "timings.json", table)


# ---------------------------------------------------------------------------------------------- files


def _read_json(path: Path | None):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError, TypeError):
        return None


def _write_json(path: Path, value) -> None:
    """Atomic (a temporary sibling renamed over the file); a failure (no space, no permission) is ignored."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(value, out, default=str)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except (OSError, TypeError, ValueError):
        pass
