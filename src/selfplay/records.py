"""The record types that flow between stages, shared by every part of the package.

Each record is a frozen dataclass that round-trips through one JSON line. Ids make the lineage
traceable: an Example or a Pair names the samples it came from, a Sample names its problem, a Verdict
names the sample it judged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

R = TypeVar("R")

Message = dict[str, str]  # one chat turn: {"role": "user" | "assistant" | "system", "content": ...}


@dataclass(frozen=True)
class Problem:
    """One task instance: what the model is asked and the reference its answer is checked against.

    `prompt` is one user turn; a problem whose request has several turns (a critique, a revision, a judge
    prompt) sets `messages` instead, and every backend renders that list with the model's chat template.
    """

    id: str
    prompt: str
    reference: str
    meta: dict[str, Any] = field(default_factory=dict)
    messages: list[Message] | None = None

    @property
    def question(self) -> str:
        """The task content without the shared exemplar and instructions (what overlap checks compare)."""
        return str(self.meta.get("question", self.prompt))

    def chat(self) -> list[Message]:
        """The conversation a backend renders: `messages` when set, else `prompt` as one user turn."""
        return list(self.messages) if self.messages is not None else [{"role": "user", "content": self.prompt}]


def sample_id(problem_id: str, k: int) -> str:
    """The id of the k-th sample of a problem; resume and lineage rely on it, so every backend uses this."""
    return f"{problem_id}/s{k}"


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
    details: dict[str, Any] | None = None  # a verifier's structured report (the code sandbox's tests and limits)


@dataclass(frozen=True)
class Example:
    """One supervised training example (prompt -> completion), traceable to the sample it came from."""

    id: str
    problem_id: str
    sample_id: str
    prompt: str
    completion: str
    iteration: int
    messages: list[Message] | None = None  # the prompt's turns when the problem had several

    @property
    def sample_ids(self) -> tuple[str, ...]:
        return (self.sample_id,)

    @property
    def texts(self) -> tuple[str, ...]:
        """The model-written text this example trains on."""
        return (self.completion,)


@dataclass(frozen=True)
class Pair:
    """One preference pair for DPO-style training: a chosen and a rejected completion of the same prompt."""

    id: str
    problem_id: str
    prompt: str
    chosen: str
    rejected: str
    chosen_sample_id: str
    rejected_sample_id: str
    chosen_score: float
    rejected_score: float
    iteration: int
    messages: list[Message] | None = None

    @property
    def sample_ids(self) -> tuple[str, ...]:
        return (self.chosen_sample_id, self.rejected_sample_id)

    @property
    def texts(self) -> tuple[str, ...]:
        return (self.chosen, self.rejected)


TrainRecord = Example | Pair

# Where each kind of training record is written in an iteration folder.
TRAIN_FILES: dict[type, str] = {Example: "train.jsonl", Pair: "pairs.jsonl"}


def to_dict(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


def from_dict(cls: type[R], data: dict[str, Any]) -> R:
    """Build a record from a parsed JSON line; unknown or missing fields raise TypeError."""
    return cls(**data)
