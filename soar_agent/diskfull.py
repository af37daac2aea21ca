"""A full disk, whichever library met it.

Python's own writes report a full disk as OSError (ENOSPC), but SQLite raises
`sqlite3.OperationalError: database or disk is full`, safetensors its own SafetensorError ("... No space left
on device (os error 28)") and torch.save into a path a bare RuntimeError ("unexpected pos ..."). The writers
(models.save_checkpoint, models.save_torch, the store) turn theirs into DiskFull, an OSError with errno ENOSPC
naming the file: code that handles OSError (the agent's loop stops the session after the unit in progress)
handles them all, and `soar` stops with one line naming what filled up instead of a traceback.
"""

from __future__ import annotations

import errno
import re
import sqlite3

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})  # a full quota is fixed the same way
# how Rust's io::Error (safetensors) ends its message for those errnos
_RUST_NO_SPACE = re.compile(r"\(os error (%s)\)" % "|".join(str(code) for code in sorted(NO_SPACE_ERRNOS)))


class DiskFull(OSError):
    """A write refused for want of space: errno ENOSPC, the file (or directory) it was writing, and what it
    was doing. The library's own error is its __cause__."""

    def __init__(self, filename, doing: str):
        super().__init__(errno.ENOSPC, f"no space left on device while {doing}", str(filename))


def _says_no_space(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno in NO_SPACE_ERRNOS
    if isinstance(error, sqlite3.Error):
        return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    if type(error).__name__ == "SafetensorError":  # safetensors is not imported just to name its class
        return bool(_RUST_NO_SPACE.search(str(error)))
    return False


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from or while handling, is a full disk (or quota)."""
    return disk_full_error(error) is not None


def disk_full_error(error: BaseException) -> BaseException | None:
    """The first error in `error`'s chain (itself, its __cause__, its __context__, ...) that says the disk
    is full, else None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if _says_no_space(error):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
