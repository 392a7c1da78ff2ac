"""Filters turn verdicts into training data."""

from selfplay.filters.keep_verified import FilterStats, keep_verified

__all__ = ["FilterStats", "keep_verified"]
