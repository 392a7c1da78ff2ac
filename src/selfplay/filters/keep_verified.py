"""The rejection-sampling filter: keep verified-correct samples, drop repeats, cap the count per problem."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from selfplay.records import Example, Problem, Sample, Verdict


@dataclass
class FilterStats:
    samples: int = 0
    passed: int = 0
    truncated: int = 0  # passed, but cut off at the token cap: the model never finished them
    duplicates: int = 0
    over_cap: int = 0
    kept: int = 0
    problems: int = 0
    problems_solved: int = 0  # problems with at least one verified sample
    per_problem: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalize(text: str) -> str:
    """The text with its whitespace collapsed: two answers that differ only in spacing are the same answer."""
    return " ".join(text.split())


def keep_verified(
    problems: Sequence[Problem],
    samples: Sequence[Sample],
    verdicts: Sequence[Verdict],
    *,
    iteration: int,
    max_per_problem: int,
    dedupe: bool = True,
    drop_truncated: bool = True,
) -> tuple[list[Example], FilterStats]:
    """SFT examples from the samples that passed, in sample order, with per-problem counts."""
    by_id = {p.id: p for p in problems}
    passed = {v.sample_id for v in verdicts if v.passed}
    stats = FilterStats(samples=len(samples), passed=len(passed), problems=len(problems))
    seen: dict[str, set[str]] = defaultdict(set)
    kept_per: dict[str, int] = defaultdict(int)
    examples: list[Example] = []
    for s in samples:
        if s.id not in passed:
            continue
        if drop_truncated and s.finish_reason == "length":
            # Training on a cut-off completion teaches the model to ramble and never stop.
            stats.truncated += 1
            continue
        key = normalize(s.completion)
        if dedupe and key in seen[s.problem_id]:
            stats.duplicates += 1
            continue
        if kept_per[s.problem_id] >= max_per_problem:
            stats.over_cap += 1
            continue
        seen[s.problem_id].add(key)
        kept_per[s.problem_id] += 1
        examples.append(
            Example(
                id=f"it{iteration}/{s.id}",
                problem_id=s.problem_id,
                sample_id=s.id,
                prompt=by_id[s.problem_id].prompt,
                completion=s.completion,
                iteration=iteration,
                messages=by_id[s.problem_id].messages,
            )
        )
    stats.kept = len(examples)
    stats.problems_solved = len({v.problem_id for v in verdicts if v.passed})
    stats.per_problem = dict(kept_per)
    return examples, stats
