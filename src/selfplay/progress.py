"""Where a run's work stands, for people watching it: `progress.json` in the run folder, rewritten atomically.

    {"iteration": 1, "stage": "generate", "done": 96, "total": 256, "unit": "sample", "updated": 1764928822.1}

The stage runner names the file and the stage (`start`); the long loops inside a stage (sampling, judging,
training steps) call `report`, at most twice a second, so watching costs the run nothing it would notice. With no
run (a benchmark, `selfplay eval`), `report` does nothing. `selfplay serve` draws its progress bars from this file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from selfplay.errors import WriteError
from selfplay.files import atomic_write_json

FILE = "progress.json"
EVERY = 0.5  # seconds between writes

_where: dict[str, Any] = {}
_last = 0.0


def start(run_path: Path, iteration: int, stage: str) -> None:
    """Point progress at a run's stage; the stage has done nothing yet."""
    global _last
    _where.clear()
    _where.update(path=Path(run_path) / FILE, iteration=iteration, stage=stage)
    _last = 0.0
    _write(0, None, "")


def stop() -> None:
    _where.clear()


def report(done: int, total: int | None, unit: str) -> None:
    """`done` of `total` units of the running stage's current loop."""
    global _last
    now = time.monotonic()
    if not _where or (now - _last < EVERY and done != total):
        return
    _last = now
    _write(done, total, unit)


def _write(done: int, total: int | None, unit: str) -> None:
    try:
        atomic_write_json(_where["path"], {"iteration": _where["iteration"], "stage": _where["stage"], "done": done,
                                           "total": total, "unit": unit, "updated": time.time()})
    except WriteError:  # a full disk stops the stage's own writes soon enough; progress never does
        pass


def trainer_callback():
    """A transformers TrainerCallback that reports each optimizer step."""
    from transformers import TrainerCallback

    class Steps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            report(state.global_step, state.max_steps or None, "step")

    return Steps()
