"""Recipes wire the parts into one iteration. A config picks one by name from RECIPES, or names 'module:attr'.

A recipe is `recipe(ctx, i, source) -> Path`: it runs iteration `i`'s stages through the RunContext's
methods (generate, verify, select, review, train, or `ctx.stage` for one of its own), sampling from the
model at `source`, and returns the trained model's folder. The driver evaluates it and applies the stop rules.
"""

from selfplay.recipes import rft, self_rewarding

RECIPES = {"rft": rft.run_iteration, "self_rewarding": self_rewarding.run_iteration}

__all__ = ["RECIPES"]
