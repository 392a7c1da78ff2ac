"""The stage runner: the one place that knows a stage is done when its summary `<stage>.json` exists.

It skips a finished stage, records the running stage in state.json, times the stage, and writes the
summary atomically and last, after the stage's own data files, so a summary on disk proves the data is whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from selfplay import progress
from selfplay.files import atomic_write_json, read_json
from selfplay.loop.rundir import RunDir


def run_stage(rundir: RunDir, i: int, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run stage `name` of iteration `i` unless its summary exists; return the summary either way."""
    it_dir = rundir.iter_dir(i)
    summary_path = it_dir / f"{name}.json"
    if summary_path.is_file():
        return read_json(summary_path)
    it_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_state(status="running", iteration=i, stage=name)
    progress.start(rundir.path, i, name)
    start = time.perf_counter()
    try:
        summary = fn()
    finally:
        progress.stop()
    if not isinstance(summary, dict):
        raise TypeError(f"stage '{name}' of iteration {i} returned {type(summary).__name__}; a stage returns its "
                        f"summary as a dict (it is written to {name}.json)")
    summary.setdefault("seconds", time.perf_counter() - start)  # a stage may time only its own work
    atomic_write_json(summary_path, summary)
    return summary
