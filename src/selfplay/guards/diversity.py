"""Mode-collapse measures over a set of completions: distinct-n, self-BLEU, near-duplicates and length.

Computed on the held-out sampled completions (k per problem), which every iteration draws from the same
problems, so the numbers compare across iterations, iteration 0 (the starting model) included.
- distinct-n (Li et al., 2016): unique n-grams over all n-grams in the set; falls as outputs repeat.
- self-BLEU (Zhu et al., 2018): BLEU-4 of each completion against the others of a random subset; rises
  as outputs converge on one template.
- near-duplicate share: completions that nearly repeat (similarity >= 0.9) another of the same problem.
"""

from __future__ import annotations

import difflib
import random
from collections import defaultdict
from collections.abc import Sequence
from statistics import fmean, pstdev
from typing import Any

from selfplay.guards.contamination import words
from selfplay.records import Sample


def distinct_n(texts: Sequence[str], n: int) -> float:
    total, unique = 0, set()
    for text in texts:
        tokens = words(text)
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def self_bleu(texts: Sequence[str], max_texts: int = 100, seed: int = 0) -> float | None:
    """Mean BLEU-4 of each text against all the others (a seeded subset of at most `max_texts`)."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    tokenized = [words(t) for t in texts if t.strip()]
    if len(tokenized) < 2:
        return None
    if len(tokenized) > max_texts:
        tokenized = random.Random(seed).sample(tokenized, max_texts)
    smooth = SmoothingFunction().method1
    scores = []
    for i, hyp in enumerate(tokenized):
        refs = tokenized[:i] + tokenized[i + 1 :]
        scores.append(sentence_bleu(refs, hyp, smoothing_function=smooth))
    return fmean(scores)


def near_duplicate_share(samples: Sequence[Sample], threshold: float = 0.9) -> float:
    """Share of samples whose text is at least `threshold` similar to another sample of the same problem."""
    groups: dict[str, list[str]] = defaultdict(list)
    for s in samples:
        groups[s.problem_id].append(" ".join(s.completion.split()))
    dup = 0
    for texts in groups.values():
        flagged = [False] * len(texts)
        for i in range(len(texts)):
            for j in range(i + 1, len(texts)):
                if flagged[i] and flagged[j]:
                    continue
                if texts[i] == texts[j] or difflib.SequenceMatcher(None, texts[i], texts[j]).ratio() >= threshold:
                    flagged[i] = flagged[j] = True
        dup += sum(flagged)
    return dup / len(samples) if samples else 0.0


def diversity_metrics(samples: Sequence[Sample], seed: int = 0) -> dict[str, Any]:
    texts = [s.completion for s in samples]
    lengths = [s.num_tokens for s in samples]
    return {
        "samples": len(samples),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "self_bleu": self_bleu(texts, seed=seed),
        "near_duplicate_share": near_duplicate_share(samples),
        "length_mean": fmean(lengths) if lengths else 0.0,
        "length_std": pstdev(lengths) if len(lengths) > 1 else 0.0,
    }
