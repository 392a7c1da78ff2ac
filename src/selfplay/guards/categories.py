"""Persistent failures: accuracy per category of problem, and problems no iteration has solved yet.

Overall accuracy can rise while one class of problems stays wrong (a self-consistency ceiling: the model
cannot learn from samples it never gets right). Per-category accuracy makes that ceiling visible.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from selfplay.guards.heldout import wilson_interval
from selfplay.records import Problem, Verdict


def per_category(problems: Sequence[Problem], verdicts: Sequence[Verdict]) -> dict[str, dict[str, Any]]:
    """Greedy accuracy and its 95% interval per problem category (problems without one are 'all')."""
    category = {p.id: str(p.meta.get("category", "all")) for p in problems}
    tally: dict[str, list[bool]] = defaultdict(list)
    for v in verdicts:
        tally[category.get(v.problem_id, "all")].append(v.passed)
    out = {}
    for name in sorted(tally):
        results = tally[name]
        out[name] = {
            "problems": len(results),
            "accuracy": sum(results) / len(results),
            "ci95": list(wilson_interval(sum(results), len(results))),
        }
    return out


def never_solved(history: Sequence[set[str]], problem_ids: Sequence[str]) -> list[str]:
    """Problems that no evaluated iteration answered correctly; `history` holds each iteration's solved ids."""
    solved = set().union(*history) if history else set()
    return [pid for pid in problem_ids if pid not in solved]


def stuck_categories(
    current: dict[str, dict[str, Any]], first: dict[str, dict[str, Any]], min_gain: float = 0.0
) -> list[str]:
    """Categories whose accuracy has not risen above iteration 0's."""
    return [
        name for name, c in current.items()
        if name in first and c["accuracy"] <= first[name]["accuracy"] + min_gain
    ]
