"""What every stage of a run needs: the config, the run folder, the frozen splits, the checkers and models."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfplay.config import RunConfig
from selfplay.guards.contamination import ContaminationIndex, build_index
from selfplay.loop import stages
from selfplay.loop.rundir import RunDir
from selfplay.models import Placement
from selfplay.records import Problem
from selfplay.verifiers import Verifier


@dataclass
class ControlSet:
    """A task the run never trains on, evaluated every iteration to catch forgetting."""

    name: str
    problems: list[Problem]
    verifier: Verifier


@dataclass
class RunContext:
    cfg: RunConfig
    rundir: RunDir
    train: list[Problem]
    heldout: list[Problem]
    verifier: Verifier  # the score the run trains on (may be a proxy)
    pool: stages.ModelPool
    where: Placement
    base_path: Path
    gold: Verifier | None = None  # the task's own checker, for held-out scoring and the reward-hacking audit
    controls: list[ControlSet] = field(default_factory=list)
    exemplar: Problem | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def scorer(self) -> Verifier:
        """Held-out problems are scored by the gold checker when there is one, else by the run's verifier."""
        return self.gold if self.gold is not None else self.verifier

    def contamination_index(self) -> ContaminationIndex:
        """Every evaluation prompt (held-out and control), to keep them out of the training data."""
        items = [(p.id, str(p.meta.get("question", p.prompt))) for p in self.heldout]
        for c in self.controls:
            items += [(p.id, str(p.meta.get("question", p.prompt))) for p in c.problems]
        return build_index(items, self.cfg.guards.contamination_n)

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
        from selfplay.loop.evaluation import evaluate_iteration

        result = self.stage(i, "eval", lambda: evaluate_iteration(self, i))
        self.rundir.rebuild_metrics()
        self.refresh_report()
        return result

    def refresh_report(self) -> Path | None:
        """Rewrite report.html (and TensorBoard scalars); a failure is reported, never fatal to the run."""
        from selfplay.reporting import write_report

        try:
            return write_report(self.rundir.path)
        except Exception as e:
            print(f"report.html not updated ({type(e).__name__}: {e}); retry with: selfplay report "
                  f"{self.rundir.path}", flush=True)
            return None
