"""Guards watch a run for the ways self-training fails; held-out evaluation is the first of them."""

from selfplay.guards.heldout import greedy_metrics, pass_at_k, sampled_metrics, wilson_interval

__all__ = ["greedy_metrics", "pass_at_k", "sampled_metrics", "wilson_interval"]
