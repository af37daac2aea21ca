"""Kernel confinement for one sandboxed child: Landlock and a seccomp filter, through raw syscalls.

* Landlock (unprivileged, Linux >= 5.13): the child may create, write, truncate, rename or remove files
  only beneath its own temp directory (plus writing /dev/null); device nodes cannot be created anywhere
  and device ioctls are refused. Reading stays allowed. With ABI >= 4 TCP bind/connect are refused,
  with ABI >= 6 abstract unix sockets and signals cannot reach processes outside the sandbox.
* seccomp: Landlock cannot scope metadata changes (chmod, chown, utime, xattrs), not even on paths,
  and a descriptor the child opened read-only is enough for fchmod/futimens. So those syscalls fail
  with EPERM everywhere; sandboxed code has no business changing file metadata.

Both are irreversible for the child and everything it execs. Rulesets and filters are built in the
parent (so errors surface there, with a message); the forked child only makes the final calls in
``preexec_fn``, which must not allocate much or take locks.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import struct
from dataclasses import dataclass

# generic syscall numbers, the same on x86_64 and aarch64
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2

# Landlock file-system access rights (include/uapi/linux/landlock.h) and the ABI that introduced them
_WRITE_FILE, _REMOVE_DIR, _REMOVE_FILE = 1 << 1, 1 << 4, 1 << 5
_MAKE_CHAR, _MAKE_DIR, _MAKE_REG, _MAKE_SOCK = 1 << 6, 1 << 7, 1 << 8, 1 << 9
_MAKE_FIFO, _MAKE_BLOCK, _MAKE_SYM = 1 << 10, 1 << 11, 1 << 12
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1
# reads and exec are not handled, so they stay allowed
_WRITE_RIGHTS_V1 = (_WRITE_FILE | _REMOVE_DIR | _REMOVE_FILE | _MAKE_CHAR | _MAKE_DIR | _MAKE_REG | _MAKE_SOCK
                    | _MAKE_FIFO | _MAKE_BLOCK | _MAKE_SYM)
# never granted, not even in the temp dir: a device node there would open the host's disks or memory
_NEVER = _MAKE_CHAR | _MAKE_BLOCK | _IOCTL_DEV

# seccomp: syscalls that change metadata, per architecture (AUDIT_ARCH value, numbers)
_METADATA_SYSCALLS = {
    "x86_64": (0xC000003E, (
        90, 91, 92, 93, 94,  # chmod fchmod chown fchown lchown
        132, 235, 260, 261, 268, 280,  # utime utimes fchownat futimesat fchmodat utimensat
        188, 189, 190, 197, 198, 199,  # set/lset/fsetxattr, remove/lremove/fremovexattr
        452, 463, 466,  # fchmodat2 setxattrat removexattrat (newer kernels; unknown numbers are harmless)
    )),
    "aarch64": (0xC00000B7, (
        52, 53, 54, 55, 88,  # fchmod fchmodat fchownat fchown utimensat
        5, 6, 7, 14, 15, 16,  # xattrs
        452, 463, 466,
    )),
}
_X32_SYSCALL_BIT = 0x40000000
_RET_KILL_PROCESS, _RET_ALLOW, _RET_EPERM = 0x80000000, 0x7FFF0000, 0x00050000 | 1
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06


class _RulesetAttr(ctypes.Structure):
    # ABI 1 reads only the first field, ABI 4 two, ABI 6 three; the kernel accepts a longer struct when
    # the extra fields are zero, so one layout serves every ABI
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)) in the uapi header
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


@functools.lru_cache(maxsize=None)
def _libc():
    """libc with the two calls we make typed, or None off Linux (no prctl there)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        libc.prctl.restype = ctypes.c_int
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    except (OSError, AttributeError):
        return None
    return libc if platform.system() == "Linux" else None


def _syscall(number: int, *args) -> int:
    return _libc().syscall(ctypes.c_long(number), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])


