"""Kernel confinement for one sandboxed child: Landlock and a seccomp filter, through raw syscalls.

* Landlock (unprivileged, Linux >= 5.13): the child may create, write, truncate, rename or remove files
  only beneath its own temp directory (plus writing /dev/null); device nodes cannot be created anywhere
  and device ioctls are refused. With ``read_roots`` it may also read (and execute) only beneath those
  (the interpreter, its standard library and shared libraries) and its temp directory: not the parent's
  ``/proc/<pid>/cmdline``, not a tests file, not a user's data. With ABI >= 4 TCP bind/connect are
  refused, with ABI >= 6 abstract unix sockets and signals cannot reach processes outside the sandbox.
* seccomp: Landlock cannot scope metadata changes (chmod, chown, utime, xattrs), not even on paths,
  and a descriptor the child opened read-only is enough for fchmod/futimens. So those syscalls fail
  with EPERM everywhere; sandboxed code has no business changing file metadata. Nor with Unix sockets:
  a pathname socket is reached through the file system, which neither the network namespace nor
  Landlock (up to ABI 7) covers, and connecting needs only the socket file's write permission, which
  a service's 0777 socket gives anyone. So ``socket``/``socketpair`` for AF_UNIX fail with EPERM (an
  AF_UNIX descriptor is the only way to connect or send to one). Also refused: ``ptrace`` and
  ``process_vm_readv/writev`` (no reaching into another process of the sandbox), io_uring (its
  operations bypass this filter), ``unshare``/``setns`` (the namespaces stay the ones the parent made).

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
import sys
from dataclasses import dataclass

# generic syscall numbers, the same on x86_64 and aarch64
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2

# Landlock file-system access rights (include/uapi/linux/landlock.h) and the ABI that introduced them
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_REMOVE_DIR, _REMOVE_FILE = 1 << 4, 1 << 5
_MAKE_CHAR, _MAKE_DIR, _MAKE_REG, _MAKE_SOCK = 1 << 6, 1 << 7, 1 << 8, 1 << 9
_MAKE_FIFO, _MAKE_BLOCK, _MAKE_SYM = 1 << 10, 1 << 11, 1 << 12
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1
# without read roots, reads and exec are not handled, so they stay allowed
_READ_RIGHTS = _EXECUTE | _READ_FILE | _READ_DIR
_WRITE_RIGHTS_V1 = (_WRITE_FILE | _REMOVE_DIR | _REMOVE_FILE | _MAKE_CHAR | _MAKE_DIR | _MAKE_REG | _MAKE_SOCK
                    | _MAKE_FIFO | _MAKE_BLOCK | _MAKE_SYM)
# never granted, not even in the temp dir: a device node there would open the host's disks or memory
_NEVER = _MAKE_CHAR | _MAKE_BLOCK | _IOCTL_DEV

# seccomp, per architecture: (AUDIT_ARCH value, syscalls refused outright, socket, socketpair)
_SECCOMP = {
    "x86_64": (0xC000003E, (
        90, 91, 92, 93, 94,  # chmod fchmod chown fchown lchown
        132, 235, 260, 261, 268, 280,  # utime utimes fchownat futimesat fchmodat utimensat
        188, 189, 190, 197, 198, 199,  # set/lset/fsetxattr, remove/lremove/fremovexattr
        452, 463, 466,  # fchmodat2 setxattrat removexattrat (newer kernels; unknown numbers are harmless)
        101, 310, 311,  # ptrace process_vm_readv process_vm_writev
        425, 426, 427,  # io_uring_setup io_uring_enter io_uring_register
        272, 308,  # unshare setns
    ), 41, 53),
    "aarch64": (0xC00000B7, (
        52, 53, 54, 55, 88,  # fchmod fchmodat fchownat fchown utimensat
        5, 6, 7, 14, 15, 16,  # xattrs
        452, 463, 466,
        117, 270, 271,  # ptrace process_vm_readv process_vm_writev
        425, 426, 427,  # io_uring
        97, 268,  # unshare setns
    ), 198, 199),
}
_AF_UNIX = 1
_X32_SYSCALL_BIT = 0x40000000
_RET_KILL_PROCESS, _RET_ALLOW, _RET_EPERM = 0x80000000, 0x7FFF0000, 0x00050000 | 1
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_ARG0_LOW = 16  # offsetof(struct seccomp_data, args[0]), its low 32 bits on a little-endian machine


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
    if platform.system() != "Linux" or platform.machine() not in _SECCOMP:
        return 0
    if _libc() is None:
        return 0
    version = _syscall(_SYS_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION)
    return max(int(version), 0)


@functools.lru_cache(maxsize=None)
def _seccomp_program():
    """The BPF filter as (struct sock_fprog, backing buffer), or None on an unknown architecture."""
    spec = _SECCOMP.get(platform.machine()) if _libc() is not None and sys.byteorder == "little" else None
    if spec is None:
        return None
    arch, numbers, socket_nr, socketpair_nr = spec
    # (code, jump-if-true, jump-if-false, k); a jump is a label here, resolved below into the number of
    # instructions to skip
    program = [(_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
               (_JEQ_K, 1, 0, arch),
               (_RET_K, 0, 0, _RET_KILL_PROCESS),  # a foreign syscall ABI (i386 on x86_64) is never used
               (_LD_W_ABS, 0, 0, 0)]  # seccomp_data.nr
    if arch == _SECCOMP["x86_64"][0]:  # x32 calls carry the same arch with this bit in nr
        program.append((_JGE_K, "deny", 0, _X32_SYSCALL_BIT))
    program += [(_JEQ_K, "deny", 0, number) for number in numbers]
    program += [(_JEQ_K, "socket", 0, socket_nr), (_JEQ_K, "socket", 0, socketpair_nr),
                (_RET_K, 0, 0, _RET_ALLOW),
                "socket", (_LD_W_ABS, 0, 0, _ARG0_LOW),  # the address family
                (_JEQ_K, "deny", 0, _AF_UNIX),
                (_RET_K, 0, 0, _RET_ALLOW),
                "deny", (_RET_K, 0, 0, _RET_EPERM)]
    labels, instructions = {}, []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(instructions)
        else:
            instructions.append(item)

    def offset(target, index):
        return target if isinstance(target, int) else labels[target] - index - 1

    raw = b"".join(struct.pack("=HBBI", code, offset(true, index), offset(false, index), k)
                   for index, (code, true, false, k) in enumerate(instructions))
    buffer = ctypes.create_string_buffer(raw, len(raw))
    return _SockFprog(len(instructions), ctypes.addressof(buffer)), buffer


def seccomp_available() -> bool:
    return _seccomp_program() is not None


@dataclass
class Confinement:
    """What one child applies to itself: call :meth:`apply` in ``preexec_fn``, :meth:`close` in the parent."""

    ruleset_fd: int | None
    seccomp: bool
    writable_dir: str = ""
    # the writable dir's rights, for a file system the child mounts there itself (see allow_cwd)
    cwd_rule: _PathBeneath | None = None

    def allow_cwd(self) -> None:
        """In the forked child, before :meth:`apply`: grant the writable dir's rights on the current directory,
        the root of a file system mounted over the writable dir in the child's own mount namespace. (A rule
        on the directory underneath does not cover it: Landlock skips a covered mount point.) The ruleset
        is this child's alone, so the rule changes nothing for anyone else."""
        if self.ruleset_fd is None or self.cwd_rule is None:
            return
        fd = os.open(".", os.O_PATH | os.O_CLOEXEC)
        try:
            self.cwd_rule.parent_fd = fd
            if _syscall(_SYS_ADD_RULE, self.ruleset_fd, _RULE_PATH_BENEATH, ctypes.byref(self.cwd_rule), 0) != 0:
                raise OSError(ctypes.get_errno(), "landlock_add_rule for the temp dir's file system")
        finally:
            os.close(fd)

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


