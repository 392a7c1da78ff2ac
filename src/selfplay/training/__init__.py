"""Training: SFT now; DPO/SPIN and reward models plug in beside it."""

from selfplay.training.sft import train_sft

__all__ = ["train_sft"]
