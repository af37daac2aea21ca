"""The sandbox contains what untrusted code does: limits, network, processes, writes, cleanup, batching."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from soar_agent import isolation, sandbox
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
    # (/proc/net/dev is out of reach now that reads are confined too)
    result = run_python("import socket\nprint(sorted(name for _, name in socket.if_nameindex()))")
    assert result.stdout == "['lo']\n", result


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


def test_drops_to_nobody_when_root():
    """As root the sandbox runs as nobody, with our interpreter or the system's of the same version when
    nobody cannot reach ours (here: a pyenv interpreter under /root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    found = sandbox.layers()
    if found.plan.uid is None:
        assert any(item.startswith("uid drop") for item in found.missing)
        pytest.skip("no interpreter nobody can execute on this machine (reported as missing)")
    result = run_python("import os\nopen('mine.txt', 'w').write('ok')\n"
                        "print(os.getuid(), os.access('/usr/bin', os.W_OK), open('mine.txt').read())")
    assert result.stdout == "65534 False ok\n", result
    assert run_python("while True: pass", limits=Limits(cpu_s=1)).reason == "cpu time limit"


@pytest.fixture
def fresh_probe():
    """Layers are probed once per process; these tests change what the probe finds, then forget it."""
    isolation.reset()
    yield
    isolation.reset()


def test_an_interpreter_nobody_cannot_execute_is_not_used(tmp_path, monkeypatch, caplog, fresh_probe):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    (hidden / "python").symlink_to(os.path.realpath(sys.executable))
    monkeypatch.setattr(isolation, "PYTHON", str(hidden / "python"))
    monkeypatch.setattr(isolation, "_candidate_interpreters", lambda: [str(hidden / "python")])
    found = sandbox.layers()
    assert found.plan.uid is None and found.plan.python == str(hidden / "python")
    assert any(item.startswith("uid drop") for item in found.missing)
    assert "uid drop" in caplog.text and "--allow-weak-sandbox" in caplog.text
    assert run_python("import os; print(os.getuid())").stdout == "0\n"  # says so, and still works


def test_a_missing_layer_is_reported_once_loudly(monkeypatch, caplog, fresh_probe):
    monkeypatch.setattr(isolation.confine, "landlock_abi", lambda: 0)
    with caplog.at_level(logging.WARNING, logger="soar_agent.sandbox"):
        first, second = sandbox.layers(), sandbox.layers()
    assert first is second and not first.plan.landlock
    assert first.missing[0].startswith("landlock (") and "MISSING: landlock" in first.describe()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "soar_agent.sandbox"]
    assert len(warnings) == 1 and "SANDBOX IS WEAKER THAN DESIGNED" in warnings[0].getMessage()
    # the remaining layers keep working
    assert run_python("print('still runs')").stdout == "still runs\n"


def test_missing_namespaces_and_unconfined_reads_are_reported(monkeypatch, caplog, fresh_probe):
    """A machine without PID or mount namespaces (no quota) and an interpreter whose files cannot be told:
    the probe says so (and the CLI gate names them), and the rest still works."""
    real_unshare = isolation._unshare

    def unshare_without_pid_or_mount_namespaces():
        unshare = real_unshare()
        return lambda flags: -1 if flags & (isolation._CLONE_NEWPID | isolation._CLONE_NEWNS) else unshare(flags)

    monkeypatch.setattr(isolation, "_unshare", unshare_without_pid_or_mount_namespaces)
    monkeypatch.setattr(isolation, "read_roots", lambda python, uid: None)
    with caplog.at_level(logging.WARNING, logger="soar_agent.sandbox"):
        found = sandbox.layers()
    named = [item.split(" (")[0] for item in found.missing]
    assert not (found.plan.pidns or found.plan.quota or found.plan.reads), found
    assert "pid namespace" in named and "disk quota" in named, found.missing
    if found.plan.landlock:
        assert "landlock reads" in named, found.missing
    assert "MISSING: " in found.describe() and "SANDBOX IS WEAKER THAN DESIGNED" in caplog.text
    result = run_python("import os\nprint('still runs', os.getpid() != 2)")
    assert result.stdout == "still runs True\n", result


