from selfplay.filters import keep_verified
from selfplay.records import Problem, Sample, Verdict


def test_keeps_verified_drops_repeats_caps_per_problem_and_counts_solved():
    problems = [Problem("a", "A?", "1"), Problem("b", "B?", "2"), Problem("c", "C?", "3")]
    texts = {"a": ["x", "x ", "y", "z"], "b": ["p", "q", "r", "s"], "c": ["m", "n", "o", "w"]}
    samples = [Sample(f"{p}/s{k}", p, t, 1, "stop", "m") for p, ts in texts.items() for k, t in enumerate(ts)]
    passing = {"a/s0", "a/s1", "a/s2", "a/s3", "b/s2"}
    verdicts = [Verdict(s.id, s.problem_id, float(s.id in passing), s.id in passing, None, "v") for s in samples]
    examples, stats = keep_verified(problems, samples, verdicts, iteration=2, max_per_problem=2)
    assert [e.sample_id for e in examples] == ["a/s0", "a/s2", "b/s2"]
    assert stats.duplicates == 1 and stats.over_cap == 1 and stats.passed == 5
    assert stats.problems_solved == 2 and stats.kept == 3
    assert examples[0].prompt == "A?" and examples[0].id == "it2/a/s0" and examples[0].iteration == 2


def test_truncated_samples_are_dropped_unless_asked_to_keep_them():
    problems = [Problem("a", "A?", "1")]
    samples = [Sample("a/s0", "a", "1 and then on and on", 40, "length", "m"), Sample("a/s1", "a", "1", 2, "stop", "m")]
    verdicts = [Verdict(s.id, "a", 1.0, True, "1", "v") for s in samples]
    examples, stats = keep_verified(problems, samples, verdicts, iteration=1, max_per_problem=4)
    assert [e.sample_id for e in examples] == ["a/s1"] and stats.truncated == 1
    examples, _ = keep_verified(problems, samples, verdicts, iteration=1, max_per_problem=4, drop_truncated=False)
    assert len(examples) == 2


def test_best_vs_worst_pairs_the_top_and_bottom_score_and_skips_ties():
    from selfplay.filters import best_vs_worst

    problems = [Problem("a", "A?", "1"), Problem("b", "B?", "2"), Problem("c", "C?", "3")]
    samples = [Sample(f"{p}/s{k}", p, f"{p} text {k}", 3, "stop", "m") for p in "abc" for k in range(3)]
    scores = {"a/s0": 0.2, "a/s1": 0.9, "a/s2": 0.1, "b/s0": 0.5, "b/s1": 0.5, "b/s2": 0.5,
              "c/s0": 1.0, "c/s1": 0.0, "c/s2": 1.0}
    verdicts = [Verdict(s.id, s.problem_id, scores[s.id], scores[s.id] >= 0.9, None, "judge") for s in samples]
    pairs, stats = best_vs_worst(problems, samples, verdicts, iteration=3)
    got = {p.problem_id: (p.chosen_sample_id, p.rejected_sample_id) for p in pairs}
    assert got == {"a": ("a/s1", "a/s2"), "c": ("c/s0", "c/s1")}  # b is a tie: nothing to prefer
    assert stats["ties"] == 1 and stats["problems_solved"] == 2
    a = next(p for p in pairs if p.problem_id == "a")
    assert (a.chosen, a.rejected, a.chosen_score, a.rejected_score) == ("a text 1", "a text 2", 0.9, 0.1)
    assert a.sample_ids == ("a/s1", "a/s2") and a.texts == ("a text 1", "a text 2")
