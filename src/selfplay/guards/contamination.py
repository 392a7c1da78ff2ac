"""Contamination audit: does any training example overlap an evaluation prompt?

As in the GPT-3 paper (Brown et al., 2020, appendix C), text is lower-cased and split into words, and a
training example is contaminated when it shares any n-gram (n = 13 by default) with an evaluation item.
An evaluation item shorter than n words counts as one gram, matched whole. Only the task content is
compared: the one-shot exemplar and the answer-format instruction are in every prompt by design.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from selfplay.records import TrainRecord

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


@dataclass
class ContaminationIndex:
    """The n-grams of every evaluation item, with the item each came from."""

    n: int = 13
    grams: dict[tuple[str, ...], str] = field(default_factory=dict)
    short: dict[tuple[str, ...], str] = field(default_factory=dict)  # items under n words, matched whole

    def add(self, item_id: str, text: str) -> None:
        tokens = words(text)
        if not tokens:
            return
        target = self.short if len(tokens) < self.n else self.grams
        for g in ngrams(tokens, self.n):
            target.setdefault(g, item_id)

    def match(self, text: str) -> str | None:
        """The id of an evaluation item that `text` overlaps, or None."""
        tokens = words(text)
        for g in ngrams(tokens, self.n):
            if g in self.grams:
                return self.grams[g]
        if self.short:
            lengths = {len(g) for g in self.short}
            for size in lengths:
                for i in range(len(tokens) - size + 1):
                    hit = self.short.get(tuple(tokens[i : i + size]))
                    if hit is not None:
                        return hit
        return None


def build_index(items: Iterable[tuple[str, str]], n: int) -> ContaminationIndex:
    """Index (id, text) pairs of evaluation items (the run indexes held-out, control and earlier fresh problems)."""
    index = ContaminationIndex(n=n)
    for item_id, text in items:
        index.add(item_id, text)
    return index


def split_contaminated(
    records: Sequence[TrainRecord], questions: dict[str, str], index: ContaminationIndex
) -> tuple[list[TrainRecord], list[dict[str, str]]]:
    """Clean records, and a note of each dropped one with the evaluation item it overlaps.

    A record (an Example or a Pair) is checked on its problem's question and on every model-written text
    it trains on; `questions` maps problem ids to their question text (without exemplar and instruction).
    """
    clean, dropped = [], []
    for rec in records:
        question = questions.get(rec.problem_id, rec.prompt)
        hit = index.match(question) or next((h for t in rec.texts if (h := index.match(t)) is not None), None)
        if hit is None:
            clean.append(rec)
        else:
            dropped.append({"example_id": rec.id, "problem_id": rec.problem_id, "overlaps": hit})
    return clean, dropped
