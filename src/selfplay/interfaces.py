"""The extension points, as small protocols. A config names a built-in or a user's object by 'module:attr'.

    Task        config section -> train / held-out problems, rendered its own way     task.source
    Generator   (model path, placement, options) -> completions, batch by batch       generate.backend
    Verifier    (options, run) -> verify(problem, sample) -> Verdict                   verify.verifier
    Trainer     (start model, records, out folder, settings) -> a merged checkpoint    chosen by the recipe
    Recipe      (run context, iteration, model to sample from) -> the trained model    recipe

Nothing here imports a part of the package; the parts import these and the record types, not each other.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from selfplay.records import Example, Pair, Problem, Sample, Verdict


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int = 0


@dataclass(frozen=True)
class Completion:
    """What a backend returns for one sample; `generation.sample_batches` turns it into a Sample with its id."""

    text: str
    num_tokens: int
    finish_reason: str  # "stop" or "length"


class Generator(Protocol):
    """A generation backend holding one model. Built by a factory `(model_path, where, **options)`."""

    model_name: str

    def generate(
        self, problems: Sequence[Problem], params: SamplingParams, batch_size: int
    ) -> Iterator[list[tuple[Problem, list[Completion]]]]:
        """Yield batches of whole problems, each with its `params.n` completions in order."""
        ...

    def close(self) -> None:
        """Free the model (and any server or worker it started); the generator is not used after this."""
        ...


class GeneratorSource(Protocol):
    """What a verifier may ask the run for: a generator for 'current', 'base', or a model folder."""

    def generator(self, which: str) -> Generator: ...


class Verifier(Protocol):
    name: str

    def verify(self, problem: Problem, sample: Sample) -> Verdict: ...


@runtime_checkable
class BatchVerifier(Protocol):
    """A verifier that judges many samples at once (a pool of sandboxes, a batched judge)."""

    name: str

    def verify(self, problem: Problem, sample: Sample) -> Verdict: ...

    def verify_many(self, items: Sequence[tuple[Problem, Sample]]) -> list[Verdict]: ...


@runtime_checkable
class GroupVerifier(Protocol):
    """A batch verifier that judges each sample by the other samples of its problem (a majority vote).

    It must see all of a problem's samples at once: the verify stage never splits a problem across batches,
    and a resumed stage judges again any problem it had judged only in part.
    """

    name: str

    def verify(self, problem: Problem, sample: Sample) -> Verdict: ...

    def verify_many(self, items: Sequence[tuple[Problem, Sample]]) -> list[Verdict]: ...

    def verify_group(self, problem: Problem, samples: Sequence[Sample]) -> list[Verdict]: ...


@runtime_checkable
class StreamVerifier(Protocol):
    """A verifier that reports each verdict as it finishes (a pool of sandboxes): (index into items, verdict), or
    a list of such pairs for verdicts that finish together (one Ray handout), saved with one fsync."""

    name: str

    def verify(self, problem: Problem, sample: Sample) -> Verdict: ...

    def verify_stream(self, items: Sequence[tuple[Problem, Sample]]
                      ) -> Iterator[tuple[int, Verdict] | list[tuple[int, Verdict]]]: ...


class Split(Protocol):
    train: list[Problem]
    heldout: list[Problem]
    exemplar: Problem | None


class Task(Protocol):
    """Owns its data, how a problem is rendered, its default checker, and a deterministic split."""

    name: str
    default_verifier: str

    def split(self) -> Split: ...


@runtime_checkable
class FreshTask(Protocol):
    """A task that can draw new problems from another seed (procedural generators can; a fixed file cannot)."""

    def fresh(self, size: int, seed: int, exclude: set[str], exemplar: Problem | None) -> list[Problem]: ...


class Trainer(Protocol):
    """Fine-tunes a model on one kind of training record and writes a merged checkpoint to `out_dir`."""

    record_type: type[Example] | type[Pair]

    def train(
        self, init_path: Path, records: Sequence[Any], out_dir: Path, work_dir: Path, cfg: Any, where: Any, seed: int
    ) -> dict[str, Any]: ...


class Recipe(Protocol):
    """One iteration: wire the stages, sampling from `source`, and return the path of the trained model.

    A built-in recipe may have a check in `recipes.CHECKS`, `check(cfg, task, train_problems)`, called when
    the run opens, before anything is written, to refuse a task or setting it cannot run with in one line.
    """

    def __call__(self, ctx: Any, i: int, source: Path) -> Path: ...
