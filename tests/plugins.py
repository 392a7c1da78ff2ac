"""A user-side verifier plugin, loaded by 'module:attr' the way a user's own would be.

A randomly initialised model never writes a correct answer, so loop tests pass the first sample of
each problem: a real verifier object through the real plugin path, with a result tests can predict.
"""

from selfplay.records import Problem, Sample, Verdict


class PassFirst:
    name = "pass-first"

    def verify(self, problem: Problem, sample: Sample) -> Verdict:
        passed = sample.id.endswith("/s0")
        return Verdict(sample.id, problem.id, float(passed), passed, None, self.name)


class LengthProxy:
    """A planted reward hack: passes any completion of at least 5 tokens, whatever it says."""

    name = "length-proxy"

    def verify(self, problem: Problem, sample: Sample) -> Verdict:
        passed = sample.num_tokens >= 5
        return Verdict(sample.id, problem.id, float(passed), passed, None, self.name)


class BestAtIterationOne:
    """A gold checker that scores iteration 1's model perfect and every other model zero.

    It stands in for a run whose quality peaks and then degrades, which a random model cannot do on its own.
    """

    name = "best-at-1"

    def verify(self, problem: Problem, sample: Sample) -> Verdict:
        passed = "iter-001" in sample.model
        return Verdict(sample.id, problem.id, float(passed), passed, None, self.name)
