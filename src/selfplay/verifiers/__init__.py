"""Verifiers score samples. A Verifier is anything with `verify(problem, sample) -> Verdict` and a `name`."""

from __future__ import annotations

from typing import Protocol

from selfplay.plugins import resolve
from selfplay.records import Problem, Sample, Verdict
from selfplay.verifiers.answer import extract_answer
from selfplay.verifiers.contains import ContainsVerifier
from selfplay.verifiers.math import MathVerifier
from selfplay.verifiers.reasoning_gym import ReasoningGymVerifier

__all__ = ["VERIFIERS", "Verifier", "build_verifier", "extract_answer"]


class Verifier(Protocol):
    name: str

    def verify(self, problem: Problem, sample: Sample) -> Verdict: ...


VERIFIERS = {"reasoning_gym": ReasoningGymVerifier, "math": MathVerifier, "contains": ContainsVerifier}


def build_verifier(name: str, task_default: str, strict_format: bool = False) -> Verifier:
    """'auto' means the task's own checker; otherwise a built-in name or a user's 'module:attr' factory.

    A user's factory is called with no arguments; built-ins take the answer-format setting.
    """
    chosen = task_default if name == "auto" else name
    factory = resolve(chosen, VERIFIERS, "verify.verifier")
    return factory(strict_format=strict_format) if chosen in VERIFIERS else factory()