@functools.lru_cache(maxsize=None)
def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is missing or disabled."""
    if platform.system() != "Linux" or platform.machine() not in _METADATA_SYSCALLS:
        return 0
    if _libc() is None:
        return 0
    version = _syscall(_SYS_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION)
    return max(int(version), 0)


@functools.lru_cache(maxsize=None)
def _seccomp_program():
    """The BPF filter as (struct sock_fprog, backing buffer), or None on an unknown architecture."""
    spec = _METADATA_SYSCALLS.get(platform.machine()) if _libc() is not None else None
    if spec is None:
        return None
    arch, numbers = spec
    # (code, jump-if-true, jump-if-false, k); jumps count instructions after the current one
    program = [(_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
               (_JEQ_K, 1, 0, arch),
               (_RET_K, 0, 0, _RET_KILL_PROCESS),  # a foreign syscall ABI (i386 on x86_64) is never used
               (_LD_W_ABS, 0, 0, 0)]  # seccomp_data.nr
    if arch == _METADATA_SYSCALLS["x86_64"][0]:  # x32 calls carry the same arch with this bit in nr
        program.append((_JGE_K, len(numbers) + 1, 0, _X32_SYSCALL_BIT))
    for index, number in enumerate(numbers):
        program.append((_JEQ_K, len(numbers) - index, 0, number))
    program += [(_RET_K, 0, 0, _RET_ALLOW), (_RET_K, 0, 0, _RET_EPERM)]
    raw = b"".join(struct.pack("=HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(raw, len(raw))
    return _SockFprog(len(program), ctypes.addressof(buffer)), buffer


def seccomp_available() -> bool:
    return _seccomp_program() is not None


@dataclass
class Confinement:
    """What one child applies to itself: call :meth:`apply` in ``preexec_fn``, :meth:`close` in the parent."""

    ruleset_fd: int | None
    seccomp: bool

    def apply(self) -> None:
        """In the forked child. Raises OSError when a layer cannot be applied (the run must not go on)."""
        libc = _libc()  # resolved in the parent by prepare(): no dlopen after fork
        if libc is None:
            return  # not Linux: prepare() allowed no layer
        # required by both layers; without them still worth having (no privileges gained through exec)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 and (self.ruleset_fd is not None or self.seccomp):
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if self.ruleset_fd is not None and _syscall(_SYS_RESTRICT_SELF, self.ruleset_fd, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
        if self.seccomp:
            fprog, _ = _seccomp_program()
            if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "seccomp filter")

    def close(self) -> None:
        if self.ruleset_fd is not None:
            os.close(self.ruleset_fd)
            self.ruleset_fd = None


def prepare(writable_dir: str, landlock: bool, seccomp: bool) -> Confinement:
    """Build the Landlock ruleset for ``writable_dir`` (when ``landlock``) in the parent."""
    _libc()  # resolve here, before the fork
    if seccomp and not seccomp_available():
        raise OSError(f"seccomp: no filter for {platform.machine()}")
    if not landlock:
        return Confinement(None, seccomp)
    abi = landlock_abi()
    if abi < 1:
        raise OSError("landlock: not supported by this kernel")
    handled = _WRITE_RIGHTS_V1 | (_REFER if abi >= 2 else 0) | (_TRUNCATE if abi >= 3 else 0) \
        | (_IOCTL_DEV if abi >= 5 else 0)
    attr = _RulesetAttr(handled, (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0,
                        (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0)
    ruleset = _syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    try:
        _allow(ruleset, writable_dir, handled & ~_NEVER)
        # writes to /dev/null are harmless and some code opens it (the batch runner does)
        _allow(ruleset, os.devnull, handled & (_WRITE_FILE | _TRUNCATE))
    except BaseException:
        os.close(ruleset)
        raise
    return Confinement(ruleset, seccomp)


def _allow(ruleset: int, path: str, rights: int) -> None:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        rule = _PathBeneath(rights, fd)
        if _syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}")
    finally:
        os.close(fd)
