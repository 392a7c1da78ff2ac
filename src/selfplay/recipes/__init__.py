"""Recipes wire the parts into one iteration. A config picks one by name from RECIPES, or names 'module:attr'.

A recipe is `recipe(ctx, i, source) -> Path`: it runs iteration `i`'s stages through the RunContext's
methods (generate, verify, select, review, train, or `ctx.stage` for one of its own), sampling from the
model at `source`, and returns the trained model's folder. The driver evaluates it and applies the stop rules.

CHECKS holds a built-in recipe's own check, `check(cfg, task, train_problems)`, run when the run opens, before
anything is written: it refuses in one line a task or setting the recipe cannot run with.
"""

from selfplay.recipes import constitutional, distill, grpo, rft, rlaif, self_rewarding, sft, spin, star

RECIPES = {
    "rft": rft.run_iteration,
    "star": star.run_iteration,
    "self_rewarding": self_rewarding.run_iteration,
    "spin": spin.run_iteration,
    "sft": sft.run_iteration,
    "distill": distill.run_iteration,
    "constitutional": constitutional.run_iteration,
    "grpo": grpo.run_iteration,
    "rlaif": rlaif.run_iteration,
}

CHECKS = {
    "star": star.check,
    "spin": spin.check,
    "sft": spin.check,
    "distill": distill.check,
    "constitutional": constitutional.check,
    "grpo": grpo.check,
    "rlaif": rlaif.check,
}

__all__ = ["CHECKS", "RECIPES"]
