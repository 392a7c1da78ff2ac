"""RLAIF: Constitutional AI's reinforcement-learning phase, whole, in one iteration (Bai et al., 2022):

1. **AI preferences.** The model's answers to the training prompts are compared by the constitution, as recipe
   constitutional's preference phase does it (`constitution.pairs: judged`: two answers, one principle, both
   orders, only agreeing judgements kept; `revision`: the final revision over the first answer): pairs.jsonl.
   With `review.every`, a person checks the pairs before anything trains on them.
2. **A reward model** (`reward_model` stage): trl's RewardTrainer on every pair so far (this iteration's and the
   earlier ones', minus the ones a reviewer removed), from the run's starting model, into reward_model/ with its
   accuracy on held-out pairs (rm_eval.json), as `selfplay train-rm` does.
3. **RL against it** (`rl` stage): grpo's updates from the iteration's start model, with the reward model as the
   only reward (`rl.rewards` is not read); rollouts in rollouts.jsonl, their rewards in rollout-verdicts.jsonl.
   The task's own checker (IFEval's on the instruction task) never trains anything: it scores the held-out
   answers every iteration, and the rollouts of every update, so the report plots proxy and gold side by side
   and the reward-hacking guard fires when gold turns down while the reward model's score still climbs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfplay.errors import UserError
from selfplay.loop.context import RunContext
from selfplay.preferences import PreferencePair, train_on_pairs
from selfplay.recipes import constitutional, grpo
from selfplay.records import Pair, Problem
from selfplay.verifiers.reward_model import NAME as REWARD_MODEL
from selfplay.verifiers.reward_model import RewardModelVerifier

HELDOUT = 0.1  # share of the pairs kept out of the reward model's training, to measure it


def check(cfg: Any, task: Any, train: Sequence[Problem]) -> None:
    if cfg.constitution.phase != "preference":
        raise UserError("constitution.phase: recipe rlaif trains a reward model on AI preference pairs; set "
                        "constitution.phase: preference")
    constitutional.check(cfg, task, train)
    grpo.check(cfg.model_copy(update={"review": cfg.review.model_copy(update={"every": 0})}), task, train)


def _pairs(ctx: RunContext, i: int, removed: set[str]) -> list[PreferencePair]:
    """Every pair of iterations 1..i that a reviewer did not remove, as training rows."""
    out = []
    for j in range(1, i + 1):
        path = ctx.rundir.iter_dir(j) / "pairs.jsonl"
        if not path.is_file():
            continue
        for n, pair in enumerate(ctx.records(j, "pairs", Pair), start=1):
            if j == i and pair.id in removed:
                continue
            turns = pair.messages or [{"role": "user", "content": pair.prompt}]
            out.append(PreferencePair(turns, pair.chosen, pair.rejected, n))
    return out


def reward_model_stage(ctx: RunContext, i: int, removed: set[str]) -> dict[str, Any]:
    it_dir = ctx.rundir.iter_dir(i)
    out = it_dir / "reward_model"
    if (out / "rm_eval.json").is_file():  # killed after the model and its figures were written
        from selfplay.files import read_json

        return {**read_json(out / "rm_eval.json"), "model": "reward_model", "recovered": True}
    pairs = _pairs(ctx, i, removed)
    if len(pairs) < 2:  # a judge that never agrees with itself in both orders makes none: nothing to learn from
        print(f"{it_dir.name}/reward_model: {len(pairs)} AI preference pair(s) so far, too few to train a reward "
              "model; the model is unchanged this iteration (more training prompts, a stronger judge.model, or "
              "constitution.pairs: revision, which pairs every prompt)", flush=True)
        return {"skipped": True, "pairs": len(pairs)}
    ctx.pool.release()
    figures = train_on_pairs(pairs, out, ctx.cfg, ctx.base_path, HELDOUT, extra={"iterations": list(range(1, i + 1))},
                             where=f"{it_dir.name}/pairs.jsonl")
    return {**figures, "model": "reward_model"}


def run_iteration(ctx: RunContext, i: int, source: Path) -> Path:
    constitutional.training_data(ctx, i, source)
    removed = set(ctx.review(i))
    if ctx.stage(i, REWARD_MODEL, lambda: reward_model_stage(ctx, i, removed)).get("skipped"):
        return source
    rm = RewardModelVerifier(str(ctx.rundir.iter_dir(i) / "reward_model"))
    summary = ctx.stage(i, "rl", lambda: grpo.rl_stage(ctx, i, source, [(REWARD_MODEL, rm, 1.0)],
                                                       samples="rollouts", verdicts="rollout-verdicts"))
    return ctx.rundir.iter_dir(i) / summary["model"]
