"""What a recipe gets: the run's config, folder, frozen problems, checkers and models, and one method per stage.

A recipe wires an iteration from these methods; each runs through the stage runner, so it is skipped when
its summary exists, timed, and recorded in state.json. The driver, not the recipe, picks the model to
sample from and evaluates the result.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfplay.config import RunConfig
from selfplay.generation import build_generator
from selfplay.guards.contamination import ContaminationIndex, build_index
from selfplay.interfaces import Generator, SamplingParams, Task, Trainer
from selfplay.loop import human_eval, review, stages
from selfplay.loop.rundir import STAGES, RunDir, load_records
from selfplay.loop.runner import run_stage
from selfplay.models import Placement, resolve_model_path
from selfplay.records import Problem
from selfplay.scale import RayGenerator, RayWorkers
from selfplay.training.launch import AccelerateLaunch
from selfplay.verifiers import Verifier


class ModelPool:
    """Keeps the models in use loaded across stages, so generate and evaluate share a load.

    Up to `capacity` models stay loaded (least recently used first out), so a judge that reads one model
    while another is being sampled or evaluated does not reload either on every call. With `workers` (a Ray
    cluster, `scale.ray_address`) the models are loaded on the workers, which sample them.
    """

    def __init__(self, where: Placement, backend: str, options: dict[str, Any], capacity: int = 2,
                 workers: RayWorkers | None = None):
        self.where, self.backend, self.options, self.capacity = where, backend, dict(options), capacity
        self.workers = workers
        self._loaded: dict[Path, Generator] = {}

    def generator(self, path: Path) -> Generator:
        path = Path(path)
        if path in self._loaded:
            self._loaded[path] = self._loaded.pop(path)  # most recently used last
            return self._loaded[path]
        while len(self._loaded) >= self.capacity:
            oldest = next(iter(self._loaded))
            self._loaded.pop(oldest).close()
        if self.workers is not None:
            self._loaded[path] = RayGenerator(
                self.workers, path, lambda: build_generator(self.backend, path, self.where, self.options))
        else:
            self._loaded[path] = build_generator(self.backend, path, self.where, self.options)
        return self._loaded[path]

    def _close_loaded(self) -> None:
        while self._loaded:
            self._loaded.popitem()[1].close()

    def release(self) -> None:
        """Close every loaded model, here and on the Ray workers (before training loads its own copy)."""
        self._close_loaded()
        if self.workers is not None:
            self.workers.release()
        gc.collect()

    def close(self) -> None:
        """At the end of a run: close every model here, and stop the Ray workers at once (and a cluster the run
        started) instead of asking each to free its models first."""
        self._close_loaded()
        if self.workers is not None:
            self.workers.shutdown()


@dataclass
class RunModels:
    """The run's models, as a verifier sees them (a GeneratorSource): 'current', 'base', or a model folder."""

    pool: ModelPool
    base_path: Path
    current: Path | None = None  # the model the running iteration samples from; set by the driver

    def generator(self, which: str) -> Generator:
        if which == "current":
            path = self.current or self.base_path
        elif which == "base":
            path = self.base_path
        else:
            path = resolve_model_path(which)
        return self.pool.generator(path)


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
    task: Task
    train_problems: list[Problem]
    heldout: list[Problem]
    verifier: Verifier  # the score the run trains on (may be a proxy)
    models: RunModels
    where: Placement
    gold: Verifier | None = None  # the task's own checker, for held-out scoring and the reward-hacking audit
    controls: list[ControlSet] = field(default_factory=list)
    exemplar: Problem | None = None
    # task.labels: hidden: the training problems with their answers, which only the audits read.
    train_labels: list[Problem] | None = None
    unlabelled: bool = False  # the task has no answers at all (a JSONL file of questions only)

    @property
    def pool(self) -> ModelPool:
        return self.models.pool

    @property
    def base_path(self) -> Path:
        """The starting model."""
        return self.models.base_path

    @property
    def scorer(self) -> Verifier:
        """Held-out problems are scored by the gold checker when there is one, else by the run's verifier."""
        return self.gold if self.gold is not None else self.verifier

    @property
    def labelled_train(self) -> list[Problem]:
        """The training problems with their answers, for the audits; the loop trains on `train_problems`."""
        return self.train_labels if self.train_labels is not None else self.train_problems

    def init_model(self, source: Path) -> Path:
        """The model an iteration fine-tunes, by `train.init_from`: the starting model, or the one it sampled from."""
        return self.base_path if self.cfg.train.init_from == "base" else source

    def model_after(self, i: int) -> Path:
        """The model that iteration `i` produced; iteration 0 is the starting model."""
        return self.rundir.model_of(i, self.base_path)

    def contamination_index(self, i: int) -> ContaminationIndex:
        """Every evaluation question the run has shown so far: held-out, control, and earlier fresh problems."""
        items = [(p.id, p.question) for p in self.heldout]
        for c in self.controls:
            items += [(p.id, p.question) for p in c.problems]
        for j in range(i):
            fresh = self.rundir.iter_dir(j) / "fresh_problems.jsonl"
            if fresh.is_file():
                items += [(p.id, p.question) for p in load_records(fresh, Problem)]
        g = self.cfg.guards
        return build_index(items, g.contamination_n, g.contamination_boilerplate)

    def records(self, i: int, name: str, record_type: type) -> list[Any]:
        """The records of iteration `i`'s file `<name>.jsonl` (a stage's output), for a recipe's own selection."""
        return load_records(self.rundir.iter_dir(i) / f"{name}.jsonl", record_type)

    # -- the stages, for recipes -----------------------------------------------------------------
    def stage(self, i: int, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run a stage of your own through the runner (skip when done, timing, state, atomic summary)."""
        if name in STAGES:
            raise ValueError(f"stage name '{name}' is taken by a built-in stage ({', '.join(STAGES)}); pick another")
        return self._stage(i, name, fn)

    def _stage(self, i: int, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        return run_stage(self.rundir, i, name, fn)

    def generate(
        self, i: int, problems: Sequence[Problem], source: Path | str, params: SamplingParams, *,
        stage: str = "generate", out: str = "samples", generator: Callable[[], Generator] | None = None,
    ) -> dict[str, Any]:
        """samples.jsonl: `params.n` completions per problem from the model at `source`.

        A recipe that samples more than once in an iteration (a hinted retry, a critique, a revision) names
        another `stage` and `out` file; `generator` replaces the run's pool (a teacher, a server).
        """
        it_dir = self.rundir.iter_dir(i)
        self._check_name(stage, "generate")
        built: list[Generator] = []  # one the recipe handed in is closed here, whatever happens

        def make() -> Generator:
            if generator is None:  # the pool's models stay loaded for the stages after this one
                return self.pool.generator(Path(source))
            built.append(generator())
            return built[-1]

        try:
            return self._stage(i, stage, lambda: stages.generate(
                it_dir, problems, make, source, params, self.cfg.generate.batch_size, out=out))
        finally:
            for g in built:
                g.close()

    def verify(
        self, i: int, problems: Sequence[Problem], verifier: Verifier | None = None, *, stage: str = "verify",
        samples: str = "samples", out: str = "verdicts",
    ) -> dict[str, Any]:
        """verdicts.jsonl: every sample of `<samples>.jsonl` judged by `verifier` (default: the run's)."""
        it_dir = self.rundir.iter_dir(i)
        chosen = verifier or self.verifier
        self._check_name(stage, "verify")
        return self._stage(i, stage, lambda: stages.verify(
            it_dir, problems, chosen, self.cfg.verify.batch_size, samples_file=samples, out=out))

    @staticmethod
    def _check_name(stage: str, own: str) -> None:
        if stage != own and stage in STAGES:
            raise ValueError(f"stage name '{stage}' is taken by a built-in stage ({', '.join(STAGES)}); pick another")

    def select(self, i: int, problems: Sequence[Problem], select: stages.Select, record_type: type) -> dict[str, Any]:
        """train.jsonl or pairs.jsonl: the records `select` makes from the verdicts, minus contaminated ones."""
        it_dir = self.rundir.iter_dir(i)
        return self._stage(i, "filter", lambda: stages.filter_(
            it_dir, problems, select, record_type, self.contamination_index(i)))

    def review(self, i: int) -> list[str]:
        """Pause for a person when `review.every` says so; return the record ids they rejected."""
        r = self.cfg.review
        if not r.every or i % r.every:
            return []
        it_dir = self.rundir.iter_dir(i)
        summary = self._stage(i, "review", lambda: review.gate(
            it_dir, self.rundir.path, self.train_problems, r.sample_size, self.cfg.seed + i, r.poll_seconds))
        review.raise_if_rejected(it_dir, summary)
        human_eval.write_preferences(self.rundir)  # the pairs this person confirmed or flipped, as human rows
        return summary.get("rejected_ids", [])

    def train(self, i: int, trainer: Trainer, init: Path, fallback: Path, removed: Sequence[str] = ()) -> Path:
        """model/: `trainer` fine-tunes `init` on this iteration's records; with none, the model is `fallback`."""
        it_dir = self.rundir.iter_dir(i)
        cfg = self.cfg
        if cfg.train.launcher == "accelerate":
            trainer = AccelerateLaunch(trainer)
        human = review.human_labelled(it_dir)  # pairs a person confirmed or flipped in this iteration's review
        summary = self._stage(i, "train", lambda: stages.train(
            it_dir, trainer, init, fallback, cfg.train, self.where, cfg.seed + i, self.pool.release, removed,
            human, cfg.review.human_weight))
        return fallback if summary["skipped"] else it_dir / summary["model"]
