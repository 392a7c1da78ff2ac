"""Check answers with reasoning-gym's own scorer for the dataset a problem came from."""

from __future__ import annotations

from selfplay.records import Problem, Sample, Verdict
from selfplay.verifiers.answer import extract_answer


class ReasoningGymVerifier:
    name = "reasoning_gym"

    def __init__(self, strict_format: bool = False):
        self.strict_format = strict_format

    def verify(self, problem: Problem, sample: Sample) -> Verdict:
        from reasoning_gym import get_score_answer_fn

        entry = problem.meta["entry"]
        answer = extract_answer(sample.completion, self.strict_format)
        score = 0.0
        if answer is not None:
            score = float(get_score_answer_fn(entry["metadata"]["source_dataset"])(answer, entry))
        return Verdict(
            sample_id=sample.id,
            problem_id=problem.id,
            score=score,
            passed=score >= 1.0,
            answer=answer,
            verifier=self.name,
        )