def test_report_accounts_for_every_layer():
    text = sandbox.layers().describe()
    for layer in ("landlock", "seccomp", "network namespace", "pid namespace", "disk quota", "rlimits", "audit hook"):
        assert layer in text, text
    if os.geteuid() == 0:
        assert "uid 65534" in text or "uid drop" in text


# ------------------------------------------------------------------------- escape routes (issue)
# Routes around the audit hook that used to change files outside the sandbox's temp dir. Each runs
# against a sentinel directory that the sandbox user owns and may write (mode 0777/0666), so only the
# kernel layers (Landlock for writes and device nodes, seccomp for metadata) can stop it.

ESCAPES = {
    "mkfifo": "import os; os.mkfifo({d!r} + '/fifo')",
    "mknod char device": "import os, stat; os.mknod({d!r} + '/null', 0o666 | stat.S_IFCHR, os.makedev(1, 3))",
    "reopen a read-only fd via /dev/stdout": "import os; os.dup2(os.open({f!r}, os.O_RDONLY), 1); "
                                             "open('/dev/stdout', 'w').write('evil')",
    "reopen via /proc/self/fd": "import os; fd = os.open({f!r}, os.O_RDONLY); "
                                "open('/proc/self/fd/%d' % fd, 'a').write('evil')",
    "directory fd the hook resolves wrongly": "import os; os.mkdir('sub'); w = os.open('.', os.O_RDONLY); "
                                              "os.chdir('sub'); up = os.open('..', os.O_RDONLY, dir_fd=w); "
                                              "os.close(os.open({name!r} + '/new.txt', os.O_WRONLY | os.O_CREAT, dir_fd=up))",
    "fchmod on a read-only fd": "import os; os.fchmod(os.open({f!r}, os.O_RDONLY), 0o600)",
    "futimens on a read-only fd": "import os; os.utime(os.open({f!r}, os.O_RDONLY), (1, 1))",
    "sqlite ATTACH a new file": "import sqlite3; c = sqlite3.connect(':memory:'); "
                                "c.execute(\"attach database '\" + {d!r} + \"/new.db' as x\"); "
                                "c.execute('create table x.t (a)'); c.commit()",
    "sqlite ATTACH an existing file": "import sqlite3; c = sqlite3.connect(':memory:'); "
                                      "c.execute(\"attach database '\" + {d!r} + \"/victim.db' as x\"); "
                                      "c.execute('insert into x.t values (666)'); c.commit()",
    "sqlite URI the hook reads as relative": "import sqlite3; c = sqlite3.connect('file:' + {d!r} + '/uri.db', "
                                             "uri=True); c.execute('create table t (a)'); c.commit()",
}
# Routes the audit hook already blocks; without it, the kernel must.
HOOKED = {
    "open for writing": "open({f!r}, 'a').write('evil')",
    "create a file": "open({d!r} + '/new.txt', 'w').write('evil')",
    "remove a file": "import os; os.remove({f!r})",
    "rename into the sandbox": "import os; os.rename({f!r}, 'stolen.txt')",
    "hard link, then write": "import os; os.link({f!r}, 'link'); open('link', 'a').write('evil')",
    "symlink, then write": "import os; os.symlink({f!r}, 'link'); open('link', 'a').write('evil')",
    "chmod by path": "import os; os.chmod({f!r}, 0o600)",
    "truncate by path": "import os; os.truncate({f!r}, 0)",
}


@pytest.fixture
def sentinel():
    """A directory outside every sandbox dir, writable by (and, as root, owned by) the sandbox user."""
    folder = tempfile.mkdtemp(prefix="soar-sentinel-")
    victim = os.path.join(folder, "victim.txt")
    with open(victim, "w") as handle:
        handle.write("precious")
    with contextlib.closing(sqlite3.connect(os.path.join(folder, "victim.db"))) as db:
        db.execute("create table t (a)")
        db.commit()
    uid = sandbox.layers().plan.uid
    for path in (folder, victim, os.path.join(folder, "victim.db")):
        os.chmod(path, 0o777 if path == folder else 0o666)
        if uid is not None:
            os.chown(path, uid, uid)
    past = time.time() - 1000  # a change to "now" shows up too
    for path in (victim, os.path.join(folder, "victim.db"), folder):
        os.utime(path, (past, past))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def snapshot(folder: str) -> dict:
    """Everything an escape could change: names, types, modes, owners, times, contents."""
    state = {}
    for path in [folder] + [os.path.join(folder, name) for name in sorted(os.listdir(folder))]:
        info = os.lstat(path)
        content = None
        if stat.S_ISREG(info.st_mode):
            with open(path, "rb") as handle:
                content = handle.read()
        state[path] = (info.st_mode, info.st_uid, info.st_mtime_ns, info.st_ctime_ns, info.st_size, content)
    return state


