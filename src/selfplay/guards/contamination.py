"""Contamination audit: does any training example overlap an evaluation prompt?

As in the GPT-3 paper (Brown et al., 2020, appendix C), text is lower-cased and split into words, and a
training example is contaminated when it shares any n-gram (n = 13 by default) with an evaluation item.
An evaluation item shorter than n words counts as one gram, matched whole. Only the task content is
compared: the one-shot exemplar and the answer-format instruction are in every prompt by design.

Templated prompts share long boilerplate: instruction-following prompts repeat constraint sentences of
18 words ("Your entire response should be in English, and in all lowercase letters..."), a JSONL task may
end every question in the same HTML snippet. Such an n-gram says nothing about which item leaked, and
would mark every training example as contaminated. So, as is usual for overlap audits, frequent n-grams
are left out: an n-gram found in `boilerplate` or more distinct evaluation items (default 2) is template,
not content. A real leak still shows, through the n-grams that only its own item has.
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
    min_items: int = 2  # an n-gram in this many distinct items is boilerplate (0: keep every n-gram)
    holders: dict[tuple[str, ...], list[str]] = field(default_factory=dict)  # the first items each n-gram is in
    short: dict[tuple[str, ...], str] = field(default_factory=dict)  # items under n words, matched whole

    def add(self, item_id: str, text: str) -> None:
        tokens = words(text)
        if not tokens:
            return
        if len(tokens) < self.n:
            self.short.setdefault(tuple(tokens), item_id)
            return
        cap = max(self.min_items, 1)
        for g in ngrams(tokens, self.n):
            held = self.holders.setdefault(g, [])
            if len(held) < cap and item_id not in held:
                held.append(item_id)

    def _item_of(self, gram: tuple[str, ...]) -> str | None:
        held = self.holders.get(gram)
        if not held or (self.min_items and len(held) >= self.min_items):
            return None  # absent, or boilerplate
        return held[0]

    @property
    def boilerplate(self) -> int:
        """How many n-grams are left out as boilerplate."""
        return sum(1 for h in self.holders.values() if self.min_items and len(h) >= self.min_items)

    def match(self, text: str) -> str | None:
        """The id of an evaluation item that `text` overlaps, or None."""
        tokens = words(text)
        for g in ngrams(tokens, self.n):
            hit = self._item_of(g)
            if hit is not None:
                return hit
        if self.short:
            lengths = {len(g) for g in self.short}
            for size in lengths:
                for i in range(len(tokens) - size + 1):
                    hit = self.short.get(tuple(tokens[i : i + size]))
                    if hit is not None:
                        return hit
        return None


def build_index(items: Iterable[tuple[str, str]], n: int, boilerplate: int = 2) -> ContaminationIndex:
    """Index (id, text) pairs of evaluation items (the run indexes held-out, control and earlier fresh problems).

    An n-gram in `boilerplate` or more distinct items is left out (0: none is).
    """
    index = ContaminationIndex(n=n, min_items=boilerplate)
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
