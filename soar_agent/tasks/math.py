"""The `math` dataset domain: competition-style problems with a final answer checked by math-verify.

Owns loading problems from JSONL or Parquet (``question``/``problem`` + ``answer``, optional ``level``),
the student prompt, strict ``\\boxed{}`` answer extraction, and answer checking. math-verify parses
untrusted model text with sympy (whose ``parse_expr`` evaluates Python), so it never runs in this
process: a pool of guarded worker processes does it, with a hard per-item timeout that kills and
rebuilds the pool when a worker hangs in C code its own ``signal.alarm`` cannot interrupt.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from soar_agent.tasks.base import MAX_LINE_BYTES, Problem, RejectedItem, check_level, jsonl_rows, split_solution

NAME = "math"
TOPICS = "competition mathematics: algebra, number theory, counting and probability, geometry, precalculus"

# SRL's expert steps from a user's `steps` / `solution` field: a step this long cannot be a target within
# any sensible student token budget (checked again against the real budget when SRL builds its prompts)
MAX_STEP_CHARS = 4000
_PROMPT_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}.\n"
_BOXED = "\\boxed{"
# Untrusted parsing may allocate wildly (e.g. 9^{9^{9^9}}); bound each worker, not the host.
_WORKER_MEMORY_BYTES = 4 * 1024**3
_WARMUP_TIMEOUT_S = 120.0


# ---------------------------------------------------------------------------------------- loading


def load_problems(path: str | os.PathLike) -> list[Problem]:
    """Problems from a ``.parquet`` file (needs pyarrow) or a JSONL file (anything else).

    Every row needs ``question`` (alias ``problem``) and ``answer``; ``level`` is an optional int.
    Any bad row raises RejectedItem("<file>:<row>: <what is wrong>")."""
    path = Path(path)
    rows = _parquet_rows(path) if path.suffix == ".parquet" else jsonl_rows(path)
    problems, rejected = [], 0
    for number, row in rows:
        try:
            problems.append(_problem(row, f"{path}:{number}"))
        except UnusableSteps as reason:  # the item is dropped, the rest of the file is used
            rejected += 1
            print(f"note: {reason}", file=sys.stderr)
    if rejected:
        print(f"note: {path}: {rejected} item(s) rejected for unusable expert steps; {len(problems)} loaded",
              file=sys.stderr)
    return problems


class UnusableSteps(RejectedItem):
    """A row whose `steps` / `solution` cannot give SRL expert steps: that item is skipped, not the file."""


def _expert_steps(row: dict, where: str) -> tuple[str, ...]:
    """Expert steps from `steps` (a list of strings) or `solution` (text split into numbered steps)."""
    if "steps" in row:
        steps = row["steps"]
        if not isinstance(steps, list) or not all(isinstance(step, str) for step in steps):
            raise UnusableSteps(f"{where}: field 'steps': expected a list of strings")
        if not steps or any(not step.strip() for step in steps):
            raise UnusableSteps(f"{where}: field 'steps': empty step")
        steps = tuple(step.strip() for step in steps)
    elif isinstance(row.get("solution"), str):
        try:
            steps = split_solution(row["solution"])
        except ValueError as reason:
            raise UnusableSteps(f"{where}: field 'solution': {reason}") from None
    else:
        return ()
    if any(len(step) > MAX_STEP_CHARS for step in steps):
        raise UnusableSteps(f"{where}: a solution step is longer than {MAX_STEP_CHARS} characters")
    return steps


def _parquet_rows(path: Path):
    """(row number, row) of a Parquet file, read in batches of rows (not the whole table at once); a text
    field longer than MAX_LINE_BYTES characters or a file of more than MAX_FILE_ROWS rows is refused like a JSONL line."""
    from soar_agent.tasks.base import MAX_FILE_ROWS

    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise ImportError(f"{path}: reading Parquet needs pyarrow (pip install 'soar-agent[parquet]')") from None
    number = 0
    try:
        source = parquet.ParquetFile(path)
        if source.metadata.num_rows > MAX_FILE_ROWS:
            raise RejectedItem(f"{path}: {source.metadata.num_rows} rows, more than {MAX_FILE_ROWS} (the limit for"
                               " one file)")
        for batch in source.iter_batches(batch_size=256):
            for row in batch.to_pylist():
                number += 1
                for key, value in row.items():
                    if isinstance(value, (str, bytes)) and len(value) > MAX_LINE_BYTES:
                        raise RejectedItem(f"{path}:{number}: field {key!r} longer than {MAX_LINE_BYTES} characters"
                                           " (the limit for one problem)")
                yield number, row
    except OSError as exc:  # pyarrow's ArrowInvalid / ArrowIOError are OSError/ValueError subclasses
        raise RejectedItem(f"{path}: unreadable Parquet ({_first_line(exc)})") from None
    except ValueError as exc:
        if isinstance(exc, RejectedItem):
            raise
        raise RejectedItem(f"{path}: unreadable Parquet ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _problem(row: object, where: str) -> Problem:
    if not isinstance(row, dict):
        raise RejectedItem(f"{where}: expected a JSON object, got {type(row).__name__}")
    key = "question" if "question" in row else "problem"
    question = _text_field(row, key, where, missing_name="question")
    if "answer" not in row and "solution" in row:
        raise RejectedItem(f"{where}: field 'answer': missing ('solution' is a worked solution, not an answer)")
    answer = _text_field(row, "answer", where, numbers_ok=True)
    level = check_level(row.get("level"), where)
    return Problem(question=question, answer=answer, domain=NAME, level=level, steps=_expert_steps(row, where),
                   meta={"source": where})


def _text_field(row: dict, key: str, where: str, missing_name: str | None = None, numbers_ok: bool = False) -> str:
    if key not in row or row[key] is None:
        raise RejectedItem(f"{where}: field '{missing_name or key}': missing")
    value = row[key]
    # numeric answers are common in datasets (GSM8K-style); booleans are not answers
    if numbers_ok and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise RejectedItem(f"{where}: field '{key}': expected a string, got {type(value).__name__}")
    value = value.strip()
    if not value:
        raise RejectedItem(f"{where}: field '{key}': empty")
    return value


# ---------------------------------------------------------------------------------------- prompt / extraction


def student_prompt(question: str) -> str:
    return question + _PROMPT_SUFFIX


def extract_answer(completion: str) -> str | None:
    """Content of the last complete top-level ``\\boxed{...}``; None when there is none, it is empty, or
    the last one is never closed (a truncated answer is no answer: the text is never scored whole)."""
    answer = None
    start = completion.find(_BOXED)
    while start != -1:
        end = _closing_brace(completion, start + len(_BOXED))
        if end is None:
            return None
        answer = completion[start + len(_BOXED):end].strip() or None
        start = completion.find(_BOXED, end + 1)
    return answer


def _closing_brace(text: str, index: int) -> int | None:
    """Index of the brace closing the one opened just before ``index``; escaped braces don't count."""
    depth = 1
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    return None


