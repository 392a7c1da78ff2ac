"""Mirror metrics.jsonl into TensorBoard event files, when the `tensorboard` package is installed.

The folder is rewritten whole from metrics.jsonl each time, so a resumed run never logs a point twice.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def available() -> bool:
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


def write_tensorboard(rows: Sequence[dict[str, Any]], folder: Path,
                      steps: Sequence[dict[str, Any]] = ()) -> Path | None:
    """Scalars per iteration under `folder`, and online RL's per update (`steps`, under rl_step/, numbered across
    iterations by their `x`); None when TensorBoard is not installed."""
    if not available():
        return None
    from torch.utils.tensorboard import SummaryWriter

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    writer = SummaryWriter(log_dir=str(tmp))
    for row in rows:
        step = int(row["iteration"])
        for key, value in row.items():
            if isinstance(value, bool) or key == "iteration":
                continue
            if isinstance(value, (int, float)):
                writer.add_scalar(key, value, step)
        for stage, seconds in (row.get("seconds") or {}).items():
            if seconds is not None:
                writer.add_scalar(f"seconds/{stage}", seconds, step)
        writer.add_scalar("alarms", len(row.get("alarms", [])), step)
    for row in steps:
        for key, value in row.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if number and key not in ("x", "step", "iteration"):
                writer.add_scalar(f"rl_step/{key}", value, int(row["x"]))
    writer.close()
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