def attack(code: str, folder: str) -> str:
    return code.format(d=folder, f=os.path.join(folder, "victim.txt"), name=os.path.basename(folder))


@pytest.mark.parametrize("route", sorted(ESCAPES))
def test_escape_routes_change_nothing_outside(route, sentinel):
    before = snapshot(sentinel)
    result = run_python(attack(ESCAPES[route], sentinel))
    assert snapshot(sentinel) == before, result
    assert not result.ok


@pytest.mark.parametrize("route", sorted(ESCAPES))
def test_escape_routes_change_nothing_outside_in_a_batch(route, sentinel):
    before = snapshot(sentinel)
    result, after = run_python_batch([attack(ESCAPES[route], sentinel), "print('next')"])
    assert snapshot(sentinel) == before, result
    assert not result.ok and after.stdout == "next\n"


def test_no_device_nodes_even_inside_the_temp_dir():
    # as root, a node for /dev/mem or a disk inside the temp dir would be a way out
    result = run_python("import os, stat\nos.mknod('mem', 0o600 | stat.S_IFCHR, os.makedev(1, 1))\nprint('made')")
    assert "made" not in result.stdout and not result.ok


def run_without_the_hook(code: str, plan: isolation.Plan) -> subprocess.CompletedProcess:
    """``code`` under the kernel layers of ``plan`` only: no runner, no audit hook."""
    workdir = isolation.make_workdir(plan)
    confinement = isolation.confinement_for(workdir, plan)
    try:
        return subprocess.run([plan.python, "-I", "-S", "-B", "-c", code], cwd=workdir, capture_output=True,
                              text=True, env=isolation.environment(workdir), close_fds=True, timeout=30,
                              preexec_fn=isolation.make_preexec(256, 5, plan, confinement))
    finally:
        confinement.close()
        shutil.rmtree(workdir, ignore_errors=True)


def kernel_plan() -> isolation.Plan:
    found = sandbox.layers()
    if not (found.plan.landlock and found.plan.seccomp):
        pytest.skip("needs Landlock and seccomp: " + found.describe())
    return found.plan


@pytest.mark.parametrize("route", sorted(ESCAPES) + sorted(HOOKED))
def test_the_kernel_layers_hold_without_the_audit_hook(route, sentinel):
    before = snapshot(sentinel)
    done = run_without_the_hook(attack({**ESCAPES, **HOOKED}[route], sentinel), kernel_plan())
    assert snapshot(sentinel) == before, done.stderr
    assert done.returncode != 0


@pytest.mark.parametrize("route", sorted(ESCAPES) + sorted(HOOKED))
def test_the_routes_are_real_escapes_without_any_protection(route, sentinel):
    """Control: with the kernel layers off and no hook (as root, as before the fix) every route above
    does change the sentinel, so the tests above cannot pass by testing nothing."""
    if os.geteuid() != 0:
        pytest.skip("device nodes need root")
    # (and no tmpfs of its own: a rename or link out of it fails as crossing file systems)
    plan = dataclasses.replace(kernel_plan(), uid=None, landlock=False, seccomp=False, quota=False)
    before = snapshot(sentinel)
    done = run_without_the_hook(attack({**ESCAPES, **HOOKED}[route], sentinel), plan)
    assert snapshot(sentinel) != before, done.stderr


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


# -------------------------------------------------------------------------------------- the CLI gate


