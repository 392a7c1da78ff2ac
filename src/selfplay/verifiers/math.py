"""Check answers against the reference with math-verify (numbers, fractions, LaTeX, sets, intervals)."""

from __future__ import annotations

from selfplay.records import Problem, Sample, Verdict
from selfplay.verifiers.answer import extract_answer


def answers_match(reference: str, answer: str) -> bool:
    from math_verify import parse, verify

    gold, pred = parse(reference), parse(answer)
    if gold and pred:
        return bool(verify(gold, pred))
    # Not mathematics (a word, a name): fall back to an exact match, ignoring case and a leading article.
    return _word(reference) == _word(answer)


def _word(text: str) -> str:
    text = text.strip().rstrip(".").strip().casefold()
    first, _, rest = text.partition(" ")
    return rest if rest and first in ("the", "a", "an") else text


class MathVerifier:
    name = "math"

    def __init__(self, strict_format: bool = False):
        self.strict_format = strict_format

    def verify(self, problem: Problem, sample: Sample) -> Verdict:
        answer = extract_answer(sample.completion, self.strict_format)
        passed = answer is not None and answers_match(problem.reference, answer)
        return Verdict(
            sample_id=sample.id,
            problem_id=problem.id,
            score=1.0 if passed else 0.0,
            passed=passed,
            answer=answer,
            verifier=self.name,
        )
