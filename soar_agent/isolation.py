"""Which process-level sandbox layers this machine enforces, and the ``preexec_fn`` that applies them.

Layers: Landlock + seccomp (:mod:`soar_agent.confine`), a drop to ``nobody`` when we are root, a private
network namespace, rlimits. :func:`layers` finds out once, by experiment, which of them hold here: a
probe child gets every layer that might work and then tries to break each (write a file outside its
directory, chmod inside it, list network interfaces, report its uid). Later runs apply exactly the layers
the probe saw hold, strictly: if one of them fails to apply, the run fails instead of going on weaker.

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
# Only used when we drop to ``nobody``: a kernel-level cap on fork bombs, shared by all sandboxes.
NPROC_AS_NOBODY = 256
NOBODY = 65534
# The preferred interpreter for sandboxed code (same version as ours, so the runner source is valid for it).
PYTHON = sys.executable
_CLONE_NEWNET = 0x40000000
_CLONE_NEWUSER = 0x10000000
_PROBE_TIMEOUT_S = 30


@dataclass(frozen=True)
class Plan:
    """What every sandboxed child gets."""

    python: str
    uid: int | None  # drop to this uid (only when we are root)
    landlock: bool
    seccomp: bool
    netns: bool


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
            extras = (", no TCP" if self.landlock_abi >= 4 else "") + (
                ", no signals/abstract sockets out" if self.landlock_abi >= 6 else "")
            held.append(f"landlock ABI {self.landlock_abi} (writes only in the temp dir{extras})")
        if plan.seccomp:
            held.append("seccomp (no chmod/chown/utime/xattr)")
        if plan.uid is not None:
            held.append(f"uid {plan.uid} ({plan.python})")
        elif os.geteuid() != 0:
            held.append(f"unprivileged uid {os.geteuid()}")
        if plan.netns:
            held.append("network namespace")
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


def _clamp(which: int, value: int) -> tuple[int, int]:
    """Never ask for more than the current hard limit (an unprivileged process may not raise it)."""
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    return value, value


def make_preexec(memory_mb: int, cpu_s: int, plan: Plan, confinement: confine.Confinement, strict: bool = True):
    """The child's setup between fork and exec. ``strict``: a planned network namespace that cannot be
    made is an error (the probe runs with ``strict=False`` to find out whether it can)."""
    unshare = _unshare()
    is_root = os.geteuid() == 0
    want_netns = plan.netns or not strict
    uid = plan.uid
    # computed here, in the parent: the child should do as little Python work as possible
    rlimits = [
        (resource.RLIMIT_CORE, (0, 0)),
        # soft -> SIGXCPU, hard -> SIGKILL one second later
        (resource.RLIMIT_CPU, (_clamp(resource.RLIMIT_CPU, cpu_s)[0], _clamp(resource.RLIMIT_CPU, cpu_s + 1)[0])),
        (resource.RLIMIT_FSIZE, _clamp(resource.RLIMIT_FSIZE, FILE_SIZE_BYTES)),
        (resource.RLIMIT_NOFILE, _clamp(resource.RLIMIT_NOFILE, OPEN_FILES)),
    ]
    if uid is not None:
        rlimits.append((resource.RLIMIT_NPROC, (NPROC_AS_NOBODY, NPROC_AS_NOBODY)))
    memory = _clamp(resource.RLIMIT_AS, memory_mb * 1024 * 1024)

    def preexec() -> None:
        # preexec_fn is documented as unsafe with threads (a lock held at fork time); we only call
        # already-imported C functions here, which is the common, practically safe subset.
        if want_netns:
            made = unshare is not None and unshare(_CLONE_NEWNET) == 0
            if not made and unshare is not None and not is_root:
                made = unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0  # unprivileged user namespaces
            if strict and not made:
                raise OSError("sandbox: could not create the network namespace")
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


def environment(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def make_workdir(plan: Plan) -> str:
    workdir = tempfile.mkdtemp(prefix="soar-sbx-")
    if plan.uid is not None:
        os.chown(workdir, plan.uid, plan.uid)
    return workdir


def confinement_for(workdir: str, plan: Plan) -> confine.Confinement:
    return confine.prepare(workdir, plan.landlock, plan.seccomp)


# --------------------------------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------------------------------

# Runs without the audit hook: it tests the kernel layers alone. argv[1] is a directory outside the
# probe's own that the probe's uid could write to, if nothing but Landlock stopped it.
_PROBE = """
import json, os, sys
found = {"uid": os.getuid(), "version": list(sys.version_info[:2])}
try:
    lines = open("/proc/net/dev").read().splitlines()[2:]
    found["netns"] = {line.split(":")[0].strip() for line in lines if ":" in line} == {"lo"}
except OSError:
    found["netns"] = False
try:
    open(os.path.join(sys.argv[1], "escaped"), "w").close()
    found["landlock"] = False
except PermissionError:
    found["landlock"] = True
open("mine", "w").close()
try:
    os.chmod("mine", 0o600)
    found["seccomp"] = False
except PermissionError:
    found["seccomp"] = True
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
    """What the probe child saw under ``plan`` (network namespace tolerated when missing), None when it
    could not start or run."""
    workdir = make_workdir(plan)
    outside = tempfile.mkdtemp(prefix="soar-sbx-probe-")
    confinement = None
    try:
        os.chmod(outside, 0o777)  # only Landlock may stop the probe from writing here
        confinement = confinement_for(workdir, plan)
        done = subprocess.run(
            [plan.python, "-I", "-S", "-B", "-c", _PROBE, outside], cwd=workdir, env=environment(workdir),
            stdin=subprocess.DEVNULL, capture_output=True, close_fds=True, timeout=_PROBE_TIMEOUT_S,
            preexec_fn=make_preexec(256, 5, plan, confinement, strict=False))
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
            for attempt in (kernel, {"landlock": False, "seccomp": False}):
                plan = Plan(python, uid, attempt["landlock"], attempt["seccomp"], netns=False)
                found = _run_probe(plan)
                if found is not None:
                    break
            if found is not None:
                break
        if found is not None:
            break
    if found is None:  # the interpreter does not start at all under the sandbox; report everything missing
        plan, found = Plan(PYTHON, None, False, False, False), {}
    plan = Plan(plan.python, plan.uid if found.get("uid") == plan.uid else None,
                plan.landlock and bool(found.get("landlock")), plan.seccomp and bool(found.get("seccomp")),
                bool(found.get("netns")))
    missing = []
    if not plan.landlock:
        missing.append("landlock (writes outside the temp dir are stopped only by the audit hook: "
                       + ("not enforced by this kernel" if abi < 1 else "did not hold in the probe") + ")")
    if not plan.seccomp:
        missing.append("seccomp (chmod/chown/utime outside the temp dir are stopped only by the audit hook)")
    if root and plan.uid is None:
        missing.append("uid drop (running as root and no interpreter of this Python version that the "
                       f"unprivileged uid {NOBODY} can execute; sandboxed code runs as root)")
    if not plan.netns:
        missing.append("network namespace (needs root or unprivileged user namespaces)")
    return Layers(plan, abi if plan.landlock else 0, tuple(missing))


if __name__ == "__main__":  # python -m soar_agent.isolation: print the report for this machine
    print(layers().describe())
