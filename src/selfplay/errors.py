"""The exception types for mistakes a user can fix: the CLI prints the message on one line and exits 2."""

from __future__ import annotations

import errno
from pathlib import Path


class UserError(Exception):
    """Bad input or a refused action; the message names the file, field or value and what was expected."""


class WriteError(UserError):
    """The OS refused a write to the run folder (disk full, quota, read-only, file too large)."""

    def __init__(self, path: Path | str, err: OSError):
        self.path, self.errno = Path(path), err.errno
        hint = "free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "fix the folder"
        super().__init__(f"{path}: cannot write ({err.strerror or err}); {hint}, then resume the run")
