"""Short factual answers: pass when the reference appears as a whole word in the stated answer.

Small models answer "What is the capital of France?" with "The capital of France is Paris." rather than
an `Answer:` line, so the stated answer is the `Answer:` line (or `\\boxed{}`) when there is one, else the
completion's first line. Meant for control tasks that watch for forgetting, not for training signals: a
completion that lists several candidates passes if one of them is right.
"""

from __future__ import annotations

import re

from selfplay.records import Problem, Sample, Verdict
from selfplay.verifiers.answer import extract_answer


class ContainsVerifier:
    name = "contains"

    def __init__(self, strict_format: bool = False):
        self.strict_format = strict_format

    def verify(self, problem: Problem, sample: Sample) -> Verdict:
        stated = extract_answer(sample.completion, strict=True)
        if stated is None and not self.strict_format:
            stated = next((line.strip() for line in sample.completion.splitlines() if line.strip()), None)
        pattern = r"(?<!\w)" + re.escape(problem.reference.strip()) + r"(?!\w)"
        passed = stated is not None and re.search(pattern, stated, re.IGNORECASE) is not None
        return Verdict(sample.id, problem.id, float(passed), passed, stated, self.name)
