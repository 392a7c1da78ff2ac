import math

import pytest

from selfplay.guards.heldout import greedy_metrics, pass_at_k, sampled_metrics, wilson_interval
from selfplay.records import Sample, Verdict


def test_pass_at_k_matches_the_closed_form():
    assert pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))  # 0.5
    assert pass_at_k(8, 2, 1) == pytest.approx(0.25)


def test_wilson_interval_brackets_the_estimate():
    lo, hi = wilson_interval(20, 100)
    assert lo < 0.2 < hi and hi - lo == pytest.approx(0.159, abs=0.005)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 10)[1] > 0.0


def test_metrics_from_records():
    samples = [Sample(f"p{i}/s0", f"p{i}", "x", 10 * (i + 1), "stop", "m") for i in range(4)]
    verdicts = [Verdict(s.id, s.problem_id, float(i < 1), i < 1, "1" if i < 3 else None, "v")
                for i, s in enumerate(samples)]
    m = greedy_metrics(samples, verdicts)
    assert m["greedy_accuracy"] == 0.25 and m["answer_rate"] == 0.75 and m["mean_length"] == 25.0
    sampled = [Verdict(f"p{p}/s{k}", f"p{p}", 0.0, p == 0 and k == 0, None, "v") for p in range(2) for k in range(2)]
    s = sampled_metrics(sampled, 2)
    assert s["pass@2"] == 0.5 and s["sample_accuracy"] == 0.25
