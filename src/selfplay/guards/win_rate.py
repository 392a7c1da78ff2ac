"""Win rate of iteration N's answers against iteration 0's, judged by a model that is never trained.

With no gold checker, a judge's rising scores mean little on their own: the model being trained is also
the judge. A fixed evaluator (the frozen starting model) compares each held-out answer of iteration N with
iteration 0's answer to the same prompt, in both orders (`PairwiseJudge`); a split decision is a tie.

Judges prefer longer answers, and self-training lengthens them, so the win rate is also given length
controlled, in the spirit of AlpacaEval-LC (Dubois et al., 2024): a logistic regression of the outcome on
the standardised length difference, read at a length difference of zero. The gap between the two says how
much of the win is length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def win_rate(outcomes: Sequence[str]) -> float | None:
    """(wins + ties / 2) / n over outcomes 'a' (the new answer won), 'b', 'tie'."""
    if not outcomes:
        return None
    return (sum(o == "a" for o in outcomes) + 0.5 * sum(o == "tie" for o in outcomes)) / len(outcomes)


def length_controlled(outcomes: Sequence[str], len_a: Sequence[int], len_b: Sequence[int]) -> float | None:
    """The win rate a logistic model of outcome ~ length difference predicts when both answers are equally long.

    A tie counts as half a win and half a loss; the length difference is scaled by its standard deviation and
    squashed with tanh (as AlpacaEval-LC does), so a few very long answers do not dominate the fit.
    """
    n = len(outcomes)
    if n < 2:
        return None
    diffs = [a - b for a, b in zip(len_a, len_b, strict=True)]
    sd = math.sqrt(sum(d * d for d in diffs) / n) or 1.0
    xs = [math.tanh(d / sd) for d in diffs]
    ys = [1.0 if o == "a" else 0.5 if o == "tie" else 0.0 for o in outcomes]
    w0 = w1 = 0.0
    for _ in range(50):  # Newton's method on the (lightly L2-regularised) log-likelihood
        g0 = g1 = h00 = h01 = h11 = 0.0
        for x, y in zip(xs, ys, strict=True):
            p = 1 / (1 + math.exp(-(w0 + w1 * x)))
            g0 += y - p
            g1 += (y - p) * x
            v = p * (1 - p)
            h00 += v
            h01 += v * x
            h11 += v * x * x
        g0 -= 1e-3 * w0
        g1 -= 1e-3 * w1
        h00 += 1e-3
        h11 += 1e-3
        det = h00 * h11 - h01 * h01
        if det <= 1e-12:
            break
        d0 = (h11 * g0 - h01 * g1) / det
        d1 = (h00 * g1 - h01 * g0) / det
        w0, w1 = w0 + d0, w1 + d1
        if abs(d0) + abs(d1) < 1e-9:
            break
    return 1 / (1 + math.exp(-w0))


def summarize(outcomes: Sequence[str], len_a: Sequence[int], len_b: Sequence[int]) -> dict[str, Any]:
    return {
        "compared": len(outcomes),
        "wins": sum(o == "a" for o in outcomes),
        "losses": sum(o == "b" for o in outcomes),
        "ties": sum(o == "tie" for o in outcomes),
        "win_rate": win_rate(outcomes),
        "lc_win_rate": length_controlled(outcomes, len_a, len_b),
        "mean_length_new": sum(len_a) / len(len_a) if len_a else None,
        "mean_length_first": sum(len_b) / len(len_b) if len_b else None,
    }
