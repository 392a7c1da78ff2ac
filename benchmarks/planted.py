"""Planted faults for benchmarks/guards.py: verifiers that a guard must see through.

Not part of the library: they exist to prove that the guards trip on a real model.
"""

from selfplay.errors import UserError
from selfplay.records import Problem, Sample, Verdict


class LongAnswerProxy:
    """A gamed reward: passes any completion of 16 tokens or more that ends on its own, right or wrong.

    verify.options `min_tokens` (16) and `must_stop` (true) set the rule; `guards.py --smoke` lowers it for the
    tiny random model, whose answers never end before the cap.
    """

    name = "long-answer-proxy"

    def __init__(self, options: dict, run):
        unknown = sorted(set(options) - {"min_tokens", "must_stop"})
        if unknown:
            raise UserError(f"verify.options: {self.name} takes min_tokens and must_stop, not {', '.join(unknown)}")
        self.min_tokens = int(options.get("min_tokens", 16))
        self.must_stop = bool(options.get("must_stop", True))

    def verify(self, problem: Problem, sample: Sample) -> Verdict:
        passed = sample.num_tokens >= self.min_tokens and (sample.finish_reason == "stop" or not self.must_stop)
        return Verdict(sample.id, problem.id, float(passed), passed, None, self.name)
