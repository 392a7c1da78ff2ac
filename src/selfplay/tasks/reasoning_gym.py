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


def worked_steps(expression: str) -> str | None:
    """An integer expression of + - * worked one operation at a time: '3 + 4 * 2 = 3 + 8 = 11'.

    Multiplications first, then left to right, as the rules of arithmetic order them. None for anything else
    (division, parentheses, unary minus), which gets no worked demonstration.
    """
    tokens = expression.split()
    if len(tokens) < 3 or len(tokens) % 2 == 0:
        return None
    try:
        terms = [int(t) for t in tokens[0::2]]
    except ValueError:
        return None
    ops = tokens[1::2]
    if any(op not in ("+", "-", "*") for op in ops):
        return None
    steps = [expression]
    while ops:
        k = ops.index("*") if "*" in ops else 0
        a, b, op = terms[k], terms[k + 1], ops[k]
        terms[k : k + 2] = [a * b if op == "*" else a + b if op == "+" else a - b]
        del ops[k]
        steps.append(_show(terms, ops))
    return " = ".join(steps)


def _show(terms: list[int], ops: list[str]) -> str:
    return " ".join([str(terms[0])] + [f"{op} {t}" for op, t in zip(ops, terms[1:], strict=True)])


def demonstration(metadata: dict[str, Any], answer: str) -> str | None:
    """A worked reference answer in the prompt's format (SPIN's chosen side, the 'sft' recipe's data)."""
    steps = _steps(metadata)
    if steps is None or not _agrees(steps, answer):
        return None  # not an expression we can work, or one whose value is not the reference
    return _worked_answer(steps, answer)


def _worked_answer(steps: str, answer: str) -> str:
    return f"{steps}\nAnswer: {answer}"


def _steps(metadata: dict[str, Any]) -> str | None:
    expression = metadata.get("expression")
    return worked_steps(expression) if isinstance(expression, str) else None


def _agrees(steps: str, answer: str) -> bool:
    return steps.rsplit(" = ", 1)[-1] == answer.strip()


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

    def _generate(self, size: int) -> tuple[list[RawItem], int]:
        """`size` items, less those whose reference answer disagrees with the expression shown (counted)."""
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
        items, wrong = [], 0
        for entry in ds:
            answer = str(entry["answer"])
            steps = _steps(entry.get("metadata") or {})
            if steps is not None and not _agrees(steps, answer):
                # reasoning-gym 0.1.25 with allow_parentheses: false prints '4 + 2 - 2 * 10' but answers 40,
                # the value of the unprinted tree ((4 + 2 - 2) * 10): a wrong reference would train errors.
                wrong += 1
                continue
            # Keep the entry JSON-safe so problems can be frozen in the run folder and re-scored later.
            safe = json.loads(json.dumps(entry, default=str))
            # No worked solution for the exemplar: measured on basic_arithmetic with SmolLM2-135M, showing
            # the expression's working halved greedy accuracy (12.5% vs 23% on 48 problems).
            meta = {"entry": safe}
            category = _category(self.dataset, safe.get("metadata") or {})
            if category is not None:
                meta["category"] = category
            if steps is not None:
                meta["demonstration"] = _worked_answer(steps, answer)
            items.append(RawItem(question=entry["question"], answer=answer, meta=meta))
        return items, wrong

    def _note_wrong(self, wrong: int, size: int) -> None:
        if wrong:
            print(f"task reasoning_gym:{self.dataset}: left out {wrong} of {size} generated problems whose reference "
                  "answer ignores the order of operations (the expression shown has lost its parentheses)", flush=True)

    def _pool(self, need: int) -> list[RawItem]:
        size = need * 2
        # Easy settings repeat questions, so grow the pool until enough distinct ones exist.
        for _ in range(4):
            items, wrong = self._generate(size)
            if len({i.question for i in items}) >= need:
                break
            size *= 4
        self._note_wrong(wrong, len(items) + wrong)  # of the last draw, the one whose items are used
        return items

    def fresh(self, size: int, seed: int, exclude: set[str], exemplar: Problem | None) -> list[Problem]:
        """Up to `size` new problems from another seed, none of whose questions is in `exclude`."""
        shown = exemplar_item(exemplar) if exemplar is not None else None
        generator = ReasoningGymTask(self.dataset, self.params, self.train_size, self.eval_size, seed, self.one_shot)
        # One generous draw: small problem spaces repeat questions, and most of them may be excluded.
        items, _ = generator._generate(4 * (size + len(exclude)))
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
