"""Any verifier as an online-RL reward function, in trl's convention (GRPOTrainer's `reward_funcs`).

    reward = as_reward_function(verifier, {p.id: p for p in problems})
    reward(prompts, completions, problem_id=[...]) -> [1.0, 0.0, None, ...]

trl calls a reward function with the batch's prompts and completions (strings, or chat message lists whose
last message is the completion) and every other dataset column as a keyword list; the `num_generations`
completions of one prompt come as consecutive entries. The whole batch goes to the verifier at once, so a
batch verifier (the majority vote, TTRL) sees each problem's completions together. A verdict the verifier could
not make (a judge's unparsed score) is None, trl's "abstain". trl itself is not imported here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from selfplay.records import Problem, Sample, sample_id
from selfplay.verifiers import Verifier, verify_all
from selfplay.verifiers.judge import is_unparsed

RewardFunction = Callable[..., list[float | None]]


def _text(completion: str | Sequence[Mapping[str, Any]]) -> str:
    return completion if isinstance(completion, str) else str(completion[-1]["content"])


def as_reward_function(verifier: Verifier, problems_by_id: Mapping[str, Problem]) -> RewardFunction:
    """A callable `f(prompts, completions, problem_id, **kwargs) -> list[float | None]`, scores in input order."""

    def reward(prompts: Sequence[Any], completions: Sequence[Any], problem_id: Sequence[str],
               **kwargs: Any) -> list[float | None]:
        seen: Counter[str] = Counter()
        items = []
        for pid, completion in zip(problem_id, completions, strict=True):
            items.append((problems_by_id[pid], Sample(sample_id(pid, seen[pid]), pid, _text(completion), 0, "stop",
                                                      "rollout")))
            seen[pid] += 1
        return [None if is_unparsed(v) else v.score for v in verify_all(verifier, items)]

    reward.__name__ = f"{verifier.name}_reward"  # trl logs each reward function by its name
    return reward
