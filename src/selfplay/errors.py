"""The exception types for mistakes a user can fix: the CLI prints the message on one line and exits 2."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path


class UserError(Exception):
    """Bad input or a refused action; the message names the file, field or value and what was expected."""


_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class WriteError(UserError):
    """The OS refused a write to the run folder (disk full, quota, read-only, file too large)."""

    def __init__(self, path: Path | str, err: OSError | str):
        self.path = Path(path)
        reason = err if isinstance(err, str) else (err.strerror or str(err))
        space = isinstance(err, str) or err.errno in _SPACE
        super().__init__(f"{path}: cannot write ({reason}); {'free some space' if space else 'check the folder'}")


# What torch's zip writer (torch.save: optimizer.pt, rng_state.pth) raises when the OS refuses a write: a
# RuntimeError whose text is all that is left of the ENOSPC, never an OSError.
_TORCH_WRITE_FAILED = ("file write failed", "basic_ios::clear", "unexpected pos")


def write_failure(exc: BaseException) -> str | None:
    """The reason, when `exc` (or an exception it was raised from) is a refused write, else None.

    Libraries that write checkpoints (safetensors, torch.save) wrap the OS error in their own type, and torch
    raises a second error while closing the file it could not write; this reads the reason back out of the chain.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (*_SPACE, errno.EROFS):
            return e.strerror or str(e)
        text = str(e)
        code = re.search(r"os error (\d+)", text)
        if code and int(code.group(1)) in (*_SPACE, errno.EROFS):
            return os.strerror(int(code.group(1)))
        if isinstance(e, RuntimeError) and any(m in text for m in _TORCH_WRITE_FAILED):
            return "file write failed"
        todo += [e.__cause__, e.__context__]
    return None


def disk_full(path: Path | str, spare: int = 1 << 20) -> bool:
    """Whether the filesystem holding `path` has less than `spare` bytes left for this user.

    The last word on a failure whose text names no cause: a writer that lost the OS error still leaves the
    disk full behind it.
    """
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    free = st.f_bfree if os.geteuid() == 0 else st.f_bavail  # root may write into the reserved blocks
    return free * st.f_frsize < spare
