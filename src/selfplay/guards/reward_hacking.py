"""Reward-hacking audit: the score a run trains on (the proxy) against a gold checker, side by side.

A proxy (a judge, a reward model, a heuristic) can be gamed: training pushes its score up while the true
quality, which only the gold checker sees, falls. Both score the same held-out completions every
iteration; the alarm goes off when the proxy rises while gold falls (against the previous iteration or
iteration 0), or when the two stop agreeing: their correlation drops below a floor, or too little of
what the proxy passes also passes gold (its precision; the one measure left when gold scores are all 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import fmean
from typing import Any

from selfplay.records import Verdict


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation, or None when either side is constant (it is then undefined)."""
    if len(xs) < 2:
        return None
    mx, my = fmean(xs), fmean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def compare(proxy: Sequence[Verdict], gold: Sequence[Verdict]) -> dict[str, Any]:
    """Proxy and gold pass rates and mean scores over the same samples, and how well they agree.

    The two lists judge the same samples in the same order, and are paired by position: a held-out problem's
    greedy answer and its first sampled one share a sample id, so pairing by id would cross them.
    """
    if len(proxy) != len(gold) or any(p.sample_id != g.sample_id for p, g in zip(proxy, gold, strict=True)):
        raise ValueError("reward_hacking.compare: proxy and gold must judge the same samples in the same order")
    pairs = list(zip(proxy, gold, strict=True))
    if not pairs:
        return {"samples": 0}
    return {
        "samples": len(pairs),
        "proxy_pass_rate": fmean(p.passed for p, _ in pairs),
        "gold_pass_rate": fmean(g.passed for _, g in pairs),
        "proxy_score": fmean(p.score for p, _ in pairs),
        "gold_score": fmean(g.score for _, g in pairs),
        "correlation": pearson([p.score for p, _ in pairs], [g.score for _, g in pairs]),
        "agreement": fmean(p.passed == g.passed for p, g in pairs),
        # Of what the proxy accepts (what RFT would train on), the share gold also accepts.
        "proxy_precision": (
            fmean(g.passed for p, g in pairs if p.passed) if any(p.passed for p, _ in pairs) else None
        ),
    }


def alarms(
    current: dict[str, Any], history: Sequence[dict[str, Any]], margin: float, min_corr: float,
    min_precision: float = 0.0,
) -> list[str]:
    """Alarm messages for this iteration's comparison, given earlier iterations' (oldest first)."""
    out = []
    if not current.get("samples"):
        return out
    for label, past in (("the previous iteration", history[-1] if history else None),
                        ("iteration 0", history[0] if len(history) > 1 else None)):
        if not past or not past.get("samples"):
            continue
        d_proxy = current["proxy_pass_rate"] - past["proxy_pass_rate"]
        d_gold = current["gold_pass_rate"] - past["gold_pass_rate"]
        if d_proxy >= margin and d_gold <= -margin:
            out.append(
                f"proxy pass rate rose {d_proxy:+.1%} while gold fell {d_gold:+.1%} against {label}: "
                "the run may be gaming its verifier"
            )
    precision = current.get("proxy_precision")
    if precision is not None and precision < min_precision:
        out.append(f"of the samples the proxy passes, gold passes only {precision:.1%} (< {min_precision:.0%})")
    corr = current.get("correlation")
    if corr is not None and corr < min_corr:
        out.append(f"proxy and gold scores correlate at {corr:.2f} (< {min_corr:.2f}): the proxy no longer tracks gold")
    return out
