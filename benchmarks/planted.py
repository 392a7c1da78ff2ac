"""Planted faults for benchmarks/guards.py: verifiers that a guard must see through.

Not part of the library: they exist to prove that the guards trip on a real model.
"""

from selfplay.records import Problem, Sample, Verdict


class LongAnswerProxy:
    """A gamed reward: passes any completion of 16 tokens or more that ends on its own, right or wrong."""

    name = "long-answer-proxy"

    def __init__(self, options: dict, run):
        pass

    def verify(self, problem: Problem, sample: Sample) -> Verdict:
        passed = sample.num_tokens >= 16 and sample.finish_reason == "stop"
        return Verdict(sample.id, problem.id, float(passed), passed, None, self.name)