# ---------------------------------------------------------------------------------------- verification


def verify(problem: Problem, prediction: str | None) -> bool:
    return verify_batch([problem.answer], [prediction])[0]


def verify_batch(golds: list[str], predictions: list[str | None], timeout_s: float = 5.0,
                 workers: int = 2) -> list[bool]:
    """math-verify equivalence of each prediction with its gold answer, in the worker pool.

    An item running longer than ``timeout_s`` counts as False; its pool is killed and rebuilt and the
    other in-flight items are rerun. An item whose worker crashes is rerun alone once; crashing again
    counts as False. None predictions are False without a call."""
    if len(golds) != len(predictions):
        raise ValueError(f"verify_batch: {len(golds)} golds but {len(predictions)} predictions")
    results = [False] * len(golds)
    queue = deque(i for i, prediction in enumerate(predictions) if prediction is not None)
    if not queue:
        return results
    with _POOL_LOCK:
        try:
            _run_queue(queue, golds, predictions, results, timeout_s, max(1, workers))
        except BaseException:
            _kill_pool()  # never leave a hung worker behind an interrupted call
            raise
    return results


def _run_queue(queue: deque, golds, predictions, results: list[bool], timeout_s: float, workers: int) -> None:
    # math-verify's own (graceful, alarm-based) limits: three phases must fit inside our hard limit
    inner_s = max(1, int(timeout_s / 3))
    solo: deque[int] = deque()  # items whose worker crashed: rerun one at a time to find the culprit
    in_flight: dict[Future, tuple[int, float, bool]] = {}  # future -> (index, submitted at, alone)
    pool = _get_pool(workers)
    while queue or solo or in_flight:
        if solo and not in_flight:
            index = solo.popleft()
            in_flight[pool.submit(_verify_one, golds[index], predictions[index], inner_s)] = (
                index, time.monotonic(), True)
        while queue and not solo and len(in_flight) < workers:
            index = queue.popleft()
            in_flight[pool.submit(_verify_one, golds[index], predictions[index], inner_s)] = (
                index, time.monotonic(), False)
        oldest = min(submitted for _, submitted, _ in in_flight.values())
        done, _ = wait(in_flight, timeout=max(0.0, oldest + timeout_s - time.monotonic()),
                       return_when=FIRST_COMPLETED)
        crashed = []
        for future in done:
            index, _, alone = in_flight.pop(future)
            try:
                results[index] = bool(future.result())
            except BrokenProcessPool:  # some worker died (segfault, memory): maybe this item's
                if not alone:
                    crashed.append(index)
            except Exception:  # anything else from the worker: not shown equal
                results[index] = False
        now = time.monotonic()
        expired = [future for future, (_, submitted, _) in in_flight.items() if now - submitted >= timeout_s]
        for future in expired:
            in_flight.pop(future)  # stays False
        if crashed or expired or _pool_broken(pool):
            # the survivors lose their worker too; rerun them (crash suspects alone)
            for index, _, alone in in_flight.values():
                (solo if alone else queue).appendleft(index)
            in_flight.clear()
            solo.extend(sorted(crashed))
            _kill_pool()
            pool = _get_pool(workers)


