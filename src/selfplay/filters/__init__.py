"""Filters turn verdicts into training data: supervised Examples (keep_verified) or preference Pairs (best_vs_worst)."""

from selfplay.filters.keep_verified import FilterStats, keep_verified, normalize
from selfplay.filters.pairs import best_vs_worst

__all__ = ["FilterStats", "best_vs_worst", "keep_verified", "normalize"]
