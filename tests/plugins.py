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
