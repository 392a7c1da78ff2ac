"""Rejection-sampling fine-tuning (RFT / STaR / expert iteration), one iteration:

sample k completions per training problem from `source`, keep the verified-correct ones (deduplicated,
capped per problem), and fine-tune on them. Examples that overlap an evaluation prompt are dropped in the
filter stage; with `review.every` set, a person approves the training data before the train stage. By
default each iteration fine-tunes the *base* model on data sampled from the *latest* model, as ReST-EM and
STaR do: it keeps the model close to its supervised starting point and stops errors from compounding.
`train.init_from: previous` continues from the model the iteration sampled from instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfplay.config import FilterConfig
from selfplay.filters import keep_verified
from selfplay.loop.context import RunContext
from selfplay.records import Example, Problem, Sample, Verdict
from selfplay.training import SFT


def verified(
    problems: Sequence[Problem], samples: Sequence[Sample], verdicts: Sequence[Verdict], f: FilterConfig, i: int,
) -> tuple[list[Example], dict[str, Any]]:
    """The selection of RFT (and of STaR's plain samples): verified, deduplicated, capped per problem."""
    examples, stats = keep_verified(problems, samples, verdicts, iteration=i, max_per_problem=f.max_per_problem,
                                    dedupe=f.dedupe, drop_truncated=f.drop_truncated)
    return examples, stats.to_dict()


def run_iteration(ctx: RunContext, i: int, source: Path) -> Path:
    cfg = ctx.cfg
    params = cfg.generate.params(cfg.generate.samples_per_problem, cfg.seed + 1000 * i)
    ctx.generate(i, ctx.train_problems, source, params)
    ctx.verify(i, ctx.train_problems)

    def select(problems: Sequence[Problem], samples: Sequence[Sample], verdicts: Sequence[Verdict]):
        return verified(problems, samples, verdicts, cfg.filter, i)

    ctx.select(i, ctx.train_problems, select, Example)
    removed = ctx.review(i)
    return ctx.train(i, SFT(), ctx.init_model(source), source, removed)
