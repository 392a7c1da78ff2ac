"""Training: trainers over trl + peft. A recipe hands the train stage the Trainer it needs (SFT now; DPO next)."""

from selfplay.training.sft import SFT, train_sft

__all__ = ["SFT", "train_sft"]
