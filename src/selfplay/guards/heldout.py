"""Held-out metrics: greedy accuracy and pass@k with 95% confidence intervals, and completion length.

Pure functions over Samples and Verdicts, so the same numbers come out whichever backend sampled them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from statistics import fmean, pstdev
from typing import Any

from selfplay.records import Sample, Verdict

Z95 = 1.959964


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion; sound at 0% and 100% unlike the normal one."""
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """95% normal-approximation interval for the mean of per-problem values."""
    if not values:
        return (0.0, 0.0)
    m = fmean(values)
    half = Z95 * pstdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return (max(0.0, m - half), min(1.0, m + half))


def greedy_metrics(
    samples: Sequence[Sample], verdicts: Sequence[Verdict], stated: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """Greedy accuracy with its interval, answer rate, length and truncation of one set.

    `stated` says per sample whether it gives its answer in the form the prompt asks for; the answer rate is
    their share (without it: the share of verdicts that found any answer).
    """
    correct = sum(v.passed for v in verdicts)
    n = len(verdicts)
    lo, hi = wilson_interval(correct, n)
    answered = sum(stated) if stated is not None else sum(v.answer is not None for v in verdicts)
    return {
        "problems": n,
        "greedy_accuracy": correct / n if n else 0.0,
        "greedy_ci95": [lo, hi],
        "answer_rate": answered / n if n else 0.0,
        "mean_length": fmean(s.num_tokens for s in samples) if samples else 0.0,
        "truncated_rate": sum(s.finish_reason == "length" for s in samples) / len(samples) if samples else 0.0,
    }


def sampled_metrics(verdicts: Sequence[Verdict], k: int | Sequence[int]) -> dict[str, Any]:
    """pass@k for each k (the unbiased estimator over each problem's samples) with its interval, and the share
    of samples that pass."""
    per_problem: dict[str, list[bool]] = defaultdict(list)
    for v in verdicts:
        per_problem[v.problem_id].append(v.passed)
    out: dict[str, Any] = {}
    for kk in ([k] if isinstance(k, int) else k):
        scores = [pass_at_k(len(r), sum(r), kk) for r in per_problem.values()]
        lo, hi = mean_interval(scores)
        out[f"pass@{kk}"] = fmean(scores) if scores else 0.0
        out[f"pass@{kk}_ci95"] = [lo, hi]
    out["sample_accuracy"] = fmean(v.passed for v in verdicts) if verdicts else 0.0
    return out
