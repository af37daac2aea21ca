"""Which process-level sandbox layers this machine enforces, and the ``preexec_fn`` that applies them.

Layers: Landlock (writes, and reads outside the interpreter's files) + seccomp (:mod:`soar_agent.confine`),
a drop to ``nobody`` when we are root, a private network namespace, a private PID namespace (every process
the code starts dies with the run: see :func:`soar_agent.sandbox.enter_pid_namespace`), a private mount
namespace with a size-limited tmpfs as the temp dir (a total disk quota), rlimits. :func:`layers` finds
out once, by experiment, which of them hold here: a probe child gets every layer that might work and then
tries to break each (write and read a file outside its directory, chmod inside it, open a Unix socket,
list network interfaces, fork and look at its child's pid, measure its directory, report its uid). Later
runs apply exactly the layers the probe saw hold, strictly: if one of them fails to apply, the run fails
instead of going on weaker.

Anything missing is logged once, loudly (``soar`` refuses the ``code``/``program`` domains then, unless
``--allow-weak-sandbox``). The scoring sandbox (:mod:`soar_agent.scoring_sandbox`, math and gym answers)
starts its helper under the same plan.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass

from soar_agent import confine

log = logging.getLogger("soar_agent.sandbox")

# Files the program writes in its own directory; big enough for scratch data, small enough for the disk.
FILE_SIZE_BYTES = 32 * 1024 * 1024
OPEN_FILES = 64
# The temp dir as a whole, when it is a tmpfs of its own (root): bytes and files (inodes).
DISK_BYTES = 64 * 1024 * 1024
DISK_FILES = 4096
# Only used when we drop to ``nobody``: a kernel-level cap on fork bombs, shared by all sandboxes.
NPROC_AS_NOBODY = 256
NOBODY = 65534
# The preferred interpreter for sandboxed code (same version as ours, so the runner source is valid for it).
PYTHON = sys.executable
_CLONE_NEWNET = 0x40000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNS = 0x00020000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REC, _MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 1 << 18
# Read (never written) by any Python program, besides the interpreter's own files: the dynamic linker's
# cache, time zones, locales, randomness, the CPU count. Missing ones are skipped.
_COMMON_READS = ("/etc/ld.so.cache", "/etc/localtime", "/usr/share/zoneinfo", "/usr/lib/locale", "/dev/urandom",
                 "/dev/random", "/sys/devices/system/cpu")
_PROBE_TIMEOUT_S = 30


@dataclass(frozen=True)
class Plan:
    """What every sandboxed child gets."""

    python: str
    uid: int | None  # drop to this uid (only when we are root)
    landlock: bool
    seccomp: bool
    netns: bool
    pidns: bool = False  # the runner is PID 1's child in a namespace of its own: everything dies with it
    quota: bool = False  # the temp dir is a size-limited tmpfs in a mount namespace of its own (root only)
    reads: bool = False  # Landlock also confines reads and exec to read_roots(python, uid) and the temp dir


@dataclass(frozen=True)
class Layers:
    """The probe's findings: the plan plus a human-readable account of what holds and what is missing."""

    plan: Plan
    landlock_abi: int
    missing: tuple[str, ...]  # one "<layer> (<why>)" each; empty when the sandbox is as designed

    def describe(self) -> str:
        plan = self.plan
        held = []
        if plan.landlock:
            extras = (", reads only of the interpreter's files and the temp dir" if plan.reads else "") + (
                ", no TCP" if self.landlock_abi >= 4 else "") + (
                ", no signals/abstract sockets out" if self.landlock_abi >= 6 else "")
            held.append(f"landlock ABI {self.landlock_abi} (writes only in the temp dir{extras})")
        if plan.seccomp:
            held.append("seccomp (no chmod/chown/utime/xattr, no unix sockets, no ptrace/io_uring)")
        if plan.uid is not None:
            held.append(f"uid {plan.uid} ({plan.python})")
        elif os.geteuid() != 0:
            held.append(f"unprivileged uid {os.geteuid()}")
        if plan.netns:
            held.append("network namespace")
        if plan.pidns:
            held.append("pid namespace (no process outlives the run)")
        if plan.quota:
            held.append(f"disk quota (the temp dir is a {DISK_BYTES >> 20} MiB tmpfs of {DISK_FILES} files)")
        held += ["rlimits", "audit hook"]
        text = "sandbox layers: " + ", ".join(held)
        return text + ("; MISSING: " + "; ".join(self.missing) if self.missing else "")


