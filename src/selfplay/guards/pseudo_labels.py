"""The pseudo-label audit: a label-free run's majority answers, checked against labels it never trains on.

A run with `verify.verifier: majority` trains on the answers its own samples agree on. Whether that improves
the model or entrenches its errors shows only against gold, so with `task.labels: hidden` the run keeps the
answers apart and measures, every iteration (one row per problem, built in loop/pseudo_label_audit.py):

- accuracy: the share of training problems whose majority answer is right; over the confident ones (vote share
  at least `min_agreement`), and over the ones trained on;
- calibration: that accuracy by vote-share bin (BINS), to see whether agreement means correctness;
- entrenchment: of the problems whose confident majority was wrong and trained on at iteration i-1, how many
  the next iteration's majority fixes, how many keep the same wrong answer ('stayed'), and of those, how many
  now give it a larger share ('spread');
- the held-out majority: the share of held-out problems whose sampled majority is confident and wrong. When
  it grows, training on the majority is teaching the model its own mistakes: the self-consistency ceiling
  (a stop rule, stop.self_consistency_rise, in guards/stopping.py).

Pure functions over plain rows: nothing here reads a file or calls a checker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Vote-share bins (lower bound inclusive, upper exclusive; the last is a unanimous vote).
BINS: tuple[tuple[str, float, float], ...] = (
    ("<50%", 0.0, 0.5), ("50-75%", 0.5, 0.75), ("75-100%", 0.75, 1.0), ("100%", 1.0, 1.01),
)
MOSTLY_WRONG = 0.5  # trained-on pseudo-labels right less often than this raise an alarm


def _rate(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def accuracy(rows: Sequence[Mapping[str, Any]], min_agreement: float) -> dict[str, Any]:
    """Pseudo-label accuracy over the rows with a majority; counts of ties and problems with no readable answer."""
    voted = [r for r in rows if r["majority"] is not None]
    checked = [r for r in voted if r.get("correct") is not None]
    confident = [r for r in checked if r["share"] >= min_agreement]
    trained = [r for r in checked if r.get("trained")]
    return {
        "problems": len(rows),
        "with_majority": len(voted),
        "ties": sum(r["status"] == "tie" for r in rows),
        "unreadable": sum(r["status"] == "unreadable" for r in rows),
        "mean_share": sum(r["share"] for r in rows) / len(rows) if rows else None,
        "accuracy": _rate([r["correct"] for r in checked]),
        "confident": len(confident),
        "confident_accuracy": _rate([r["correct"] for r in confident]),
        "trained": len(trained),
        "trained_accuracy": _rate([r["correct"] for r in trained]),
    }


def calibration(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per vote-share bin: problems with a majority in it, and the share of them whose majority is right."""
    out = []
    for name, lo, hi in BINS:
        inside = [r for r in rows if r["majority"] is not None and lo <= r["share"] < hi]
        checked = [r["correct"] for r in inside if r.get("correct") is not None]
        out.append({"bin": name, "problems": len(inside), "accuracy": _rate(checked)})
    return out


def entrenchment(before: Sequence[Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]],
                 min_agreement: float) -> dict[str, Any]:
    """What became of the confident wrong majorities trained on at one iteration, at the next.

    `before`: the earlier iteration's rows. `after[problem_id]`: the next iteration's `correct` (is its majority
    right), `same` (is its majority the earlier wrong answer) and `earlier_share` (that wrong answer's share now).
    fixed: now right; stayed: the same wrong majority, of which spread: with a larger share than before;
    other: wrong in another way (another wrong answer, a tie, nothing readable).
    """
    watched = [r for r in before if r["majority"] is not None and r.get("correct") is False and r.get("trained")
               and r["share"] >= min_agreement and r["problem_id"] in after]
    fixed, stayed, spread = [], [], []
    for r in watched:
        now = after[r["problem_id"]]
        if now.get("correct"):
            fixed.append(r["problem_id"])
        elif now.get("same"):
            stayed.append(r["problem_id"])
            if now.get("earlier_share", 0.0) > r["share"]:
                spread.append(r["problem_id"])
    return {"wrong_trained": len(watched), "fixed": len(fixed), "stayed": len(stayed), "spread": len(spread),
            "other": len(watched) - len(fixed) - len(stayed), "spread_ids": spread}


def confidently_wrong(rows: Sequence[Mapping[str, Any]], min_agreement: float) -> dict[str, Any]:
    """Held-out: the share of problems whose sampled majority is confident and wrong, and of those it gets right."""
    checked = [r for r in rows if r.get("correct") is not None or r["majority"] is None]
    confident = [r for r in checked if r["majority"] is not None and r["share"] >= min_agreement]
    wrong = [r for r in confident if r["correct"] is False]
    return {
        "problems": len(checked),
        "confident": len(confident),
        "confidently_wrong": len(wrong),
        "confidently_wrong_share": len(wrong) / len(checked) if checked else None,
        "majority_accuracy": _rate([r["correct"] for r in checked if r["majority"] is not None]),
    }


def alarms(train: Mapping[str, Any] | None, iteration: int) -> list[str]:
    """A plain alarm when most of what the iteration trained on is wrong."""
    if not train or train.get("trained_accuracy") is None or train["trained_accuracy"] >= MOSTLY_WRONG:
        return []
    return [f"of the {train['trained']} training problems whose majority answer iteration {iteration} trained on, "
            f"only {train['trained_accuracy']:.0%} are right by the hidden labels: the run is training the model on "
            "its own mistakes"]
