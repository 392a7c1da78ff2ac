"""The record types that flow between stages, shared by every part of the package.

Each record is a frozen dataclass that round-trips through one JSON line. Ids make the lineage
traceable: an Example names the sample, which names the problem; a Verdict names the sample it judged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

R = TypeVar("R")


@dataclass(frozen=True)
class Problem:
    """One task instance: the prompt shown to the model and the reference its answer is checked against."""

    id: str
    prompt: str
    reference: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sample:
    """One completion of one problem by one model."""

    id: str
    problem_id: str
    completion: str
    num_tokens: int
    finish_reason: str  # "stop" (end of sequence) or "length" (hit max_new_tokens)
    model: str


@dataclass(frozen=True)
class Verdict:
    """A verifier's judgement of one sample."""

    sample_id: str
    problem_id: str
    score: float
    passed: bool
    answer: str | None
    verifier: str
    critique: str | None = None


@dataclass(frozen=True)
class Example:
    """One supervised training example (prompt -> completion), traceable to the sample it came from."""

    id: str
    problem_id: str
    sample_id: str
    prompt: str
    completion: str
    iteration: int


def to_dict(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


def from_dict(cls: type[R], data: dict[str, Any]) -> R:
    """Build a record from a parsed JSON line; unknown or missing fields raise TypeError."""
    return cls(**data)
