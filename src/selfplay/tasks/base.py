"""Helpers for tasks: how an answer task renders its prompts, and the deterministic train / held-out split.

The Task protocol itself lives in selfplay.interfaces. A task turns a pool of raw (question, answer)
items into Problems and owns its rendering: an answer task asks for an `Answer:` line (ANSWER_INSTRUCTION),
a code or open-ended task passes `instruction=None`. The split is a pure function of the
seed and the question text: the pool is de-duplicated by question, ordered by a keyed hash, and cut
into one format exemplar, the held-out set and the training set, so no question can sit on both sides.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from selfplay.errors import UserError
from selfplay.records import Problem

ANSWER_INSTRUCTION = "Give your final answer on the last line as: Answer: <answer>"


@dataclass(frozen=True)
class Split:
    train: list[Problem]
    heldout: list[Problem]
    exemplar: Problem | None  # shown as a one-shot example; in neither split


@dataclass(frozen=True)
class RawItem:
    question: str
    answer: str
    meta: dict[str, Any]
    solution: str | None = None  # worked steps, shown when the item is the one-shot exemplar


def problem_id(prefix: str, question: str) -> str:
    return f"{prefix}-{hashlib.sha256(question.encode()).hexdigest()[:12]}"


def render_prompt(question: str, exemplar: RawItem | None, instruction: str | None = ANSWER_INSTRUCTION) -> str:
    """The user message: an optional worked example, the question, and the task's instruction if it has one."""
    parts = []
    if exemplar is not None:
        steps = f"{exemplar.solution}\n" if exemplar.solution else ""
        parts.append(f"Example:\n{exemplar.question}\n{steps}Answer: {exemplar.answer}\n")
    parts.append(question)
    if instruction:
        parts.append(instruction)
    return "\n".join(parts)


def split_items(
    items: list[RawItem], *, prefix: str, train_size: int, eval_size: int, seed: int, one_shot: bool, source: str,
    instruction: str | None = ANSWER_INSTRUCTION,
) -> Split:
    """De-duplicate by question, order by a seeded hash, and cut into exemplar / held-out / train."""
    unique: dict[str, RawItem] = {}
    for item in items:
        unique.setdefault(item.question.strip(), item)
    need = train_size + eval_size + (1 if one_shot else 0)
    if len(unique) < need:
        raise UserError(
            f"{source}: has {len(unique)} distinct problems, but train_size + eval_size"
            f"{' + 1 exemplar' if one_shot else ''} = {need}"
        )

    def key(q: str) -> str:
        return hashlib.sha256(f"{seed}\x00{q}".encode()).hexdigest()

    ordered = [unique[q] for q in sorted(unique, key=key)]
    exemplar = ordered.pop(0) if one_shot else None
    heldout = [to_problem(prefix, i, exemplar, instruction) for i in ordered[:eval_size]]
    train = [to_problem(prefix, i, exemplar, instruction) for i in ordered[eval_size : eval_size + train_size]]
    first = to_problem(prefix, exemplar, None, instruction) if exemplar else None
    return Split(train=train, heldout=heldout, exemplar=first)


def to_problem(prefix: str, item: RawItem, exemplar: RawItem | None, instruction: str | None = ANSWER_INSTRUCTION
               ) -> Problem:
    meta = {"question": item.question, **item.meta}
    if item.solution is not None:
        meta["solution"] = item.solution
    return Problem(
        id=problem_id(prefix, item.question),
        prompt=render_prompt(item.question, exemplar, instruction),
        reference=item.answer,
        meta=meta,
    )


def exemplar_item(problem: Problem) -> RawItem:
    """The RawItem a frozen exemplar Problem was made from, to render new prompts the same way."""
    meta = dict(problem.meta)
    question, solution = meta.pop("question", problem.prompt), meta.pop("solution", None)
    return RawItem(question=question, answer=problem.reference, meta=meta, solution=solution)
