"""Training: trainers over trl + peft. A recipe hands the train stage the Trainer it needs: SFT or DPO."""

from selfplay.training.dpo import DPO, train_dpo
from selfplay.training.sft import SFT, train_sft

__all__ = ["DPO", "SFT", "train_dpo", "train_sft"]