_lock = threading.Lock()
_found: Layers | None = None


def layers() -> Layers:
    """The layers in force here, probed on first use (thread-safe; warns once when some are missing)."""
    global _found
    with _lock:
        if _found is None:
            _found = _probe_layers()
            if _found.missing:
                log.warning("SANDBOX IS WEAKER THAN DESIGNED: missing %s. Untrusted code (the code and program "
                            "domains) and answer scoring (math, gym) are less contained; soar refuses the code "
                            "and program domains unless --allow-weak-sandbox is given. %s",
                            "; ".join(_found.missing), _found.describe())
        return _found


def reset() -> None:
    """Forget the probe (tests that change the interpreter or the machine's abilities)."""
    global _found
    with _lock:
        _found = None


def missing_layers() -> tuple[str, ...]:
    return layers().missing


# --------------------------------------------------------------------------------------------------
# The child's preexec_fn
# --------------------------------------------------------------------------------------------------


def _unshare():
    """libc ``unshare`` resolved in the parent, so the forked child only makes the call."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).unshare
    except (OSError, AttributeError):
        return None


def _mount():
    """libc ``mount``, typed, resolved in the parent; None where there is none."""
    try:
        import ctypes

        mount = ctypes.CDLL(None, use_errno=True).mount
    except (OSError, AttributeError):
        return None
    mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    mount.restype = ctypes.c_int
    return mount


def _clamp(which: int, value: int) -> tuple[int, int]:
    """Never ask for more than the current hard limit (an unprivileged process may not raise it)."""
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    return value, value


def make_preexec(memory_mb: int, cpu_s: int, plan: Plan, confinement: confine.Confinement, strict: bool = True):
    """The child's setup between fork and exec. ``strict``: a planned namespace or quota that cannot be
    made is an error (the probe runs with ``strict=False``, asking for every one, to find out which can).

    The temp dir (``confinement.writable_dir``, already the child's cwd) becomes a fresh tmpfs in the
    child's own mount namespace when the quota is on: the files the parent put there before (the program)
    are copied onto it, and the Landlock rules are completed for it (:meth:`confine.Confinement.allow_cwd`).
    In a PID namespace the exec'd interpreter is still outside it; its first child is PID 1 (the runner
    forks that itself, :func:`soar_agent.sandbox.enter_pid_namespace`)."""
    unshare, mount = _unshare(), _mount()
    uid = plan.uid
    wanted, attempts = _namespace_attempts(plan, strict)
    workdir = confinement.writable_dir
    staged = [name for name in os.listdir(workdir) if os.path.isfile(os.path.join(workdir, name))] \
        if wanted & _CLONE_NEWNS else []
    tmpfs_options = f"size={DISK_BYTES},nr_inodes={DISK_FILES},mode=0700".encode() + (
        f",uid={uid},gid={uid}".encode() if uid is not None else b"")
    workdir_bytes = os.fsencode(workdir)
    # computed here, in the parent: the child should do as little Python work as possible
    rlimits = _child_rlimits(cpu_s, uid)
    memory = _clamp(resource.RLIMIT_AS, memory_mb * 1024 * 1024)

    def preexec() -> None:
        # preexec_fn is documented as unsafe with threads (a lock held at fork time); we only call
        # already-imported C functions here, which is the common, practically safe subset.
        made = 0
        if wanted:
            for flags in attempts:
                if unshare is not None and unshare(flags) == 0:
                    made = flags
                    break
            if strict and made & wanted != wanted:
                raise OSError("sandbox: could not create the namespaces")
        if made & _CLONE_NEWNS and not _tmpfs_workdir(mount, workdir, workdir_bytes, staged, tmpfs_options,
                                                      confinement) and strict:
            raise OSError("sandbox: could not mount the temp dir's tmpfs")
        if uid is not None:  # before Landlock/seccomp: both are inherited, and set*id are not blocked
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        for which, value in rlimits:
            resource.setrlimit(which, value)
        confinement.apply()
        # last: with a small address-space limit even the next allocation of a big parent could fail
        resource.setrlimit(resource.RLIMIT_AS, memory)

    return preexec


def _namespace_attempts(plan: Plan, strict: bool) -> tuple[int, list[int]]:
    """The namespaces the child should get (clone flags) and the ``unshare`` calls to try, in order, to get
    them. Strict: exactly those, and a quota without root is an error; the probe settles for less."""
    is_root = os.geteuid() == 0
    wanted = ((_CLONE_NEWNET if plan.netns or not strict else 0) | (_CLONE_NEWPID if plan.pidns or not strict else 0)
              | (_CLONE_NEWNS if is_root and (plan.quota or not strict) else 0))
    if strict and plan.quota and not is_root:
        raise OSError("sandbox: a disk quota needs root")
    if is_root:  # the probe settles for less, in this order
        attempts = [wanted] if strict else [wanted, wanted & ~_CLONE_NEWNS, _CLONE_NEWNET]
    else:  # unprivileged user namespaces (no quota: its tmpfs would hold files of an unmapped uid)
        attempts = [_CLONE_NEWUSER | wanted] if strict else [_CLONE_NEWUSER | wanted, _CLONE_NEWUSER | _CLONE_NEWNET]
    return wanted, attempts


def _child_rlimits(cpu_s: int, uid: int | None) -> list[tuple[int, tuple[int, int]]]:
    """The rlimits the child sets (all but the address space, which comes last), clamped to ours."""
    rlimits = [
        (resource.RLIMIT_CORE, (0, 0)),
        # soft -> SIGXCPU, hard -> SIGKILL one second later
        (resource.RLIMIT_CPU, (_clamp(resource.RLIMIT_CPU, cpu_s)[0], _clamp(resource.RLIMIT_CPU, cpu_s + 1)[0])),
        (resource.RLIMIT_FSIZE, _clamp(resource.RLIMIT_FSIZE, FILE_SIZE_BYTES)),
        (resource.RLIMIT_NOFILE, _clamp(resource.RLIMIT_NOFILE, OPEN_FILES)),
    ]
    if uid is not None:
        rlimits.append((resource.RLIMIT_NPROC, (NPROC_AS_NOBODY, NPROC_AS_NOBODY)))
    return rlimits


def _tmpfs_workdir(mount, workdir: str, workdir_bytes: bytes, staged: list[str], tmpfs_options: bytes,
                   confinement: confine.Confinement) -> bool:
    """In the child, between fork and exec (so: no imports, no logging, nothing but calls of what is already
    loaded): the temp dir as a fresh tmpfs, with the staged files copied over; False when it cannot be made."""
    sources = [os.open(name, os.O_RDONLY | os.O_CLOEXEC) for name in staged]
    try:
        # nothing mounted here may propagate to the host's mount namespace
        if mount is None or mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
            return False
        if mount(b"soar-sandbox", workdir_bytes, b"tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, tmpfs_options) != 0:
            return False
        os.chdir(workdir)  # the old cwd is the directory underneath
        for name, source in zip(staged, sources):
            target = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                while os.sendfile(target, source, None, 1 << 20) > 0:
                    pass
            finally:
                os.close(target)
        confinement.allow_cwd()
        return True
    finally:
        for source in sources:
            os.close(source)


def environment(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def make_workdir(plan: Plan) -> str:
    workdir = tempfile.mkdtemp(prefix="soar-sbx-")
    if plan.uid is not None:
        os.chown(workdir, plan.uid, plan.uid)
    return workdir


def confinement_for(workdir: str, plan: Plan, extra_reads: tuple[str, ...] = ()) -> confine.Confinement:
    """The Landlock ruleset and seccomp filter for one child; ``extra_reads``: more paths it may read (the
    scoring helper's libraries) when reads are confined."""
    roots = None
    if plan.landlock and plan.reads:
        roots = read_roots(plan.python, plan.uid)
        if roots is None:
            raise OSError(f"sandbox: cannot tell which files {plan.python} reads")
        roots += tuple(extra_reads)
    return confine.prepare(workdir, plan.landlock, plan.seccomp, roots)


# --------------------------------------------------------------------------------------------------
# What an interpreter reads
# --------------------------------------------------------------------------------------------------

# The interpreter's standard library, and the directories of the shared libraries it maps once the
# stdlib's common extension modules are loaded (their dependencies live beside libc: libssl, libffi...).
_DISCOVER = """
import json, os, sys
for name in ("_decimal", "_hashlib", "_ssl", "_sqlite3", "zlib", "_bz2", "_lzma", "_json", "math", "_socket",
             "select", "mmap", "_uuid", "pyexpat", "_elementtree", "_ctypes", "_multibytecodec", "_datetime",
             "_random", "_struct", "array", "binascii", "unicodedata", "_csv", "_pickle", "_zoneinfo", "_queue"):
    try:
        __import__(name)
    except Exception:
        pass
mapped = set()
with open("/proc/self/maps") as handle:
    for line in handle:
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5].startswith("/"):
            mapped.add(fields[5].rstrip("\\n"))
print(json.dumps({"executable": sys.executable, "path": sys.path, "mapped": sorted(mapped)}))
"""

_roots_lock = threading.Lock()
_roots: dict[tuple[str, int | None], tuple[str, ...] | None] = {}


def read_roots(python: str, uid: int | None) -> tuple[str, ...] | None:
    """What a sandboxed ``python`` may read (and execute) besides its temp dir: the interpreter, its
    standard library, the directories of its shared libraries, and a few common system files. Found once
    per interpreter by running it; None when it cannot be found out. No root may contain the temp
    directory (that would open every other sandbox's files and the host's temp files)."""
    key = (python, uid)
    with _roots_lock:
        if key not in _roots:
            _roots[key] = _discover_roots(python, uid)
        return _roots[key]


def _discover_roots(python: str, uid: int | None) -> tuple[str, ...] | None:
    def as_uid() -> None:
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    try:
        done = subprocess.run([python, "-I", "-S", "-B", "-c", _DISCOVER], cwd="/", env={"PATH": "/usr/bin:/bin"},
                              stdin=subprocess.DEVNULL, capture_output=True, close_fds=True,
                              timeout=_PROBE_TIMEOUT_S, preexec_fn=as_uid)
        found = json.loads(done.stdout.decode().strip().splitlines()[-1]) if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    if not isinstance(found, dict):
        return None
    executables = {os.path.realpath(python), os.path.realpath(found.get("executable") or python)}
    paths = set(executables)
    paths |= {os.path.realpath(entry) for entry in found.get("path", []) if isinstance(entry, str) and entry}
    # the executable itself is mapped too: that file, not its directory (/usr/bin: every program)
    paths |= {os.path.dirname(os.path.realpath(name)) for name in found.get("mapped", [])
              if isinstance(name, str) and not name.endswith(" (deleted)") and os.path.realpath(name) not in executables}
    paths |= set(_COMMON_READS)
    temp = os.path.realpath(tempfile.gettempdir())
    roots = []
    for path in sorted(paths):
        if not os.path.exists(path) or path == "/" or temp == path or temp.startswith(path.rstrip("/") + "/"):
            continue
        if not any(path.startswith(root.rstrip("/") + "/") for root in roots):  # already beneath a root
            roots.append(path)
    return tuple(roots)


# --------------------------------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------------------------------

# Runs without the audit hook: it tests the kernel layers alone. argv[1] is a directory outside the
# probe's own that the probe's uid could write to, and read its "secret" file from, if nothing but
# Landlock stopped it; argv[2] the quota in bytes.
_PROBE = """
import json, os, socket, sys
found = {"uid": os.getuid(), "version": list(sys.version_info[:2])}
try:
    found["netns"] = {name for _, name in socket.if_nameindex()} == {"lo"}
except OSError:
    found["netns"] = False
try:
    open(os.path.join(sys.argv[1], "escaped"), "w").close()
    found["landlock"] = False
except PermissionError:
    found["landlock"] = True
try:
    open(os.path.join(sys.argv[1], "secret")).close()
    found["reads"] = False
except PermissionError:
    found["reads"] = True
open("mine", "w").close()
try:
    os.chmod("mine", 0o600)
    found["seccomp"] = False
except PermissionError:
    found["seccomp"] = True
try:
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()
    found["seccomp"] = False
except PermissionError:
    pass
child = os.fork()
if child == 0:
    os._exit(0 if os.getpid() == 1 else 1)
found["pidns"] = os.waitpid(child, 0)[1] == 0
try:  # what the runner needs to keep its keeper and init out of the code's reach (PR_SET_DUMPABLE)
    import ctypes
    ctypes.CDLL(None).prctl
except (ImportError, OSError, AttributeError):
    found["pidns"] = False
disk = os.statvfs(".")
found["quota"] = disk.f_blocks * disk.f_frsize <= int(sys.argv[2]) and disk.f_files <= int(sys.argv[3])
print(json.dumps(found))
"""


def _candidate_interpreters() -> list[str]:
    """Ours first; then the system's of the same version (the sandbox runs ``-I -S``: stdlib only), for
    when ours is unreachable for ``nobody`` (a pyenv/venv interpreter under /root)."""
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    names = [PYTHON, os.path.realpath(PYTHON), getattr(sys, "_base_executable", PYTHON)]
    names += [os.path.join(folder, version) for folder in ("/usr/local/bin", "/usr/bin", "/bin")]
    unique = []
    for name in names:
        if name and os.path.isfile(name) and os.path.realpath(name) not in {os.path.realpath(u) for u in unique}:
            unique.append(name)
    return unique


def _run_probe(plan: Plan) -> dict | None:
    """What the probe child saw under ``plan`` (every namespace asked for, tolerated when missing), None
    when it could not start or run."""
    workdir = make_workdir(plan)
    outside = tempfile.mkdtemp(prefix="soar-sbx-probe-")
    confinement = None
    try:
        os.chmod(outside, 0o777)  # only Landlock may stop the probe from writing here, or reading:
        secret = os.path.join(outside, "secret")
        with open(secret, "w") as handle:
            handle.write("not for the sandbox")
        os.chmod(secret, 0o644)
        confinement = confinement_for(workdir, plan)
        done = subprocess.run(
            [plan.python, "-I", "-S", "-B", "-c", _PROBE, outside, str(DISK_BYTES), str(DISK_FILES)], cwd=workdir,
            env=environment(workdir), stdin=subprocess.DEVNULL, capture_output=True, close_fds=True,
            timeout=_PROBE_TIMEOUT_S, preexec_fn=make_preexec(256, 5, plan, confinement, strict=False))
        if done.returncode != 0:
            return None
        found = json.loads(done.stdout.decode().strip().splitlines()[-1])
        return found if found.get("version") == list(sys.version_info[:2]) else None
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    finally:
        if confinement is not None:
            confinement.close()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(outside, ignore_errors=True)


def _probe_layers() -> Layers:
    abi = confine.landlock_abi()
    kernel = {"landlock": abi >= 1, "seccomp": confine.seccomp_available()}
    root = os.geteuid() == 0
    uids = [NOBODY, None] if root else [None]
    found, plan = None, None
    for uid in uids:
        for python in _candidate_interpreters() if uid is not None else [PYTHON]:
            reads = kernel["landlock"] and read_roots(python, uid) is not None
            # all the layers; without confined reads (an interpreter that reads somewhere unforeseen);
            # without Landlock and seccomp
            for attempt in ((kernel["landlock"], kernel["seccomp"], reads), (kernel["landlock"], kernel["seccomp"], False),
                            (False, False, False)):
                plan = Plan(python, uid, *attempt[:2], netns=False, reads=attempt[2])
                found = _run_probe(plan)
                if found is not None:
                    break
            if found is not None:
                break
        if found is not None:
            break
    if found is None:  # the interpreter does not start at all under the sandbox; report everything missing
        plan, found = Plan(PYTHON, None, False, False, False), {}
    landlock = plan.landlock and bool(found.get("landlock"))
    plan = Plan(plan.python, plan.uid if found.get("uid") == plan.uid else None, landlock,
                plan.seccomp and bool(found.get("seccomp")), bool(found.get("netns")), bool(found.get("pidns")),
                root and bool(found.get("quota")), landlock and plan.reads and bool(found.get("reads")))
    missing = []
    if not plan.landlock:
        missing.append("landlock (writes outside the temp dir are stopped only by the audit hook, and any file "
                       "the sandbox's uid may read is readable: "
                       + ("not enforced by this kernel" if abi < 1 else "did not hold in the probe") + ")")
    elif not plan.reads:
        missing.append("landlock reads (any file the sandbox's uid may read is readable: the parent's command "
                       "line in /proc, a tests or data file; the interpreter did not run with reads confined "
                       "to its own files)")
    if not plan.seccomp:
        missing.append("seccomp (chmod/chown/utime outside the temp dir, and connecting to host unix sockets, "
                       "are stopped only by the audit hook)")
    if root and plan.uid is None:
        missing.append("uid drop (running as root and no interpreter of this Python version that the "
                       f"unprivileged uid {NOBODY} can execute; sandboxed code runs as root)")
    if not plan.netns:
        missing.append("network namespace (needs root or unprivileged user namespaces)")
    if not plan.pidns:
        missing.append("pid namespace (needs root or unprivileged user namespaces; without it a process the "
                       "code starts in a session of its own outlives the run)")
    if not plan.quota:
        missing.append("disk quota (needs root, for a size-limited tmpfs in a mount namespace of its own; "
                       f"without it only each file is capped, at {FILE_SIZE_BYTES >> 20} MiB)")
    return Layers(plan, abi if plan.landlock else 0, tuple(missing))


if __name__ == "__main__":  # python -m soar_agent.isolation: print the report for this machine
    print(layers().describe())
