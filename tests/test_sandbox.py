"""The sandbox contains what untrusted code does: limits, network, processes, writes, cleanup, batching."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

import pytest

from soar_agent import sandbox
from soar_agent.sandbox import Limits, run_python, run_python_batch


def marker_path() -> str:
    """A host path no test creates on purpose; the sandboxed code tries to."""
    return f"/tmp/pwned_soar_{uuid.uuid4().hex}"


def test_prints_and_reads_stdin():
    result = run_python("import sys\nprint('hello', sys.stdin.read().upper())", stdin="world")
    assert result.ok and result.reason is None and result.returncode == 0
    assert result.stdout == "hello WORLD\n"


def test_common_stdlib_still_works_under_the_guard():
    code = (
        "import json, re, collections, itertools, functools, math, fractions, decimal, heapq, bisect\n"
        "import random, string, statistics, datetime, dataclasses, typing, pathlib, tempfile\n"
        "pathlib.Path('out.txt').write_text('x')\n"
        "with tempfile.TemporaryFile() as f: f.write(b'y')\n"
        "print(json.dumps(sorted(collections.Counter('abca').items())), open('out.txt').read())\n"
    )
    result = run_python(code)
    assert result.ok, result.stderr
    assert result.stdout == '[["a", 2], ["b", 1], ["c", 1]] x\n'


def test_exception_reason_names_exit_code_and_last_line():
    result = run_python("def f():\n    raise ValueError('bad input')\nf()")
    assert not result.ok and result.returncode == 1
    assert result.reason == "exit code 1: ValueError: bad input"
    assert 'File "prog.py", line 2' in result.stderr

    assert run_python("import sys; sys.exit(3)").reason == "exit code 3"
    assert run_python("def (").reason.startswith("exit code 1: SyntaxError")


def test_infinite_loop_is_stopped_quickly():
    start = time.monotonic()
    result = run_python("while True: pass")
    assert time.monotonic() - start < 4.5
    assert not result.ok and result.reason in ("timeout", "cpu time limit")


def test_wall_timeout_kills_a_sleeping_program():
    start = time.monotonic()
    result = run_python("import time; time.sleep(30)", limits=Limits(wall_s=0.5))
    assert time.monotonic() - start < 2.5
    assert result.reason == "timeout" and result.returncode is None


def test_memory_limit():
    result = run_python("x = bytearray(10 * 1024**3)\nprint('allocated')")
    assert not result.ok and result.reason == "memory limit"
    assert "allocated" not in result.stdout


def test_output_limit_stops_a_flood():
    limits = Limits(output_bytes=10_000)
    start = time.monotonic()
    result = run_python("while True: print('x' * 1000)", limits=limits)
    assert time.monotonic() - start < 4
    assert result.reason == "output limit" and len(result.stdout) <= limits.output_bytes

    result = run_python("print('x' * 10**8)")
    assert result.reason == "output limit" and len(result.stdout) <= Limits().output_bytes


def test_network_is_blocked_even_when_the_program_catches_the_error():
    result = run_python("import socket; socket.create_connection(('1.1.1.1', 80), timeout=2)")
    assert not result.ok and result.reason == "blocked: network"
    assert "[soar-sandbox]" not in result.stderr  # the internal marker is stripped

    result = run_python("import socket\ntry:\n    socket.socket()\nexcept OSError:\n    print('swallowed')\n")
    assert result.stdout == "swallowed\n" and result.reason == "blocked: network"


@pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace needs root (or user namespaces)")
def test_network_namespace_has_only_loopback():
    result = run_python("print(open('/proc/net/dev').read())")
    interfaces = {line.split(":")[0].strip() for line in result.stdout.splitlines()[2:] if ":" in line}
    assert interfaces == {"lo"}


@pytest.mark.parametrize(
    "code",
    [
        "__import__('os').system('touch {path}')",
        "import subprocess; subprocess.run(['touch', '{path}'])",
        "import os; os.execv('/usr/bin/touch', ['touch', '{path}'])",
        "import os; os.posix_spawn('/usr/bin/touch', ['touch', '{path}'], {{}})",
        # subprocess's C helper raises no audit event: the guard disarms it
        "import _posixsubprocess as p, subprocess; subprocess.Popen.__init__ = None; "
        "p.fork_exec([b'/usr/bin/touch'], [b'/usr/bin/touch'], True, (), None, None,"
        " -1, -1, -1, -1, -1, -1, -1, -1, False, False, None, None, None, -1, None, False)",
        "import ctypes; ctypes.CDLL(None).system(b'touch {path}')",
    ],
)
def test_no_process_escapes(code):
    path = marker_path()
    result = run_python(code.format(path=path))
    assert not result.ok and result.reason.startswith("blocked: ")
    assert not os.path.exists(path)


def test_fork_is_blocked():
    result = run_python("import os\npid = os.fork()\nprint('forked', pid)")
    assert result.reason == "blocked: process" and "forked" not in result.stdout


@pytest.mark.parametrize(
    "code",
    [
        "open('{path}', 'w').write('evil')",
        "import pathlib; pathlib.Path('{path}').write_text('evil')",
        "import os; os.close(os.open('{path}', os.O_WRONLY | os.O_CREAT))",
        "import os; os.chdir('/tmp'); open('{name}', 'w')",
        # a directory descriptor outside the sandbox would let relative paths escape
        "import os; d = os.open('/tmp', os.O_RDONLY); os.close(os.open('{name}', os.O_WRONLY | os.O_CREAT, dir_fd=d))",
        "import os; os.symlink('/tmp', 'link'); open('link/{name}', 'w')",
        "import os; os.mkdir('{path}')",
        "import sqlite3; sqlite3.connect('{path}').execute('create table t (x)')",
    ],
)
def test_writes_outside_the_sandbox_are_blocked(code):
    path = marker_path()
    result = run_python(code.format(path=path, name=os.path.basename(path)))
    assert not result.ok and result.reason.startswith("blocked: "), result
    assert not os.path.exists(path)


def test_removing_host_files_is_blocked(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    result = run_python(f"import os; os.remove({str(victim)!r})")
    assert result.reason == "blocked: write outside sandbox"
    assert victim.read_text() == "precious"


def test_runs_in_a_fresh_temp_dir_that_is_removed_with_a_stripped_environment():
    code = "import os, sys\nprint(os.getcwd())\nprint(os.listdir('.'))\nprint(sorted(os.environ))\nprint(os.environ['HOME'])"
    result = run_python(code)
    assert result.ok, result.stderr
    cwd, listing, env_keys, home = result.stdout.splitlines()
    assert cwd != os.getcwd() and os.path.basename(cwd).startswith("soar-sbx-")
    assert listing == "['prog.py']" and home == cwd
    assert "PYTHONPATH" not in env_keys and "VIRTUAL_ENV" not in env_keys
    assert not os.path.exists(cwd)


def test_parent_file_descriptors_do_not_leak():
    read_end, write_end = os.pipe()
    high = os.dup2(write_end, 200)
    try:
        result = run_python("import os\ntry:\n    os.fstat(200)\n    print('leaked')\nexcept OSError:\n    print('closed')")
    finally:
        for fd in (read_end, write_end, high):
            os.close(fd)
    assert result.stdout == "closed\n"


def test_drops_to_nobody_when_root_and_the_interpreter_allows_it(monkeypatch):
    """Here the venv interpreter lives under /root (unreachable for nobody), so the probe falls back;
    the system interpreter exercises the uid-drop path where it exists."""
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if os.geteuid() != 0 or system_python is None:
        pytest.skip("needs root and a system python3")
    version = subprocess.run([system_python, "-c", "import sys; print(sys.version_info >= (3, 10))"],
                             capture_output=True, text=True).stdout.strip()
    if version != "True":
        pytest.skip("system python3 older than 3.10")
    monkeypatch.setattr(sandbox, "_PYTHON", system_python)
    sandbox._sandbox_uid.cache_clear()
    try:
        assert sandbox._sandbox_uid() == 65534
        result = run_python("import os\nopen('mine.txt', 'w').write('ok')\n"
                            "print(os.getuid(), os.access('/usr/bin', os.W_OK), open('mine.txt').read())")
        assert result.stdout == "65534 False ok\n", result
        assert run_python("while True: pass", limits=Limits(cpu_s=1)).reason == "cpu time limit"
    finally:
        monkeypatch.undo()
        sandbox._sandbox_uid.cache_clear()


# -------------------------------------------------------------------------------------- batch


def test_batch_of_200_in_order():
    # Measured on the 2-core dev box: 0.28 s for this batch vs 8.5 s for 200 run_python calls (~30x).
    programs = [f"print({i} * 2)" for i in range(200)]
    start = time.monotonic()
    results = run_python_batch(programs)
    elapsed = time.monotonic() - start
    assert [r.stdout for r in results] == [f"{i * 2}\n" for i in range(200)]
    assert all(r.ok for r in results)
    assert elapsed < 10  # separately these would take several seconds; a loose bound keeps CI calm


def test_batch_failures_stay_with_their_program():
    programs = [
        "print('first')",
        "while True: pass",
        "raise ValueError('nope')",
        "import sys; sys.exit(2)",
        "print('y' * 10**6)",
        "import socket; socket.socket()",
        "x = bytearray(10 * 1024**3)",
        "import os; os.write(1, b'raw fd write\\n'); print('clean')",
        "import sys; sys.stderr.write('warn\\n'); print('last')",
    ]
    results = run_python_batch(programs, per_program_wall_s=0.5)
    reasons = [r.reason for r in results]
    assert reasons == [None, "timeout", "exit code 1: ValueError: nope", "exit code 2", "output limit",
                       "blocked: network", "memory limit", None, None]
    assert results[0].stdout == "first\n"
    assert results[7].stdout == "clean\n"  # writes to the raw descriptor cannot corrupt the protocol
    assert (results[8].stdout, results[8].stderr) == ("last\n", "warn\n")
    assert len(results[4].stdout) <= Limits().output_bytes


def test_batch_recovers_when_the_process_dies_or_hangs_in_c():
    programs = [
        "print(1)",
        "import os; os._exit(7)",  # takes the whole batch process down
        "print(3)",
        # C code the per-program alarm cannot interrupt: the parent notices the stall
        "import hashlib; hashlib.pbkdf2_hmac('sha256', b'x', b'y', 10**9)",
        "print(5)",
    ]
    start = time.monotonic()
    results = run_python_batch(programs, per_program_wall_s=0.5)
    assert time.monotonic() - start < 10
    assert [r.stdout for r in results] == ["1\n", "", "3\n", "", "5\n"]
    assert [r.reason for r in results] == [None, "exit code 7", None, "timeout", None]


def test_empty_batch():
    assert run_python_batch([]) == []