def prepare(writable_dir: str, landlock: bool, seccomp: bool, read_roots: tuple[str, ...] | None = None) -> Confinement:
    """Build the Landlock ruleset for ``writable_dir`` (when ``landlock``) in the parent. With ``read_roots``
    reads and exec are confined too: allowed beneath those paths (files or directories; missing ones are
    skipped) and in ``writable_dir`` (read only: nothing written there can be executed)."""
    _libc()  # resolve here, before the fork
    if seccomp and not seccomp_available():
        raise OSError(f"seccomp: no filter for {platform.machine()}")
    if not landlock:
        return Confinement(None, seccomp, writable_dir)
    abi = landlock_abi()
    if abi < 1:
        raise OSError("landlock: not supported by this kernel")
    handled = _WRITE_RIGHTS_V1 | (_REFER if abi >= 2 else 0) | (_TRUNCATE if abi >= 3 else 0) \
        | (_IOCTL_DEV if abi >= 5 else 0) | (_READ_RIGHTS if read_roots is not None else 0)
    attr = _RulesetAttr(handled, (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0,
                        (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0)
    ruleset = _syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    directory_rights = handled & ~_NEVER & ~_EXECUTE
    try:
        _allow(ruleset, writable_dir, directory_rights)
        # writes to /dev/null are harmless and some code opens it (the batch runner does)
        _allow(ruleset, os.devnull, handled & (_WRITE_FILE | _TRUNCATE | _READ_FILE))
        for root in read_roots or ():
            try:
                _allow(ruleset, root, _READ_RIGHTS if os.path.isdir(root) else _READ_FILE | _EXECUTE)
            except FileNotFoundError:
                continue
    except BaseException:
        os.close(ruleset)
        raise
    return Confinement(ruleset, seccomp, writable_dir, _PathBeneath(directory_rights, -1))


def _allow(ruleset: int, path: str, rights: int) -> None:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        rule = _PathBeneath(rights, fd)
        if _syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}")
    finally:
        os.close(fd)
