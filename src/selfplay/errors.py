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


def write_failure(exc: BaseException) -> str | None:
    """The reason, when `exc` is a library's report of a refused write (safetensors, torch.save), else None.

    Libraries that write checkpoints wrap the OS error in their own type; this reads it back out.
    """
    if isinstance(exc, OSError) and exc.errno in (*_SPACE, errno.EROFS):
        return exc.strerror or str(exc)
    text = str(exc)
    code = re.search(r"os error (\d+)", text)
    if code and int(code.group(1)) in (*_SPACE, errno.EROFS):
        return os.strerror(int(code.group(1)))
    if "file write failed" in text:  # torch.save's PytorchStreamWriter on a full disk
        return "file write failed"
    return None
