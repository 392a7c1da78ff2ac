"""Rejection-sampling fine-tuning (RFT / STaR / expert iteration), one iteration:

sample k completions per training problem with the current model, keep the verified-correct ones
(deduplicated, capped per problem), fine-tune on them, and evaluate the result on held-out problems.
Examples that overlap an evaluation prompt are dropped in the filter stage; with `review.every` set, a
person approves the training data before the train stage. By default each iteration fine-tunes the
*base* model on data sampled from the *latest* model, as ReST-EM and STaR do: it keeps the model close
to its supervised starting point and stops errors from compounding across iterations.
`train.init_from: previous` continues from the last model instead.
"""

from __future__ import annotations

from selfplay.generation import SamplingParams
from selfplay.loop import review, stages
from selfplay.loop.context import RunContext
from selfplay.loop.evaluation import model_source


def run_iteration(ctx: RunContext, i: int) -> None:
    cfg = ctx.cfg
    it_dir = ctx.rundir.iter_dir(i)
    it_dir.mkdir(parents=True, exist_ok=True)
    current = model_source(ctx, i)
    g = cfg.generate
    params = SamplingParams(g.samples_per_problem, g.temperature, g.top_p, g.max_new_tokens, cfg.seed + 1000 * i)

    ctx.stage(i, "generate", lambda: stages.generate(it_dir, ctx.train, ctx.pool, current, params))
    ctx.stage(i, "verify", lambda: stages.verify(it_dir, ctx.train, ctx.verifier))
    ctx.stage(i, "filter", lambda: stages.filter_(it_dir, ctx.train, i, cfg.filter, ctx.contamination_index()))
    removed: list[str] = []
    if cfg.review.every and i % cfg.review.every == 0:
        r = cfg.review
        decision = ctx.stage(
            i, "review",
            lambda: review.gate(it_dir, ctx.rundir.path, ctx.train, r.sample_size, cfg.seed + i, r.poll_seconds),
        )
        removed = decision.get("rejected_ids", [])
    init = ctx.base_path if cfg.train.init_from == "base" else current
    ctx.stage(
        i, "train",
        lambda: stages.train(it_dir, init, current, cfg.train, ctx.where, cfg.seed + i, ctx.pool, removed),
    )
    ctx.evaluate(i)
