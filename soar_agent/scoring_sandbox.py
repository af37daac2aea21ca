"""Scores model answers with third-party scorers that parse them as code, outside soar's process.

math-verify and reasoning-gym's scorers read an answer with ``eval`` or sympy's ``parse_expr`` (which
evaluates Python): ``__import__("os").system(...)`` as an answer runs, and an answer that patches a
scorer module changes every later score in that process. So those scorers never run here. A
:class:`ScoringSandbox` is a long-lived helper process (a *zygote*) that

* starts under every layer the code sandbox has (:mod:`soar_agent.isolation`: uid ``nobody`` when we are
  root, Landlock, seccomp, a private network namespace, rlimits, a stripped environment, no inherited
  descriptors but its pipes), with a 4 GiB address-space cap, and imports the scorers' libraries once;
* forks one child per answer. The child closes every descriptor but its own result pipe, caps its CPU
  time, installs the sandbox's audit-hook guard (no writes, processes, sockets, ctypes, signals) and a
  compile gate (:func:`install_compile_gate`: text compiled at run time must be literals, or sympy
  expressions when sympy's parser compiles it), scores, writes one JSON line and exits. Whatever the
  answer changed dies with that child; the zygote never runs answer-derived code, so the next answer
  starts from the same clean state;
* kills a child past its hard wall-clock timeout (the answer scores as a failure).

Only JSON comes back, parsed strictly here: nothing the sandbox says is unpickled or evaluated in this
process. Requests go the other way as pickles (our own trusted objects: reasoning-gym entries whose
metadata is not JSON).

When the uid drop cannot be used because ``nobody`` cannot read the installed libraries (a virtualenv
under a private home directory), the zygote runs under our uid with the other layers, and that is logged
as a warning once.

Cost per answer, measured on the 2-core dev box (2 workers, other jobs running, before and after back to
back): reasoning-gym chain_sum 4.8 ms (0.001 ms in process before), countdown 9.9 ms (0.3 ms), math-verify
18.6 ms (2.8 ms in the old reused-worker pool); on an idle box 3.3 ms and 14 ms. Most of it is the fresh
child: fork, copy-on-write of the helper's heap and caches that start cold each time, the price of no
state surviving an answer. The helper starts once per process: 0.5 s (math) to 1 s (gym).
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import importlib.util
import inspect
import json
import logging
import math
import os
import pickle
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from soar_agent import isolation
from soar_agent.sandbox import (_BLOCK_MARK, _GUARD_FUNCTIONS, _PID_NAMESPACE_FUNCTIONS, end_run,  # noqa: F401
                                enter_pid_namespace, install_guard)

log = logging.getLogger("soar_agent.sandbox")

MEMORY_MB = 4096  # untrusted parsing may allocate wildly (9^{9^{9^9}}); bound the helper, not the host
_START_TIMEOUT_S = 120.0
# on top of the per-answer timeout the zygote enforces itself: fork, reap and report on a loaded machine
_STALL_GRACE_S = 10.0
# the zygote's own CPU time (imports, then forking and reaping); it is restarted when it runs out
_ZYGOTE_CPU_S = 3600
_FAILURES = ("timeout", "crashed", "exception", "blocked")


@dataclass(frozen=True)
class Outcome:
    """One answer's result: the scorer's number, or why there is none."""

    score: float | None
    failure: str | None = None  # one of _FAILURES: the answer timed out, crashed its child, made the scorer
    #                             raise, or tried something the guard or compile gate refused


# --------------------------------------------------------------------------------------------------
# Sandbox side. These functions are shipped as source and run in the confined interpreter, so each is
# self-contained (imports inside); none of them runs in soar's process.
# --------------------------------------------------------------------------------------------------


def install_compile_gate(report):
    """Audit hook refusing to compile, at run time, anything but literal data: how scorers read answers
    (``eval(answer)``, ``parse_expr(answer)``) cannot then reach attributes, dunders, ``exec``/``open``
    or other callables, so an answer cannot run code even inside its own disposable child (where it
    could otherwise forge its own score).

    The rule depends on who compiles, read from the calling frame (which answer text cannot forge
    without first running code):

    * importlib loading a module from disk, ``ast.parse`` (a tree is not code; compiling the tree later
      is checked here again) and a few code generators that never see answer text: allowed;
    * sympy's own parser (``parse_expr``, ``sympify``), which turns every answer into calls such as
      ``Integer(2)*Symbol('x')``: an expression of literals, operators, comparisons, names and calls of
      plain names, with no name starting with ``_`` and no Python builtin outside a harmless few;
    * anything else (a scorer's plain ``eval``): literals, containers and arithmetic only.

    ``report(kind, event)`` is called before the refusal is raised as PermissionError. The
    ``_compile_gate_*`` helpers only build closures, once, here: the hook holds what they return."""
    import ast
    import sys

    getframe = sys._getframe
    _type, _str, _bytes, _PermissionError = type, str, bytes, PermissionError
    tree_of = _compile_gate_parser()
    literal_nodes, expression_nodes, refusal = _compile_gate_rules()
    ast_parse_code = ast.parse.__code__
    import_files = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")
    # code generators whose source is built from identifiers and counts, never from an answer's text:
    # sympy's monomial arithmetic (from the number of variables: polynomial scorers reach it),
    # namedtuple and dataclass methods (from field names)
    generator_suffixes = ("/sympy/polys/monomials.py", "/collections/__init__.py", "/dataclasses.py")
    sympy_parser_suffix = "/sympy/parsing/sympy_parser.py"
    # the one statement parse_expr itself executes to build its namespace
    sympy_parser_statements = (b"from sympy import *",)
    busy = [False]  # our own ast.parse (in tree_of) raises a compile event too

    def hook(event, args):
        if event != "compile" or busy[0]:
            return
        code = getframe(1).f_code
        filename = code.co_filename
        if filename in import_files or code is ast_parse_code or filename.endswith(generator_suffixes):
            return
        expression = filename.endswith(sympy_parser_suffix)
        source = args[0]
        if expression and (source if _type(source) is _bytes else _str(source).encode()) in sympy_parser_statements:
            return
        busy[0] = True
        try:
            kind = refusal(tree_of(source), expression_nodes if expression else literal_nodes)
        except BaseException:  # noqa: BLE001: unparseable here means unverifiable: fail closed
            kind = "compile: unparseable"
        finally:
            busy[0] = False
        if kind is not None:
            report(kind, event)
            raise _PermissionError("blocked by scoring sandbox: " + kind)

    sys.addaudithook(hook)


def _compile_gate_parser():
    """``tree_of(source)``: the syntax tree of what is about to be compiled (a tree as it is; text as an
    expression, else as statements). Bound now, at install time, like everything the gate uses."""
    import ast

    parse = ast.parse
    _isinstance, _type, _str, _bytes = isinstance, type, str, bytes
    _SyntaxError, _ValueError = SyntaxError, ValueError
    tree_type = ast.AST

    def tree_of(source):
        if _isinstance(source, tree_type):
            return source
        if _type(source) is _str:
            source = source.encode("utf-8", "surrogatepass")
        if _type(source) is not _bytes:
            raise _ValueError("source of an unknown type")
        try:  # eval() ignores leading blanks; exec-mode parsing would not
            return parse(source.lstrip(b" \t"), mode="eval")
        except _SyntaxError:
            return parse(source, mode="exec")

    return tree_of


def _compile_gate_rules():
    """``(literal_nodes, expression_nodes, refusal)``: the node types a plain ``eval`` and sympy's parser
    may compile, and ``refusal(tree, allowed)``, why a tree breaks the rule (None when it does not).
    Bound now, at install time, like everything the gate uses."""
    import ast
    import builtins

    walk = ast.walk
    _isinstance, _type, _frozenset = isinstance, type, frozenset
    literal_nodes = (ast.Module, ast.Expression, ast.Expr, ast.Constant, ast.Load, ast.Tuple, ast.List,
                     ast.Set, ast.Dict, ast.UnaryOp, ast.BinOp, ast.operator, ast.unaryop)
    expression_nodes = literal_nodes + (ast.Name, ast.Call, ast.keyword, ast.BoolOp, ast.Compare, ast.boolop,
                                        ast.cmpop)
    name_type, call_type, keyword_type = ast.Name, ast.Call, ast.keyword
    harmless_builtins = _frozenset(("abs", "min", "max", "pow", "round", "int", "float", "complex", "bool",
                                    "sum", "len", "divmod", "list", "tuple", "set", "frozenset", "dict",
                                    "range", "sorted", "reversed", "any", "all", "str"))
    refused_names = _frozenset(name for name in dir(builtins) if name not in harmless_builtins)

    def refusal(tree, allowed):
        for node in walk(tree):
            if not _isinstance(node, allowed):
                return "compile: " + _type(node).__name__
            if node.__class__ is name_type and (node.id.startswith("_") or node.id in refused_names):
                return "compile: name " + node.id
            if node.__class__ is call_type and node.func.__class__ is not name_type:
                return "compile: call of a non-name"
            if node.__class__ is keyword_type and (node.arg is None or node.arg.startswith("_")):
                return "compile: keyword"
        return None

    return literal_nodes, expression_nodes, refusal


def _score_in_child(job, args, result_fd, cpu_s):
    """In the forked child: confine, score once, write one JSON object to ``result_fd``, exit."""
    import json
    import os
    import resource

    try:  # a child that dies before writing its line is reported as crashed by the zygote
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # the zygote's request and result pipes are not the answer's to touch
            os.dup2(devnull, fd)
        os.closerange(3, result_fd)
        os.closerange(result_fd + 1, max(result_fd + 2, resource.getrlimit(resource.RLIMIT_NOFILE)[0]))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        violations = []
        note = violations.append
        install_guard(None, lambda kind, event: note(kind))
        install_compile_gate(lambda kind, event: note(kind))
        try:
            score = float(job(*args) or 0.0)
            record = {"failure": "blocked"} if violations else {"score": score}
        except BaseException:  # noqa: BLE001: the scorer failed on this answer
            record = {"failure": "blocked" if violations else "exception"}
        data = json.dumps(record).encode()
        while data:
            data = data[os.write(result_fd, data):]
    finally:
        os._exit(0)


def _zygote_main():
    # imported first, before the PID namespace is entered, as they always were; the helpers import them again
    import json  # noqa: F401
    import os  # noqa: F401
    import pickle
    import select  # noqa: F401
    import signal  # noqa: F401
    import struct
    import sys
    import time  # noqa: F401

    sys.dont_write_bytecode = True
    if _PID_NAMESPACE:  # from here on this process is PID 1 of the helper's own namespace
        enter_pid_namespace(True, False)
    emit = _zygote_start()
    if emit is None:  # the libraries did not import; the parent was told why
        return
    while True:
        header = _zygote_read_exactly(8)
        if header is None:
            return
        request = pickle.loads(_zygote_read_exactly(struct.unpack("<Q", header)[0]))
        _zygote_batch(request, emit)
        _zygote_sweep()
        emit({"done": True})


def _zygote_start():
    """Set the zygote up: the libraries' paths, a private results descriptor, the preloaded libraries and
    their warm-up, no ptrace by its children; then tell the parent it is ready. Returns ``emit(record)``,
    which writes one JSON line to the parent, or None when the set-up failed (the parent was told)."""
    import json
    import os
    import sys

    extra_paths, preload = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    sys.path.extend(path for path in extra_paths if path not in sys.path)
    # results travel on a private duplicate of fd 1; fd 1 goes to /dev/null so a library printing
    # while it imports cannot corrupt the protocol
    results_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)

    def emit(record):
        data = (json.dumps(record) + "\n").encode()
        while data:
            data = data[os.write(results_fd, data):]

    try:
        for name in preload:
            __import__(name)
        _zygote_warm_up(preload)
    except BaseException as exc:  # noqa: BLE001: reported to the parent, which explains it
        emit({"ready": False, "error": (type(exc).__name__ + ": " + str(exc))[:500]})
        return None
    try:  # children may not ptrace the zygote (same uid): a non-dumpable process refuses that
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except (OSError, AttributeError):
        pass
    emit({"ready": True})
    return emit


def _zygote_read_exactly(count):
    """``count`` bytes of the parent's request stream (fd 0), or None at its end."""
    import os

    chunks = []
    while count:
        chunk = os.read(0, min(count, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def _zygote_batch(request, emit):
    """Score one request's calls, each in a child of its own (at most ``workers`` at a time), and emit each
    answer's outcome as its child finishes, writes too much or runs out of time (then it is killed)."""
    import os
    import select
    import signal
    import time

    job, warm_up = _JOBS[request["job"]]
    timeout_s, workers = request["timeout_s"], request["workers"]
    cpu_s = int(timeout_s) + 1
    pending = list(enumerate(request["calls"]))[::-1]
    running = {}  # result pipe fd -> [index, pid, deadline, bytes so far]
    while pending or running:
        while pending and len(running) < workers:
            index, args = pending.pop()
            warm_up(*args)
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read_fd)
                _score_in_child(job, args, write_fd, cpu_s)
            os.close(write_fd)
            running[read_fd] = [index, pid, time.monotonic() + timeout_s, b""]
        wait = max(0.0, min(entry[2] for entry in running.values()) - time.monotonic())
        readable, _, _ = select.select(list(running), [], [], wait)
        finished = []
        for fd in readable:
            chunk = os.read(fd, 4096)
            entry = running[fd]
            entry[3] += chunk
            if not chunk or len(entry[3]) > 4096:
                finished.append(fd)
        now = time.monotonic()
        finished += [fd for fd, entry in running.items() if entry[2] <= now and fd not in finished]
        for fd in finished:
            index, pid, deadline, data = running.pop(fd)
            os.close(fd)
            timed_out = deadline <= now and not data
            try:  # the child has written or run out of time: either way it is done
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            emit(_zygote_outcome(index, data, timed_out))


def _zygote_sweep():
    """Between batches, as PID 1 of the helper's namespace: kill and reap every process left in it (what an
    answer's child started and left behind; orphans come to PID 1). Nothing else runs in the namespace
    then, and outside it this does nothing (kill(-1) there would reach every process of our uid)."""
    import os
    import signal

    if os.getpid() != 1:
        return
    try:
        os.kill(-1, signal.SIGKILL)  # from a namespace's init: all of the namespace but init itself
    except ProcessLookupError:
        pass
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _zygote_outcome(index, data, timed_out):
    """The record for one answer from its child's bytes, checked: a child is not trusted to be well-formed."""
    import json
    import math

    if timed_out:
        return {"i": index, "failure": "timeout"}
    try:
        record = json.loads(data.decode("utf-8"))
    except Exception:  # noqa: BLE001: not UTF-8, not JSON, nested too deep
        return {"i": index, "failure": "crashed"}
    score = record.get("score") if type(record) is dict else None
    if type(score) in (int, float) and math.isfinite(score):
        return {"i": index, "score": float(score)}
    failure = record.get("failure") if type(record) is dict else None
    return {"i": index, "failure": failure if failure in ("exception", "blocked") else "crashed"}


def _zygote_warm_up(preload):
    """Set-up every child would otherwise repeat, done once before forking (trusted work only)."""
    import logging

    if "math_verify" in preload:
        logging.disable(logging.CRITICAL)  # math-verify logs each timed-out input in full
        # the first parse builds the LaTeX grammar's tables (about 80 ms): once here, not in every child
        _verify_math("\\frac{1}{2}", "0.5", 5)


_GYM_SCORERS = {}


def _warm_gym(dataset, prediction, entry):
    """In the zygote, before forking: build the dataset's scorer once (its default config; the dataset
    name is ours, the answer is not used), so children inherit it instead of building it each time."""
    import reasoning_gym

    if dataset not in _GYM_SCORERS:
        try:
            _GYM_SCORERS[dataset] = reasoning_gym.get_score_answer_fn(dataset)
        except Exception:  # noqa: BLE001: a dataset whose default config does not build: its child raises
            _GYM_SCORERS[dataset] = None


def _score_gym(dataset, prediction, entry):
    import reasoning_gym

    scorer = _GYM_SCORERS.get(dataset) or reasoning_gym.get_score_answer_fn(dataset)
    return scorer(prediction, entry)


def _verify_math(gold, prediction, inner_timeout_s):
    from math_verify import parse, verify

    def boxed(text):
        return text if "\\boxed{" in text else "\\boxed{" + text + "}"

    try:
        from sympy.core.relational import Equality, Relational

        gold_parsed = parse(boxed(gold), parsing_timeout=inner_timeout_s)
        predicted = parse(boxed(prediction), parsing_timeout=inner_timeout_s)
        claim = predicted[0] if predicted else None
        # math-verify reads an equation as its right side (x = 5 answers 5), so 6 = 5 scored as 5 too: an equation
        # whose left side holds no variable is a claim, and answers only when its left side does as well
        if (isinstance(claim, Equality) and not claim.lhs.free_symbols
                and not any(isinstance(item, Relational) for item in gold_parsed)
                and not verify(gold_parsed, [claim.lhs], timeout_seconds=inner_timeout_s)):
            return 0.0
        return 1.0 if verify(gold_parsed, predicted, timeout_seconds=inner_timeout_s) else 0.0
    except Exception:  # noqa: BLE001: any failure to parse or compare is "not shown equal"
        return 0.0


def _no_warm_up(*args):
    pass


# job -> (the modules its zygote imports, the function scoring one call in a child, its set-up in the zygote)
JOBS = {"gym": (("reasoning_gym",), "_score_gym", "_warm_gym"),
        "math": (("math_verify",), "_verify_math", "_no_warm_up")}


@functools.lru_cache(maxsize=None)
def _zygote_source(pid_namespace: bool) -> str:
    parts = [f"_BLOCK_MARK = {_BLOCK_MARK!r}\n_PID_NAMESPACE = {pid_namespace!r}\n"]
    parts += [inspect.getsource(func) for func in (*_PID_NAMESPACE_FUNCTIONS, *_GUARD_FUNCTIONS)]
    for func in (install_compile_gate, _compile_gate_parser, _compile_gate_rules, _score_in_child, _zygote_main,
                 _zygote_start, _zygote_read_exactly, _zygote_batch, _zygote_sweep, _zygote_outcome, _zygote_warm_up,
                 _warm_gym, _score_gym, _verify_math, _no_warm_up):
        parts.append(inspect.getsource(func))
    jobs = ", ".join(f"{job!r}: ({score}, {warm})" for job, (_, score, warm) in JOBS.items())
    parts += ["_GYM_SCORERS = {}\n", f"_JOBS = {{{jobs}}}\n", "_zygote_main()\n"]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------
# soar's side
# --------------------------------------------------------------------------------------------------


class SandboxFailure(RuntimeError):
    """The scoring sandbox could not start; the message says why and what to do."""


class ScoringSandbox:
    """One zygote for one job (``gym`` or ``math``), started on first use and restarted when it dies."""

    def __init__(self, job: str):
        self.job = job
        self.preload = JOBS[job][0]
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._workdir: str | None = None
        self._uid_drop_failed = False
        self._pid_namespace = False
        self._partial = b""  # the zygote's output after the last complete line

    # -- public

    def score(self, calls: list[tuple], timeout_s: float = 5.0, workers: int = 2) -> list[Outcome]:
        """One Outcome per call (the job's arguments), in order; each call gets its own child and at most
        ``timeout_s`` seconds of wall time. A zygote that dies or stalls mid-batch is replaced and the
        calls it did not answer are rerun once in the new one; a second loss marks them crashed."""
        if not calls:
            return []
        outcomes: list[Outcome | None] = [None] * len(calls)
        with self._lock:
            for attempt in range(2):
                missing = [i for i, outcome in enumerate(outcomes) if outcome is None]
                if not missing:
                    break
                try:
                    answered = self._run_batch([calls[i] for i in missing], timeout_s, max(1, workers))
                except BaseException:
                    self._stop()  # never leave a zygote mid-batch behind an interrupted call
                    raise
                for position, outcome in answered.items():
                    outcomes[missing[position]] = outcome
                if len(answered) < len(missing):
                    self._stop()
        return [outcome or Outcome(None, "crashed") for outcome in outcomes]

    def stop(self) -> None:
        with self._lock:
            self._stop()

    @property
    def pid(self) -> int | None:
        """The zygote's process id while one runs (tests)."""
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    # -- the zygote's life

    def _started(self) -> subprocess.Popen:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self._stop()
        plan = isolation.layers().plan
        if plan.uid is not None and not self._uid_drop_failed:
            try:
                return self._start(plan)
            except SandboxFailure as failure:
                if not all(importlib.util.find_spec(name) for name in self.preload):
                    raise  # not installed at all: running under our uid would not help
                self._uid_drop_failed = True
                log.warning("SCORING SANDBOX IS WEAKER THAN DESIGNED: as uid %d it cannot import %s (%s); "
                            "answers are scored under our own uid, with the other sandbox layers", plan.uid,
                            ", ".join(self.preload), failure)
        return self._start(dataclasses.replace(plan, python=sys.executable if plan.uid is not None else plan.python,
                                               uid=None))

    def _start(self, plan: isolation.Plan) -> subprocess.Popen:
        workdir = isolation.make_workdir(plan)
        confinement = isolation.confinement_for(workdir, plan, _library_reads(self.preload))
        paths = [path for path in sys.path if path and os.path.isabs(path)]
        environment = isolation.environment(workdir)
        # one thread per library pool: a thread pool in the zygote would be forked mid-state
        environment.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        try:
            process = subprocess.Popen(
                [plan.python, "-I", "-S", "-B", "-X", "utf8", "-c", _zygote_source(plan.pidns), json.dumps(paths),
                 json.dumps(list(self.preload))],
                cwd=workdir, env=environment, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True,
                preexec_fn=isolation.make_preexec(MEMORY_MB, _ZYGOTE_CPU_S, plan, confinement))
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        finally:
            confinement.close()
        self._process, self._workdir, self._pid_namespace = process, workdir, plan.pidns
        line = self._read_line(time.monotonic() + _START_TIMEOUT_S)
        ready = _parse_json(line)
        if not (isinstance(ready, dict) and ready.get("ready") is True):
            self._stop()
            why = ready.get("error") if isinstance(ready, dict) and isinstance(ready.get("error"), str) else (
                "it exited before it was ready" if line is None else "it answered out of protocol")
            raise SandboxFailure(f"the scoring sandbox for {self.job} did not start: {why}")
        return process

    def _stop(self) -> None:
        process, workdir = self._process, self._workdir
        self._process, self._workdir, self._partial = None, None, b""
        if process is not None:
            if process.poll() is None:
                # its namespace (or else its session): the zygote and any child in flight, and whatever those
                # left behind
                end_run(process.pid, self._pid_namespace)
            process.wait()
            for stream in (process.stdin, process.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    # -- one batch

    def _run_batch(self, calls: list[tuple], timeout_s: float, workers: int) -> dict[int, Outcome]:
        """Outcomes by position for the calls the zygote answered (all of them unless it died or stalled)."""
        process = self._started()
        payload = pickle.dumps({"job": self.job, "calls": calls, "timeout_s": float(timeout_s),
                                "workers": workers}, protocol=pickle.HIGHEST_PROTOCOL)
        stall_s = timeout_s + _STALL_GRACE_S
        if not self._write_all(struct.pack("<Q", len(payload)) + payload, time.monotonic() + stall_s):
            return {}
        answered: dict[int, Outcome] = {}
        while True:
            record = _parse_json(self._read_line(time.monotonic() + stall_s))
            if isinstance(record, dict) and record.get("done") is True:
                return answered
            index = record.get("i") if isinstance(record, dict) else None
            if type(index) is not int or not 0 <= index < len(calls) or index in answered:
                return answered  # died, stalled or out of protocol: the caller replaces it
            answered[index] = _outcome(record)

    def _write_all(self, data: bytes, deadline: float) -> bool:
        fd = self._process.stdin.fileno()
        os.set_blocking(fd, False)
        view = memoryview(data)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            _, writable, _ = select.select([], [fd], [], remaining)
            if writable:
                try:
                    view = view[os.write(fd, view):]
                except BrokenPipeError:
                    return False
        return True

    def _read_line(self, deadline: float) -> bytes | None:
        """One line from the zygote, None when it ends or says nothing complete before ``deadline``."""
        stream = self._process.stdout
        fd = stream.fileno()
        buffer = self._partial
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or len(buffer) > 1 << 16:
                self._partial = b""
                return None
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self._partial = b""
                    return None
                buffer += chunk
        line, _, self._partial = buffer.partition(b"\n")
        return line


def _library_reads(preload: tuple[str, ...]) -> tuple[str, ...]:
    """What the helper may read besides its interpreter's own files (when reads are confined): the
    installed packages (site-packages and dist-packages on our path) and wherever the preloaded
    libraries themselves come from (an editable install). Not the rest of our path (the working
    directory, a checkout with its data)."""
    temp = os.path.realpath(tempfile.gettempdir())
    reads = {os.path.realpath(path) for path in sys.path
             if path and os.path.isabs(path) and os.path.basename(path.rstrip("/")) in ("site-packages", "dist-packages")}
    for name in preload:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None:
            reads |= {os.path.realpath(place) for place in spec.submodule_search_locations or ()}
            if spec.origin and os.path.isabs(spec.origin):
                reads.add(os.path.realpath(spec.origin))
    return tuple(sorted(path for path in reads if path != "/" and not (temp + "/").startswith(path.rstrip("/") + "/")))


def _parse_json(line: bytes | None):
    if line is None:
        return None
    try:
        return json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):
        return None


def _outcome(record: dict) -> Outcome:
    score = record.get("score")
    if type(score) in (int, float) and math.isfinite(score):
        return Outcome(float(score))
    failure = record.get("failure")
    return Outcome(None, failure if failure in _FAILURES else "crashed")


def default_workers() -> int:
    """Children scoring at once: one per core, at most 4 (scoring is a small share of an RL step)."""
    return max(1, min(4, os.cpu_count() or 1))


_sandboxes: dict[str, ScoringSandbox] = {}
_sandboxes_lock = threading.Lock()


def sandbox_for(job: str) -> ScoringSandbox:
    """The process-wide sandbox for ``job`` ("gym" or "math")."""
    with _sandboxes_lock:
        if job not in _sandboxes:
            _sandboxes[job] = ScoringSandbox(job)
        return _sandboxes[job]


def stop_all() -> None:
    """Stop every scoring zygote (a later call starts new ones)."""
    with _sandboxes_lock:
        sandboxes = list(_sandboxes.values())
    for sandbox in sandboxes:
        sandbox.stop()


atexit.register(stop_all)  # a zygote would exit on its own at end of input; this also removes its directory