def test_cli_refuses_code_and_program_domains_while_a_layer_is_missing(monkeypatch, capsys, tmp_path):
    from soar_agent import cli

    complete = sandbox.layers()
    monkeypatch.setattr(isolation, "_found", dataclasses.replace(complete, missing=("landlock (pretend)",)))
    refused = [
        ["eval", "--domain", "program", "--levels", "1"],
        ["eval", "--domain", "code", "--data", str(tmp_path / "none.jsonl")],
        ["mine-hard", "--domain", "program"],
        ["run", str(cli.REPO_CURRICULA / "program.toml"), "--run-dir", str(tmp_path / "run")],
    ]
    for argv in refused:
        assert cli.main(argv) == 2, argv
        error = capsys.readouterr().err
        assert error == ("soar: error: the %s domain runs untrusted code and this machine's sandbox lacks landlock: "
                         "pass --allow-weak-sandbox to run it anyway\n" % ("code" if "code" in argv else "program"))
    assert not (tmp_path / "run").exists()  # refused before anything was created
    # with the flag the command goes on (here to its own complaint about the missing data file)
    assert cli.main(refused[1] + ["--allow-weak-sandbox"]) == 2
    assert "no such data file" in capsys.readouterr().err
    # domains that run no untrusted code are not gated
    assert cli.main(["eval", "--domain", "math", "--data", str(tmp_path / "none.jsonl")]) == 2
    assert "no such data file" in capsys.readouterr().err
    if not complete.missing:  # on a machine with every layer the flag is not needed
        monkeypatch.setattr(isolation, "_found", complete)
        assert cli.main(refused[1]) == 2 and "no such data file" in capsys.readouterr().err


# ------------------------------------------------------------------- second round: the hook disarmed
# Sandboxed code can reach the audit hook's frame through the traceback of a PermissionError it caused,
# and swap its classifier's code for one that allows everything: fork, signals, sockets, ctypes, writes.
# (The mark the hook writes on stderr goes to /dev/null meanwhile, so the run does not even show as
# blocked.) The tests below do that first; only the kernel layers are left to contain the code.

DISARM = r"""
import os
def _soar_disarm():
    saved, null = os.dup(2), os.open('/dev/null', os.O_WRONLY)
    os.dup2(null, 2)
    try:
        if os.fork() == 0:  # only where there is no hook
            os._exit(0)
    except PermissionError as error:
        tb = error.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        classify = tb.tb_frame.f_locals['classify']
        names = classify.__code__.co_freevars  # a stand-in with the same free variables allows everything
        source = 'def outer():\n' + ''.join('    %s = None\n' % name for name in names)
        source += '    def classify(event, args):\n        ' + ', '.join(names) + '\n        return None\n'
        space = {}
        exec(source + '    return classify\n', space)
        classify.__code__ = space['outer']().__code__
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
_soar_disarm()
print(os.getcwd(), flush=True)
"""

# After DISARM: a session of its own (out of the run's process group), stdio on /dev/null and no other
# descriptor (so the run's pipes close and the run returns), then `count` grandchildren that sleep; the
# middle child exits.
LEAVE_BEHIND = """
import time
def _soar_leave(count, seconds):
    middle = os.fork()
    if middle == 0:
        os.setsid()
        null = os.open('/dev/null', os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, 1024)  # a private duplicate of stdout too (the code domain's records)
        for _ in range(count):
            if os.fork() == 0:
                time.sleep(seconds)
                os._exit(0)
        os._exit(0)
    os.waitpid(middle, 0)
    print('left', count, flush=True)
"""


