"""The model's own majority as the verifier (LMSI, Huang et al. 2022; TTRL, Zuo et al. 2025): no labels needed.

The k samples of a problem vote. Each sample's answer is read with the task's answer reader
(`extract_answer`), answers are grouped into classes by the task's notion of equal (math-verify for maths,
reasoning-gym's own scorer for its tasks, normalised text otherwise), and the largest class is the majority.
A sample passes when it is in the majority and the majority's vote share (class size / samples of the problem,
unreadable ones counted) is at least `min_agreement`. A tie for the largest class is no majority: every
sample of that problem fails, as does an unreadable one. Each verdict's details say why:

    {"majority": "12", "share": 0.75, "votes": 6, "samples": 8, "status": "majority"}
    status: majority | minority | tie | unreadable | below_agreement

It never reads a reference answer: with reasoning-gym's scorer, the entry's answer is replaced by the class's
first answer before comparing. What it does not do: tell a right majority from a wrong one. That is the
pseudo-label audit's job (guards/pseudo_labels.py), with labels the run never trains on.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from selfplay.errors import UserError
from selfplay.records import Problem, Sample, Verdict
from selfplay.verifiers.answer import extract_answer
from selfplay.verifiers.math import answers_match

NAME = "majority"
EQUALS = ("auto", "math", "reasoning_gym", "text")
Equal = Callable[[Problem, str, str], bool]  # (problem, representative, candidate) -> same answer?


def normalize_text(answer: str) -> str:
    """An answer compared as text: case, spacing, a trailing period and a leading article do not count."""
    text = " ".join(answer.casefold().split()).rstrip(".").strip()
    first, _, rest = text.partition(" ")
    return rest if rest and first in ("the", "a", "an") else text


def _text_equal(problem: Problem, a: str, b: str) -> bool:
    return normalize_text(a) == normalize_text(b)


def _math_equal(problem: Problem, a: str, b: str) -> bool:
    return answers_match(a, b)


def _rg_equal(problem: Problem, a: str, b: str) -> bool:
    from reasoning_gym import get_score_answer_fn

    entry = problem.meta["entry"]
    # The scorer checks `b` against the entry's answer: put the candidate class's answer there (never the label).
    return float(get_score_answer_fn(entry["metadata"]["source_dataset"])(b, {**entry, "answer": a})) >= 1.0


EQUALITY: dict[str, Equal] = {"math": _math_equal, "reasoning_gym": _rg_equal, "text": _text_equal}


@dataclass
class Vote:
    """One problem's vote: the answer classes (largest first) and what each sample said."""

    answers: list[str | None]  # per sample, as read
    classes: list[list[int]]  # indices into `answers`, one list per class of equal answers
    samples: int

    @property
    def majority(self) -> list[int] | None:
        """The largest class, or None on a tie for the largest (or when nothing could be read)."""
        if not self.classes or (len(self.classes) > 1 and len(self.classes[1]) == len(self.classes[0])):
            return None
        return self.classes[0]

    @property
    def tie(self) -> bool:
        return bool(self.classes) and self.majority is None

    @property
    def share(self) -> float:
        top = self.majority
        return len(top) / self.samples if top and self.samples else 0.0

    @property
    def answer(self) -> str | None:
        top = self.majority
        return self.answers[top[0]] if top else None


class MajorityVerifier:
    """A batch verifier over the k samples of each problem; see the module docstring.

    `verify(problem, sample)` alone is a vote of one: a readable answer is its own majority with share 1.0.
    `equal` picks how answers are compared: 'auto' follows the task's own checker (`task_default`).
    """

    name = NAME

    def __init__(self, strict_format: bool = False, min_agreement: float = 0.5, equal: str = "auto",
                 task_default: str = "text"):
        if isinstance(min_agreement, bool) or not isinstance(min_agreement, (int, float)) or not (
                0.0 <= min_agreement <= 1.0):
            raise UserError(f"verify.options.min_agreement: a vote share from 0 to 1 (got {min_agreement!r})")
        if equal not in EQUALS:
            raise UserError(f"verify.options.equal: one of {', '.join(EQUALS)} (got {equal!r})")
        self.strict_format = strict_format
        self.min_agreement = float(min_agreement)
        self.equal_name = (task_default if task_default in EQUALITY else "text") if equal == "auto" else equal
        self._equal = EQUALITY[self.equal_name]

    def same(self, problem: Problem, a: str, b: str) -> bool:
        """Whether two answers to `problem` are the same answer, by this verifier's notion of equal."""
        return normalize_text(a) == normalize_text(b) or self._equal(problem, a, b)

    def read(self, sample: Sample) -> str | None:
        return extract_answer(sample.completion, self.strict_format)

    def vote(self, problem: Problem, samples: Sequence[Sample]) -> Vote:
        """Group the samples' answers into classes of equal answers, largest first (first seen first on a tie)."""
        answers = [self.read(s) for s in samples]
        classes: list[list[int]] = []
        by_text: dict[str, int] = {}  # an answer already seen, as text, joins its class without a comparison
        for n, answer in enumerate(answers):
            if answer is None:
                continue
            key = normalize_text(answer)
            found = by_text.get(key)
            if found is None:
                found = next((c for c, members in enumerate(classes)
                              if self._equal(problem, answers[members[0]], answer)), None)
            if found is None:
                classes.append([])
                found = len(classes) - 1
            classes[found].append(n)
            by_text[key] = found
        classes.sort(key=len, reverse=True)  # stable: equal sizes keep the order first seen
        return Vote(answers, classes, len(samples))

    def verify_group(self, problem: Problem, samples: Sequence[Sample],
                     voters: Sequence[Sample] | None = None) -> list[Verdict]:
        """Verdicts for all samples of one problem, judged by their own vote, or by `voters`' vote when given.

        Against `voters` (a held-out problem's sampled answers), a sample passes when its answer equals the
        voters' confident majority; it is not itself a vote.
        """
        vote = self.vote(problem, samples if voters is None else voters)
        top = vote.majority
        in_top = set(top or []) if voters is None else None
        out = []
        for n, s in enumerate(samples):
            answer = vote.answers[n] if voters is None else self.read(s)
            if answer is None:
                status = "unreadable"
            elif top is None:
                status = "tie" if vote.tie else "minority"
            elif not (n in in_top if in_top is not None else self.same(problem, vote.answer, answer)):
                status = "minority"
            elif vote.share < self.min_agreement:
                status = "below_agreement"
            else:
                status = "majority"
            passed = status == "majority"
            details: dict[str, Any] = {"majority": vote.answer, "share": vote.share, "votes": len(top or []),
                                       "samples": vote.samples, "status": status}
            out.append(Verdict(s.id, problem.id, 1.0 if passed else 0.0, passed, answer, self.name, details=details))
        return out

    def verify_many(self, items: Sequence[tuple[Problem, Sample]]) -> list[Verdict]:
        """Verdicts in input order; the samples of each problem (by id) vote together, wherever they sit in `items`."""
        groups: dict[str, list[int]] = defaultdict(list)
        for n, (problem, _) in enumerate(items):
            groups[problem.id].append(n)
        out: list[Verdict | None] = [None] * len(items)
        for indices in groups.values():
            problem = items[indices[0]][0]
            for n, v in zip(indices, self.verify_group(problem, [items[n][1] for n in indices]), strict=True):
                out[n] = v
        return [v for v in out if v is not None]

    def verify(self, problem: Problem, sample: Sample) -> Verdict:
        """A vote of one (see the class docstring); the verify stage always hands over whole problems."""
        return self.verify_group(problem, [sample])[0]
