"""What every stage of a run needs: the config, the run folder, the frozen splits, the verifier and models."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfplay.config import RunConfig
from selfplay.loop import stages
from selfplay.loop.rundir import RunDir
from selfplay.models import Placement
from selfplay.records import Problem
from selfplay.verifiers import Verifier


@dataclass
class RunContext:
    cfg: RunConfig
    rundir: RunDir
    train: list[Problem]
    heldout: list[Problem]
    verifier: Verifier
    pool: stages.ModelPool
    where: Placement
    base_path: Path
    timings: dict[str, float] = field(default_factory=dict)

    def model_after(self, i: int) -> Path:
        """The model that iteration `i` produced; iteration 0 is the starting model."""
        return self.base_path if i == 0 else stages.trained_model_path(self.rundir.iter_dir(i))

    def stage(self, i: int, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        self.rundir.write_state(status="running", iteration=i, stage=name)
        start = time.perf_counter()
        result = fn()
        self.timings[f"iter-{i:03d}/{name}"] = time.perf_counter() - start
        done = self.rundir.read_state().get("done", [])
        if f"iter-{i:03d}/{name}" not in done:
            done.append(f"iter-{i:03d}/{name}")
        self.rundir.write_state(done=done)
        return result

    def evaluate(self, i: int) -> dict[str, Any]:
        it_dir = self.rundir.iter_dir(i)
        result = self.stage(
            i, "eval",
            lambda: stages.evaluate(
                it_dir, self.heldout, self.pool, self.model_after(i), self.verifier, self.cfg.eval, self.cfg.seed
            ),
        )
        self.rundir.rebuild_metrics()
        return result
