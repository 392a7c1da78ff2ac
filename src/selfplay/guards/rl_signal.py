"""Online RL's own failure signs, read from an iteration's per-step figures (rl-steps.jsonl, trl's names).

- **No signal.** A group whose completions all get the same reward has zero advantage and gives no gradient.
  When most groups are like that (every completion cut at the token cap and scored 0, a task far too hard or
  too easy), the loss is silently about 0 and the policy does not move (trl#5697: frac_reward_zero_std = 1).
- **Entropy collapse.** The policy's token entropy falling to a small share of where the iteration began:
  it has stopped exploring, and pass@k at large k falls with it.
- **Everything truncated.** Every completion hits the cap: the reward reads cut-off text.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from selfplay.results import GuardResult

STEPS_FILE = "rl-steps.jsonl"  # in an iteration folder: one line per policy update, trl's figures and gold's


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _series(steps: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [float(s[key]) for s in steps if s.get(key) is not None]


def summarize(steps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The figures of an iteration's RL stage: first and last reward, gold, KL and entropy, and the averages."""
    out: dict[str, Any] = {"steps": len(steps)}
    for key, name in (("reward", "reward"), ("gold", "gold"), ("kl", "kl"), ("entropy", "entropy"),
                      ("completions/mean_length", "length")):
        values = _series(steps, key)
        if values:
            out[f"{name}_first"], out[f"{name}_last"] = values[0], values[-1]
    for key, name in (("frac_reward_zero_std", "zero_spread_share"), ("completions/clipped_ratio", "truncated_share"),
                      ("clip_ratio/region_mean", "clip_ratio")):
        value = _mean(_series(steps, key))
        if value is not None:
            out[name] = value
    return out


def audit(steps: Sequence[dict[str, Any]], min_signal: float, min_entropy_ratio: float) -> GuardResult:
    """Alarms for an iteration whose updates carried little gradient, or whose entropy collapsed."""
    if not steps:
        return GuardResult("n/a", notes=["no RL steps in this iteration"])
    figures = summarize(steps)
    alarms: list[str] = []
    zero = figures.get("zero_spread_share")
    if zero is not None and 1.0 - zero < min_signal:
        cause = ""
        if figures.get("truncated_share", 0.0) >= 0.99:
            cause = ": every completion was cut at the token cap (raise generate.max_new_tokens)"
        alarms.append(f"only {1.0 - zero:.0%} of groups had any reward spread (< {min_signal:.0%}), so most updates "
                      f"carried no gradient{cause}")
    elif figures.get("truncated_share", 0.0) >= 0.99:
        alarms.append("every completion was cut at the token cap: the rewards read cut-off text "
                      "(raise generate.max_new_tokens)")
    first, last = figures.get("entropy_first"), figures.get("entropy_last")
    if first and last is not None and last < min_entropy_ratio * first:
        alarms.append(f"entropy collapsed from {first:.3f} to {last:.3f} (< {min_entropy_ratio:.0%} of the first "
                      "step's): the policy has stopped exploring")
    notes = []
    if "kl_last" not in figures:
        notes.append("KL to the start model is not measured (rl.beta: 0 loads no reference model)")
    return GuardResult("alarm" if alarms else "ok", alarms, notes, figures)


def _smooth(values: Sequence[float], window: int) -> list[float]:
    return [sum(values[max(0, k - window + 1): k + 1]) / len(values[max(0, k - window + 1): k + 1])
            for k in range(len(values))]


def overoptimisation(steps: Sequence[dict[str, Any]], margin: float, window: int = 3, z: float = 3.0) -> tuple[
        dict[str, Any], str | None]:
    """Goodhart within an iteration: gold (the checker's pass rate on the rollouts) past its peak and falling while
    the proxy (the summed reward the policy climbs) still rises. Both are smoothed over `window` updates.

    The fall must pass `margin` and, where the steps say how many rollouts each pass rate counts (`gold_n`), `z`
    standard errors of the difference of the two windows' pass rates. The peak is the best of many noisy windows, so
    even a flat curve shows a fall of one or two standard errors from it; three keeps false alarms rare (about 2% on
    a flat curve of 40 updates), and a run with few rollouts per update is told its fall is inside the noise.

    An update's rollouts are not independent: its completions of one request pass or fail together, and requests
    differ in difficulty. Where the steps keep each request's pass rate (`gold_by_request`), a window's variance is
    also estimated from those rates (their variance over their count), and the larger of the two is used; with few
    requests per update that is the honest one.
    """
    pts = [(int(s["step"]), float(s["reward"]), float(s["gold"]), s.get("gold_n"), s.get("gold_by_request"))
           for s in steps if s.get("reward") is not None and s.get("gold") is not None]
    if len(pts) < 2 * window:
        return {}, None
    proxy, gold = _smooth([p[1] for p in pts], window), _smooth([p[2] for p in pts], window)
    peak = max(range(len(gold)), key=lambda k: gold[k])
    figures: dict[str, Any] = {"gold_peak_step": pts[peak][0], "gold_peak": gold[peak], "gold_end": gold[-1],
                               "proxy_at_gold_peak": proxy[peak], "proxy_end": proxy[-1]}
    drop, rise = gold[peak] - gold[-1], proxy[-1] - proxy[peak]
    noise = None
    if all(p[3] for p in pts):
        at_peak, at_end = pts[max(0, peak - window + 1): peak + 1], pts[-window:]
        n_peak, n_end = sum(p[3] for p in at_peak), sum(p[3] for p in at_end)
        var_peak, var_end = gold[peak] * (1 - gold[peak]) / n_peak, gold[-1] * (1 - gold[-1]) / n_end
        by_request = [[r for p in w for r in p[4]] if all(p[4] for p in w) else [] for w in (at_peak, at_end)]
        if all(len(rates) >= 2 for rates in by_request):
            var_peak = max(var_peak, statistics.variance(by_request[0]) / len(by_request[0]))
            var_end = max(var_end, statistics.variance(by_request[1]) / len(by_request[1]))
            figures["gold_noise_from"] = "requests"
        noise = figures["gold_drop_noise"] = z * max(var_peak + var_end, 0.25 / (n_peak + n_end)) ** 0.5
    if drop >= margin and rise > 0:
        if noise is not None and drop < noise:
            figures["note"] = (f"gold fell {drop:.1%} from its peak at update {pts[peak][0]} while the proxy rose, "
                               f"inside the noise of its rollouts ({noise:.1%} = {z:g} standard errors); more "
                               "requests and rollouts per update (rl.prompts_per_step, rl.num_generations) resolve "
                               "smaller falls")
            return figures, None
        return figures, (f"over-optimisation: after update {pts[peak][0]} the gold pass rate on the rollouts fell "
                         f"{drop:.1%} from its peak ({gold[peak]:.1%} to {gold[-1]:.1%}) while the proxy reward still "
                         f"rose by {rise:.3f}: the policy is exploiting the proxy")
    return figures, None