# --- the pool: module-level, created lazily, reused across calls

_POOL_LOCK = threading.RLock()
_pool_state: dict = {"pool": None, "workers": 0}


def _get_pool(workers: int) -> ProcessPoolExecutor:
    pool = _pool_state["pool"]
    if pool is not None and _pool_state["workers"] == workers and not _pool_broken(pool):
        return pool
    _kill_pool()
    methods = multiprocessing.get_all_start_methods()
    # not "fork": forking a process with threads (torch, our own) is unsafe. A forkserver that has
    # preloaded sympy makes (re)building the pool after a kill cost milliseconds instead of seconds.
    if "forkserver" in methods:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["math_verify", __name__])
    else:
        context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init)
    # start every worker now so item timeouts never include interpreter start-up or imports
    pings = [pool.submit(_ping) for _ in range(workers)]
    try:
        for ping in pings:
            ping.result(timeout=_WARMUP_TIMEOUT_S)
    except BaseException:
        _kill(pool)
        raise
    _pool_state.update(pool=pool, workers=workers)
    return pool


def _pool_broken(pool: ProcessPoolExecutor) -> bool:
    return bool(getattr(pool, "_broken", False))


def _kill(pool: ProcessPoolExecutor) -> None:
    # ProcessPoolExecutor has no public way to stop a running task; its process table is the only handle
    processes = []
    for _ in range(3):  # the executor's manager thread may be editing the table right now
        try:
            processes = list((getattr(pool, "_processes", None) or {}).values())
            break
        except RuntimeError:
            continue
    for process in processes:
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=5)


def _kill_pool() -> None:
    with _POOL_LOCK:
        pool = _pool_state["pool"]
        _pool_state.update(pool=None, workers=0)
        if pool is not None:
            _kill(pool)


def shutdown_verifier() -> None:
    """Stop the verification workers (a later call starts new ones)."""
    _kill_pool()


# --- worker side


def _worker_init() -> None:
    import resource

    from soar_agent.sandbox import install_guard

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _WORKER_MEMORY_BYTES if hard == resource.RLIM_INFINITY else min(_WORKER_MEMORY_BYTES, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import math_verify  # noqa: F401  (before the guard: imports only read files, but do them up front)

    # math-verify logs every timed-out input in full; in a worker that is only noise
    logging.disable(logging.CRITICAL)
    install_guard(None, lambda kind, event: None)


def _ping() -> bool:
    return True


def _boxed(text: str) -> str:
    return text if _BOXED in text else _BOXED + text + "}"


def _verify_one(gold: str, prediction: str, inner_timeout_s: int) -> bool:
    from math_verify import parse
    from math_verify import verify as math_verify

    try:
        gold_parsed = parse(_boxed(gold), parsing_timeout=inner_timeout_s)
        predicted = parse(_boxed(prediction), parsing_timeout=inner_timeout_s)
        return bool(math_verify(gold_parsed, predicted, timeout_seconds=inner_timeout_s))
    except Exception:  # any failure to parse or compare is "not shown equal"
        return False
