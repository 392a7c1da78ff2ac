"""Recipes wire the parts into one iteration. A config picks one by name from RECIPES."""

from selfplay.recipes import rft

RECIPES = {"rft": rft.run_iteration}

__all__ = ["RECIPES"]
