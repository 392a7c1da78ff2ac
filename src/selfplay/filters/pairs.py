"""Preference pairs from scored samples: per problem, the best sample is chosen and the worst rejected.

This is the pair rule of Self-Rewarding LMs (Yuan et al., 2024): a problem gives a pair only when its
samples' scores differ by at least `min_gap`, so ties (all right, all wrong) teach nothing and are skipped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from selfplay.records import Pair, Problem, Sample, Verdict


def best_vs_worst(
    problems: Sequence[Problem], samples: Sequence[Sample], verdicts: Sequence[Verdict], *, iteration: int,
    min_gap: float = 1e-9, drop_truncated: bool = True,
) -> tuple[list[Pair], dict[str, Any]]:
    """One Pair per problem whose best and worst scores differ by at least `min_gap`, and counts of what was skipped."""
    by_id = {p.id: p for p in problems}
    score = {v.sample_id: v.score for v in verdicts}
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.problem_id].append(s)
    pairs: list[Pair] = []
    stats = {"samples": len(samples), "passed": sum(v.passed for v in verdicts), "problems": len(groups),
             "problems_solved": len({v.problem_id for v in verdicts if v.passed}), "ties": 0, "truncated": 0}
    for pid, group in groups.items():
        ranked = sorted(group, key=lambda s: -score[s.id])  # stable: the earliest sample wins a tie
        chosen, rejected = ranked[0], ranked[-1]
        if drop_truncated and chosen.finish_reason == "length":
            stats["truncated"] += 1
            continue
        if score[chosen.id] - score[rejected.id] < min_gap or chosen.completion == rejected.completion:
            stats["ties"] += 1
            continue
        problem = by_id[pid]
        pairs.append(Pair(
            id=f"it{iteration}/{pid}/pair", problem_id=pid, prompt=problem.prompt, chosen=chosen.completion,
            rejected=rejected.completion, chosen_sample_id=chosen.id, rejected_sample_id=rejected.id,
            chosen_score=score[chosen.id], rejected_score=score[rejected.id], iteration=iteration,
            messages=problem.messages,
        ))
    return pairs, stats
