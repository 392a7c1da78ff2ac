"""How a person's preferences join the AI's in training: the one rule, for DPO pairs and for reward-model rows.

1. A person's order wins. Where a person flipped a pair (or ranked the same two answers to the same prompt the
   other way), the person's order replaces the AI's; the AI's order is not trained on as well.
2. A person's pair counts `weight` times, an AI pair once (`review.human_weight`, 2 by default; `selfplay
   train-rm --human-weight`). DPO and the reward model's loss weigh every row alike, so a weight is repetition.
3. A blind evaluation's pairs are held-out prompts: a run never trains its policy on them (they would
   contaminate the evaluation its stop rules read). They can train a reward model when asked for (`selfplay
   train-rm --human`), which is then a model of people's taste used outside that run's held-out check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from selfplay.records import Pair


def flip(pair: Pair) -> Pair:
    return replace(pair, chosen=pair.rejected, rejected=pair.chosen, chosen_sample_id=pair.rejected_sample_id,
                   rejected_sample_id=pair.chosen_sample_id, chosen_score=pair.rejected_score,
                   rejected_score=pair.chosen_score)


def weigh_pairs(records: Sequence[Any], confirmed: Iterable[str], flipped: Iterable[str], weight: int
                ) -> tuple[list[Any], dict[str, int]]:
    """An iteration's training records after review: flipped pairs swapped, human-labelled pairs repeated."""
    confirmed, flipped = set(confirmed), set(flipped)
    out: list[Any] = []
    for r in records:
        human = r.id in confirmed or r.id in flipped
        if isinstance(r, Pair) and r.id in flipped:
            r = flip(r)
        out.append(r)
        if human and isinstance(r, Pair):
            out.extend(replace(r, id=f"{r.id}+human{k}") for k in range(1, weight))
    labelled = sum(isinstance(r, Pair) and (r.id in confirmed or r.id in flipped) for r in records)
    return out, {"human_pairs": labelled, "flipped": len(flipped & {r.id for r in records}),
                 "human_weight": weight}


def combine(ai: Sequence[Any], human: Sequence[Any], key: Callable[[Any], Any]) -> tuple[list[Any], list[int], int]:
    """AI and human pairs as one list under the rule above, each with its weight class (0: AI, 1: a person's).

    `key(pair)` names the prompt and the two answers regardless of order; an AI pair a person also ranked is
    dropped (the person's order stands). Returns (pairs, 1 for a person's pair else 0, AI pairs dropped).
    """
    ranked = {key(h) for h in human}
    kept = [a for a in ai if key(a) not in ranked]
    return [*kept, *human], [0] * len(kept) + [1] * len(human), len(ai) - len(kept)
