"""Procedurally generated problems from reasoning-gym, scored by reasoning-gym's own answer checker."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any

from selfplay.errors import UserError
from selfplay.records import Problem
from selfplay.tasks.base import RawItem, Split, exemplar_item, split_items, to_problem


def _category(dataset: str, metadata: dict[str, Any]) -> str | None:
    """A label to group accuracy by, so a class of problems that stays wrong shows in the report."""
    if dataset == "basic_arithmetic" and "expression" in metadata:
        ops = [op for op in ("+", "-", "*", "/") if f" {op} " in metadata["expression"]]
        return " ".join(ops) or "none"
    if "source_dataset" in metadata and metadata["source_dataset"] != dataset:  # composite datasets
        return str(metadata["source_dataset"])
    if isinstance(metadata.get("difficulty"), dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(metadata["difficulty"].items()))
    return None


@dataclass
class ReasoningGymTask:
    dataset: str
    params: dict[str, Any] = field(default_factory=dict)
    train_size: int = 64
    eval_size: int = 100
    seed: int = 0
    one_shot: bool = True
    default_verifier: str = "reasoning_gym"

    @property
    def name(self) -> str:
        return f"reasoning_gym:{self.dataset}"

    def _generate(self, size: int) -> list[RawItem]:
        import reasoning_gym
        from reasoning_gym.factory import DATASETS

        if self.dataset not in DATASETS:
            close = difflib.get_close_matches(self.dataset, list(DATASETS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UserError(f"task.dataset: unknown reasoning-gym dataset '{self.dataset}'{hint}")
        try:
            ds = reasoning_gym.create_dataset(self.dataset, size=size, seed=self.seed, **self.params)
        except (TypeError, AssertionError, ValueError) as e:
            raise UserError(f"task.params: invalid for reasoning-gym '{self.dataset}': {e}") from None
        items = []
        for entry in ds:
            # Keep the entry JSON-safe so problems can be frozen in the run folder and re-scored later.
            safe = json.loads(json.dumps(entry, default=str))
            # No worked solution for the exemplar: measured on basic_arithmetic with SmolLM2-135M, showing
            # the expression's working halved greedy accuracy (12.5% vs 23% on 48 problems).
            meta = {"entry": safe}
            category = _category(self.dataset, safe.get("metadata") or {})
            if category is not None:
                meta["category"] = category
            items.append(RawItem(question=entry["question"], answer=str(entry["answer"]), meta=meta))
        return items

    def _pool(self, need: int) -> list[RawItem]:
        size = need * 2
        # Easy settings repeat questions, so grow the pool until enough distinct ones exist.
        for _ in range(4):
            items = self._generate(size)
            if len({i.question for i in items}) >= need:
                break
            size *= 4
        return items

    def fresh(self, size: int, seed: int, exclude: set[str], exemplar: Problem | None) -> list[Problem]:
        """Up to `size` new problems from another seed, none of whose questions is in `exclude`."""
        shown = exemplar_item(exemplar) if exemplar is not None else None
        generator = ReasoningGymTask(self.dataset, self.params, self.train_size, self.eval_size, seed, self.one_shot)
        # One generous draw: small problem spaces repeat questions, and most of them may be excluded.
        items = generator._generate(4 * (size + len(exclude)))
        out: dict[str, Problem] = {}
        for item in items:
            q = item.question.strip()
            if q in exclude or q in out:
                continue
            out[q] = to_problem(f"{self.dataset}-fresh", item, shown)
            if len(out) == size:
                break
        return list(out.values())

    def split(self) -> Split:
        items = self._pool(self.train_size + self.eval_size + 1)
        return split_items(
            items,
            prefix=self.dataset,
            train_size=self.train_size,
            eval_size=self.eval_size,
            seed=self.seed,
            one_shot=self.one_shot,
            source=f"task reasoning_gym:{self.dataset} with params {self.params}",
        )
