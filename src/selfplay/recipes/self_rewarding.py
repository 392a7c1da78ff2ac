"""Self-Rewarding LM (Yuan et al., 2024), one iteration:

sample N candidates per training prompt from `source` (the paper: 4, temperature 0.7, top-p 0.9), let the
judge (`judge.model`: the current model as in the paper, the frozen base model, or a model folder) score
each with the additive 5-point rubric, pair the best against the worst candidate of each prompt when their
scores differ, and train on the pairs with DPO. Ties, truncated best candidates and candidates whose
judgement gave no score make no pair, and are counted.

There is no ground truth in the loop, so the guard figures matter: where the task has a gold checker (the
instruction-following task does), the filter stage also reports the judge's pair accuracy against gold
(how often the chosen candidate really is the better one) and the judge-gold correlation on every judged
candidate, and the evaluation's reward-hacking audit compares judge and gold on held-out answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfplay.filters.pairs import best_vs_worst
from selfplay.guards.reward_hacking import pearson
from selfplay.loop.context import RunContext
from selfplay.records import Pair, Problem, Sample, Verdict
from selfplay.training import DPO
from selfplay.verifiers import verify_all
from selfplay.verifiers.judge import is_unparsed, judge_notes


def judged_pairs(
    problems: Sequence[Problem], samples: Sequence[Sample], verdicts: Sequence[Verdict], *, iteration: int,
    drop_truncated: bool, gold=None,
) -> tuple[list[Pair], dict[str, Any]]:
    """Best-vs-worst pairs from judge scores, unparsed judgements left out; judge-vs-gold figures when gold is given."""
    unparsed = {v.sample_id for v in verdicts if is_unparsed(v)}
    usable = [s for s in samples if s.id not in unparsed]
    pairs, stats = best_vs_worst(problems, usable, [v for v in verdicts if v.sample_id not in unparsed],
                                 iteration=iteration, drop_truncated=drop_truncated)
    stats["samples"] = len(samples)
    stats["unparsed"] = len(unparsed)
    notes = [judge_notes(v) for v in verdicts]  # each verdict's JSON record, parsed once
    stats["empty_by_rule"] = sum(1 for n in notes if "rule" in n)
    stats["neutralized"] = sum(1 for n in notes if n.get("removed"))
    judged = [v.score for v in verdicts if v.sample_id not in unparsed]
    stats["judge_mean_score"] = sum(judged) / len(judged) if judged else None
    if pairs:
        stats["mean_score_gap"] = sum(p.chosen_score - p.rejected_score for p in pairs) / len(pairs)
        stats["chosen_longer"] = sum(len(p.chosen) > len(p.rejected) for p in pairs) / len(pairs)
    if gold is not None:
        stats.update(_against_gold(problems, samples, verdicts, pairs, unparsed, gold))
    return pairs, stats


def _against_gold(problems, samples, verdicts, pairs, unparsed, gold) -> dict[str, Any]:
    """The judge's quality on this iteration's candidates, by the gold checker: pair accuracy and correlation."""
    by_id = {p.id: p for p in problems}
    gold_v = verify_all(gold, [(by_id[s.problem_id], s) for s in samples])
    gold_score = {v.sample_id: v.score for v in gold_v}
    judge_score = {v.sample_id: v.score for v in verdicts if v.sample_id not in unparsed}
    right = wrong = tie = 0
    for p in pairs:
        c, r = gold_score[p.chosen_sample_id], gold_score[p.rejected_sample_id]
        right += c > r
        wrong += c < r
        tie += c == r
    ids = [sid for sid in judge_score if sid in gold_score]
    return {
        "gold": gold.name,
        "gold_pass_rate": sum(v.passed for v in gold_v) / len(gold_v) if gold_v else None,
        # Of the pairs gold can order, the share where the judge's chosen candidate is gold's better one.
        "pair_accuracy_gold": right / (right + wrong) if right + wrong else None,
        "pairs_gold_tied": tie,
        "judge_gold_correlation": pearson([judge_score[i] for i in ids], [gold_score[i] for i in ids]),
    }


def run_iteration(ctx: RunContext, i: int, source: Path) -> Path:
    cfg = ctx.cfg
    params = cfg.generate.params(cfg.generate.samples_per_problem, cfg.seed + 1000 * i)
    ctx.generate(i, ctx.train_problems, source, params)
    ctx.verify(i, ctx.train_problems)

    def select(problems: Sequence[Problem], samples: Sequence[Sample], verdicts: Sequence[Verdict]):
        return judged_pairs(problems, samples, verdicts, iteration=i, drop_truncated=cfg.filter.drop_truncated,
                            gold=ctx.gold)

    ctx.select(i, ctx.train_problems, select, Pair)
    removed = ctx.review(i)
    return ctx.train(i, DPO(), ctx.init_model(source), source, removed)
