"""The generation interface every backend implements."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from selfplay.records import Problem, Sample


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int = 0


class Generator(Protocol):
    """Samples `params.n` completions per problem, yielded in batches so callers can persist as they go."""

    model_name: str

    def generate(
        self, problems: Sequence[Problem], params: SamplingParams, desc: str = "generate"
    ) -> Iterator[list[Sample]]: ...