def sandboxed_processes(workdir: str) -> list[int]:
    """Live (not zombie) processes started by the sandbox run whose temp dir was ``workdir`` (every one of
    them has it as HOME in its environment)."""
    found = []
    needle = b"\0HOME=" + workdir.encode() + b"\0"
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                environment = b"\0" + handle.read()
            with open(f"/proc/{name}/stat", "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environment and state not in (b"Z", b"X"):
            found.append(int(name))
    return found


def kill_leftovers(workdir: str) -> list[int]:
    """Kill what a run left behind (bounded: a fork chain keeps making new ones for a while); the pids seen."""
    seen = []
    for _ in range(100):
        alive = sandboxed_processes(workdir)
        if not alive:
            break
        seen += alive
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        time.sleep(0.05)
    return seen


def workdir_of(result) -> str:
    return result.stdout.splitlines()[0]


def needs_root_kernel_layers():
    if os.geteuid() != 0 or not os.path.exists("/proc/self/environ"):
        pytest.skip("the escapes need root to be found (/proc/*/environ of nobody's processes)")
    needs_layer("pid namespace")


def needs_layer(*names: str) -> None:
    """Skip where the probe reports one of these layers missing (the weak-sandbox path says so itself)."""
    missing = {item.split(" (")[0] for item in sandbox.layers().missing}
    if missing & set(names):
        pytest.skip("this machine's sandbox lacks " + ", ".join(sorted(missing & set(names))))


def test_the_hook_can_be_disarmed_from_inside():
    """The premise of the tests below: after DISARM the hook lets a fork through."""
    result = run_python(DISARM + "pid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)\nprint('forked')")
    assert result.stdout.splitlines()[1:] == ["forked"], result


def test_a_disarmed_hook_cannot_leave_setsid_grandchildren_behind():
    needs_root_kernel_layers()
    result = run_python(DISARM + LEAVE_BEHIND + "_soar_leave(8, 30)\n", limits=Limits(wall_s=10))
    workdir = workdir_of(result)
    try:
        assert "left 8" in result.stdout, result  # the escape ran
        assert sandboxed_processes(workdir) == []
        assert not result.ok and result.reason == "blocked: process left behind", result
    finally:
        kill_leftovers(workdir)


def test_a_fork_chain_stops_when_the_run_returns():
    """Each link spins a little, forks the next and exits: RLIMIT_CPU is per process and the group kill
    misses a new session, so before the PID namespace the chain ran on for seconds after the run."""
    needs_root_kernel_layers()
    chain = """
import time
first = os.fork()
if first == 0:
    os.setsid()
    null = os.open('/dev/null', os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    for link in range(24):  # bounded: at most ~6 s of CPU in all
        end = time.monotonic() + 0.25
        while time.monotonic() < end:
            pass
        if os.fork() != 0:
            os._exit(0)
    os._exit(0)
print('chained', flush=True)
"""
    result = run_python(DISARM + chain, limits=Limits(wall_s=10))
    workdir = workdir_of(result)
    try:
        assert "chained" in result.stdout, result
        assert sandboxed_processes(workdir) == []
        time.sleep(0.3)
        assert sandboxed_processes(workdir) == []
    finally:
        kill_leftovers(workdir)


def test_a_timed_out_run_leaves_nothing_behind_either():
    needs_root_kernel_layers()
    result = run_python(DISARM + LEAVE_BEHIND + "_soar_leave(3, 30)\nimport time\ntime.sleep(30)\n",
                        limits=Limits(wall_s=1.5))
    workdir = workdir_of(result)
    try:
        assert result.reason == "timeout" and "left 3" in result.stdout, result
        assert sandboxed_processes(workdir) == []
    finally:
        kill_leftovers(workdir)


def test_the_processes_that_contain_a_run_are_out_of_its_reach():
    """The keeper (outside the PID namespace) and init hold the pipes that end the run; a run's processes
    share their uid and Landlock domain, and /proc is the host's (readlink /proc/self gives the host pid),
    so only their being not dumpable keeps the code from opening /proc/<pid>/fd/* of either."""
    needs_root_kernel_layers()
    probe = """
me = int(os.readlink('/proc/self'))
opened = []
for pid in range(me - 8, me):  # the keeper and init were forked just before this process
    for fd in range(12):
        try:
            os.close(os.open('/proc/%d/fd/%d' % (pid, fd), os.O_WRONLY))
            opened.append((me - pid, fd))
        except OSError:
            pass
print('opened', opened)
"""
    result = run_python(DISARM + probe)
    assert result.stdout.splitlines()[1:] == ["opened []"], result


UNIX_ROUTES = {
    "stream connect": "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(2); s.connect({stream!r})",
    "datagram sendto": "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.sendto(b'evil', {dgram!r})",
    "socketpair, then sendto": "s, t = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM); s.sendto(b'evil', {dgram!r})",
}


@pytest.fixture
def host_sockets():
    """A stream and a datagram Unix socket anyone may connect to (mode 0777, in a 0755 directory)."""
    import socket

    folder = tempfile.mkdtemp(prefix="soar-sockets-")
    os.chmod(folder, 0o755)
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    paths = {"stream": os.path.join(folder, "stream"), "dgram": os.path.join(folder, "dgram")}
    stream.bind(paths["stream"])
    stream.listen(8)
    dgram.bind(paths["dgram"])
    for path in paths.values():
        os.chmod(path, 0o777)
    stream.setblocking(False)
    dgram.setblocking(False)
    yield paths, stream, dgram
    stream.close()
    dgram.close()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("route", sorted(UNIX_ROUTES))
def test_host_unix_sockets_are_out_of_reach(route, host_sockets):
    needs_layer("seccomp")
    paths, stream, dgram = host_sockets
    attempt = "import socket\ntry:\n    " + UNIX_ROUTES[route].format(**paths) + \
        "\n    print('reached')\nexcept OSError as error:\n    print('refused', type(error).__name__)\n"
    result = run_python(DISARM + attempt)
    assert "reached" not in result.stdout and "refused" in result.stdout, result
    with pytest.raises(BlockingIOError):
        stream.accept()
    with pytest.raises(BlockingIOError):
        dgram.recv(16)


def test_the_temp_dir_has_a_total_quota():
    """Each file is capped by RLIMIT_FSIZE (32 MiB); the temp dir as a whole by a size-limited tmpfs."""
    needs_layer("disk quota")
    code = """
import os
written, files, errors = 0, 0, [None, None]
try:
    for index in range(12):  # bounded: at most 192 MiB where nothing stops it
        with open('big%d' % index, 'wb') as handle:
            files += 1
            for _ in range(16):
                handle.write(b'x' * (1 << 20))
                written += 1 << 20
except OSError as exc:
    errors[0] = exc.errno
try:
    for index in range(20000):  # and a count of files
        open('f%d' % index, 'w').close()
        files += 1
except OSError as exc:
    errors[1] = exc.errno
print(written, files, *errors)
"""
    result = run_python(code, limits=Limits(wall_s=30, cpu_s=20))
    written, files, *errors = result.stdout.split()
    assert int(written) <= isolation.DISK_BYTES and int(files) <= isolation.DISK_FILES, result
    assert errors == [str(errno.ENOSPC)] * 2, result


@pytest.fixture
def outside_file():
    """A file anyone may read (0644, in a 0755 directory), outside every sandbox dir."""
    folder = tempfile.mkdtemp(prefix="soar-outside-")
    os.chmod(folder, 0o755)
    path = os.path.join(folder, "secret.txt")
    with open(path, "w") as handle:
        handle.write("the expected values")
    os.chmod(path, 0o644)
    yield path
    shutil.rmtree(folder, ignore_errors=True)


READS = """
import os
for path in ({secret!r}, '/proc/%d/cmdline' % {host}, '/proc/%d/cmdline' % os.getppid(), '/proc/%d/environ' % {host}):
    try:
        with open(path, 'rb') as handle:
            print(path, 'read', len(handle.read()))
    except OSError as error:
        print(path, 'refused', type(error).__name__)
try:
    print('listed', os.listdir(os.path.dirname({secret!r})))
except OSError as error:
    print('listing refused', type(error).__name__)
"""


def test_reads_outside_the_interpreter_and_the_temp_dir_are_refused(outside_file):
    needs_layer("landlock", "landlock reads")
    result = run_python(READS.format(secret=outside_file, host=os.getpid()))
    assert result.ok, result
    assert "listed" not in result.stdout
    lines = result.stdout.splitlines()
    assert not any(" read " in line and not line.endswith(" read 0") for line in lines), result.stdout
    assert all("refused" in line for line in lines), result.stdout


def test_reads_are_refused_by_the_kernel_without_the_hook(outside_file):
    needs_layer("landlock", "landlock reads")
    done = run_without_the_hook(READS.format(secret=outside_file, host=os.getpid()), kernel_plan())
    assert "listed" not in done.stdout
    assert all("refused" in line for line in done.stdout.splitlines()), done.stdout + done.stderr
