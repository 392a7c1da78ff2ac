"""Supervised fine-tuning on the task's demonstrations, one iteration: no sampling, no verifier.

The baseline that SPIN is measured against (the same demonstrations, plain SFT, comparable compute), and the
supervised starting point a self-training run can begin from: export its model and name it as `model.path`.
The demonstrations are the same as SPIN's: a JSONL task's `response`, or the worked reference answer on the
arithmetic tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from selfplay.loop.context import RunContext
from selfplay.recipes.spin import demonstration
from selfplay.records import Example, Problem, Sample, Verdict
from selfplay.training import SFT


def demonstration_examples(problems: Sequence[Problem], iteration: int) -> list[Example]:
    return [
        Example(id=f"it{iteration}/{p.id}/demonstration", problem_id=p.id, sample_id=f"{p.id}/demonstration",
                prompt=p.prompt, completion=demo, iteration=iteration, messages=p.messages)
        for p in problems if (demo := demonstration(p)) is not None
    ]


def run_iteration(ctx: RunContext, i: int, source: Path) -> Path:
    def select(problems: Sequence[Problem], samples: Sequence[Sample], verdicts: Sequence[Verdict]):
        examples = demonstration_examples(problems, i)
        return examples, {"demonstrations": len(examples), "problems": len(problems)}

    ctx.select(i, ctx.train_problems, select, Example)
    removed = ctx.review(i)
    return ctx.train(i, SFT(), ctx.init_model(source), source, removed)

