"""Hidden labels (`task.labels: hidden`): the training problems the loop sees, with every answer taken out.

A hidden problem keeps its id, prompt and question; its reference becomes "" and the meta fields that carry the
answer go: a worked 'solution', a 'demonstration' (a written answer to learn from), code 'tests', and in a
reasoning-gym entry its 'answer' and any metadata field whose value is the answer (leg_counting's total_legs).
The rest of the entry stays, because reasoning-gym's scorer needs it to compare two candidate answers (the
majority verifier puts one of them where the answer was). The labelled originals are kept apart for the
pseudo-label audit only. Other fields of a user's JSONL line are the user's own and are kept.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from selfplay.records import Problem

LABEL_FIELDS = ("solution", "demonstration", "response", "answer", "tests", "check", "code", "solution_code")


def _hidden_entry(entry: dict[str, Any], answer: str) -> dict[str, Any]:
    metadata = {k: v for k, v in (entry.get("metadata") or {}).items()
                if k == "source_dataset" or not (isinstance(v, (str, int, float)) and str(v).strip() == answer.strip())}
    return {**entry, "answer": "", "metadata": metadata}


def hide_label(problem: Problem) -> Problem:
    """The problem with its answer and answer-carrying meta removed."""
    meta = {k: v for k, v in problem.meta.items() if k not in LABEL_FIELDS}
    if isinstance(meta.get("entry"), dict):
        meta["entry"] = _hidden_entry(meta["entry"], str(problem.meta["entry"].get("answer", problem.reference)))
    return replace(problem, reference="", meta=meta)


def hide_labels(problems: list[Problem]) -> list[Problem]:
    return [hide_label(p) for p in problems]


def has_labels(problems: list[Problem]) -> bool:
    """Whether any problem carries a reference answer, or a code task's tests (a file of prompts only has none)."""
    return any(p.reference.strip() or p.meta.get("tests") or p.meta.get("check") for p in problems)
