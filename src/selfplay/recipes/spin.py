"""SPIN, self-play fine-tuning (Chen et al., 2024), one iteration:

for each training prompt the demonstration (a written answer: `response` in a JSONL task, the worked
reference answer on the arithmetic tasks) is chosen and the current model's own answer to the same prompt is
rejected; DPO trains on these pairs, starting from the previous iteration's model and measured against it
(with LoRA the reference is that model with the adapter switched off, so no second copy is loaded). As the
model's answers come to match the demonstrations, the pairs stop teaching anything: the paper's fixed point.

The model's answers are also verified, for the figures only: `rejected_correct` counts pairs whose rejected
side was already right, which is where SPIN pushes a correct answer down for being worded differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfplay.errors import UserError
from selfplay.filters import normalize
from selfplay.loop.context import RunContext
from selfplay.records import Pair, Problem, Sample, Verdict
from selfplay.training import DPO


def demonstration(problem: Problem) -> str | None:
    """The problem's written answer to learn from, if its task gives one."""
    demo = problem.meta.get("demonstration")
    return demo if isinstance(demo, str) and demo.strip() else None


def require_demonstrations(problems: Sequence[Problem], task: str, recipe: str) -> None:
    """One line when training problems have no demonstration: the recipe has nothing to learn from."""
    missing = [p.id for p in problems if demonstration(p) is None]
    if missing:
        raise UserError(
            f"recipe '{recipe}': {len(missing)} of {len(problems)} training problems of task {task} have no "
            f"demonstration (e.g. {missing[0]}); give a JSONL task whose lines have a 'response', or an arithmetic "
            "task (basic_arithmetic, chain_sum without division or parentheses)")


def spin_pairs(
    problems: Sequence[Problem], samples: Sequence[Sample], verdicts: Sequence[Verdict], *, iteration: int,
    drop_identical: bool = True,
) -> tuple[list[Pair], dict[str, Any]]:
    """One pair per sample: the problem's demonstration chosen, the model's sample rejected."""
    by_id = {p.id: p for p in problems}
    verdict = {v.sample_id: v for v in verdicts}
    pairs: list[Pair] = []
    identical = rejected_correct = 0
    for s in samples:
        p = by_id[s.problem_id]
        demo = demonstration(p)
        if demo is None:
            continue
        if drop_identical and normalize(s.completion) == normalize(demo):
            identical += 1
            continue
        v = verdict.get(s.id)
        rejected_correct += bool(v and v.passed)
        pairs.append(Pair(
            id=f"it{iteration}/{s.id}", problem_id=p.id, prompt=p.prompt, chosen=demo, rejected=s.completion,
            chosen_sample_id=f"{p.id}/demonstration", rejected_sample_id=s.id, chosen_score=1.0,
            rejected_score=v.score if v else 0.0, iteration=iteration, messages=p.messages))
    return pairs, {
        "samples": len(samples),
        "passed": sum(v.passed for v in verdicts),
        "identical_to_demonstration": identical,
        # Pairs whose rejected answer is correct by the checker: SPIN pushes these down for their wording.
        "rejected_correct": rejected_correct,
        "problems_solved": len({v.problem_id for v in verdicts if v.passed}),
    }


def check(cfg: Any, task: Any, train: Sequence[Problem]) -> None:
    """Called when the run opens, before anything is written."""
    if cfg.task.labels == "hidden":
        raise UserError(f"task.labels: hidden: recipe '{cfg.recipe}' trains on the written answers "
                        "(demonstrations), which are labels; use recipe 'rft' with verify.verifier: majority")
    require_demonstrations(train, task.name, cfg.recipe)


def run_iteration(ctx: RunContext, i: int, source: Path) -> Path:
    cfg = ctx.cfg
    params = cfg.generate.params(cfg.generate.samples_per_problem, cfg.seed + 1000 * i)
    ctx.generate(i, ctx.train_problems, source, params)
    ctx.verify(i, ctx.train_problems)

    def select(problems: Sequence[Problem], samples: Sequence[Sample], verdicts: Sequence[Verdict]):
        return spin_pairs(problems, samples, verdicts, iteration=i, drop_identical=cfg.spin.drop_identical)

    ctx.select(i, ctx.train_problems, select, Pair)
    removed = ctx.review(i)
    # The config requires train.init_from: previous: SPIN's reference is the model it trains from.
    return ctx.train(i, DPO(), source, source, removed)

