"""Stop rules: after each evaluation, go on, stop, or roll back, and which iteration is the best so far.

The iteration cap always holds (config). The others are optional:
- plateau: no gain over the best for P iterations;
- degradation: the held-out metric falls more than `max_drop` below the best, or so far that its 95%
  interval's upper end is under the best value; or a control task falls `control_max_drop` below
  iteration 0 (forgetting); or, in a run trained on its own majority answers, the share of held-out problems
  whose sampled majority is confident and wrong grows `self_consistency_rise` past iteration 0's (the
  self-consistency ceiling); or people prefer the new answers less than `min_human_win_rate` in a blind
  evaluation (review.human_eval). On degradation the run stops (or rolls back to the best model), and the best
  iteration, not the last, is the one `selfplay export` hands out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from selfplay.config import StopConfig
from selfplay.results import CONFIDENTLY_WRONG, HUMAN_WIN_RATE, Decision


def best_iteration(rows: Sequence[dict[str, Any]], metric: str) -> int:
    """The iteration with the highest value of `metric` (the earliest on a tie)."""
    best = max(rows, key=lambda r: (r[metric], -r["iteration"]))
    return int(best["iteration"])


def decide(
    rows: Sequence[dict[str, Any]], cfg: StopConfig, max_iterations: int, alarms: Sequence[str] = (),
    stop_on_alarm: bool = False,
) -> Decision:
    """The decision after the last row of `rows` (one per evaluated iteration, oldest first)."""
    metric = cfg.metric
    current = rows[-1]
    i = int(current["iteration"])
    # An iteration people rejected in a blind evaluation is never the best one, whatever its figures say.
    best = best_iteration([r for r in rows if not people_reject(r, cfg)] or rows[:1], metric)
    by_iter = {int(r["iteration"]): r for r in rows}
    best_value = by_iter[best][metric]
    reasons: list[str] = []

    if i > 0 and best != i:
        drop = best_value - current[metric]
        if cfg.max_drop is not None and drop > cfg.max_drop:
            reasons.append(f"{metric} fell {drop:.1%} below the best (iteration {best}), more than {cfg.max_drop:.1%}")
        ci = current.get("greedy_ci95" if metric == "greedy_accuracy" else f"{metric}_ci95")
        if cfg.drop_beyond_ci and ci and ci[1] < best_value:
            reasons.append(
                f"{metric} {current[metric]:.1%} is below the best ({best_value:.1%}, iteration {best}) "
                f"beyond its 95% interval [{ci[0]:.1%}, {ci[1]:.1%}]"
            )
    if i > 0 and cfg.control_max_drop is not None:
        base_controls = rows[0].get("control", {})
        for name, acc in current.get("control", {}).items():
            if name in base_controls and base_controls[name] - acc > cfg.control_max_drop:
                reasons.append(
                    f"control task {name} fell from {base_controls[name]:.1%} to {acc:.1%} "
                    f"(more than {cfg.control_max_drop:.1%}): the model is forgetting"
                )
    reasons += self_consistency_ceiling(rows, cfg.self_consistency_rise)
    if i > 0 and people_reject(current, cfg):
        people, (lo, hi) = current[HUMAN_WIN_RATE], current[f"{HUMAN_WIN_RATE}_ci95"]
        beyond = ", the whole 95% interval below it" if cfg.human_beyond_ci else ""
        reasons.append(f"people preferred this iteration's answers {people:.0%} of the time in a blind evaluation "
                       f"(95% interval {lo:.0%}-{hi:.0%}), under stop.min_human_win_rate {cfg.min_human_win_rate:.0%}"
                       f"{beyond}")

    def decision(action: str, degraded: bool = False, why: Sequence[str] = ()) -> Decision:
        return Decision(action, i, best, metric, best_value, degraded, list(why))

    if reasons:
        return decision("rollback" if cfg.on_degrade == "rollback" and i < max_iterations else "stop", True, reasons)
    if alarms and stop_on_alarm:
        return decision("stop", why=[f"guard alarm: {a}" for a in alarms])
    if cfg.plateau is not None and i > 0:
        last_gain = 0
        value = rows[0][metric]
        for r in rows[1:]:
            if r[metric] > value + cfg.min_gain:
                value, last_gain = r[metric], int(r["iteration"])
        if i - last_gain >= cfg.plateau:
            return decision("stop", why=[f"plateau: no gain in {metric} for {i - last_gain} iteration(s)"])
    if i >= max_iterations:
        return decision("finish", why=[f"reached the {max_iterations}-iteration cap"])
    return decision("continue")


def people_reject(row: dict[str, Any], cfg: StopConfig) -> bool:
    """Did people prefer this iteration less than stop.min_human_win_rate (by its interval with human_beyond_ci)?"""
    rate = row.get(HUMAN_WIN_RATE)
    if cfg.min_human_win_rate is None or rate is None:
        return False
    lo, hi = row.get(f"{HUMAN_WIN_RATE}_ci95") or (rate, rate)
    return (hi if cfg.human_beyond_ci else rate) < cfg.min_human_win_rate


def self_consistency_ceiling(rows: Sequence[dict[str, Any]], rise: float | None) -> list[str]:
    """The stop reason when the held-out confidently-wrong share is `rise` above iteration 0's and still growing."""
    if rise is None or len(rows) < 2:
        return []
    now, prev, first = (r.get(CONFIDENTLY_WRONG) for r in (rows[-1], rows[-2], rows[0]))
    if now is None or prev is None or first is None or not (now - first > rise and now > prev):
        return []
    before = f"iteration 0: {first:.1%}" + (f", iteration {rows[-2]['iteration']}: {prev:.1%}" if len(rows) > 2 else "")
    return [f"self-consistency ceiling: {now:.1%} of held-out problems now have a confident wrong majority "
            f"({before}; rise allowed {rise:.1%}): training on its own majority is entrenching the model's errors"]
