"""Training a reward model on preference pairs with trl's RewardTrainer (Bradley-Terry: chosen above rejected).

The start model gets a one-output classification head; with `train.method: lora` its adapters (and the new head)
train and are merged on save, so the output folder is a plain `AutoModelForSequenceClassification` checkpoint.
Checkpoints, resume and the atomic save are `selfplay.training.common`'s, as for SFT and DPO.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfplay.config import TrainConfig
from selfplay.errors import UserError
from selfplay.models import Placement, load_tokenizer
from selfplay.records import Message
from selfplay.training.common import first_last, quiet, train_and_save, trainer_settings


def train_reward_model(
    init_path: Path, pairs: Sequence[tuple[list[Message], str, str]], out_dir: Path, work_dir: Path,
    cfg: TrainConfig, where: Placement, seed: int, max_length: int = 1024,
) -> dict[str, Any]:
    """Train on (prompt turns, chosen, rejected) triples; write the merged reward model to `out_dir` atomically."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    quiet()
    if not pairs:
        raise UserError("train-rm: no preference pairs to train on")
    tokenizer = load_tokenizer(init_path)
    data = Dataset.from_list([
        {"prompt": list(prompt), "chosen": [{"role": "assistant", "content": chosen}],
         "rejected": [{"role": "assistant", "content": rejected}]}
        for prompt, chosen, rejected in pairs
    ])
    # center_rewards_coefficient keeps rewards near 0, so a threshold of 0 reads as "above the average answer"
    args = RewardConfig(**trainer_settings(cfg, len(pairs), work_dir, where, seed), max_length=max_length,
                        center_rewards_coefficient=0.01)
    peft_config = None
    if cfg.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules="all-linear", task_type="SEQ_CLS")
    trainer = RewardTrainer(model=str(init_path), args=args, train_dataset=data, processing_class=tokenizer,
                            peft_config=peft_config)
    left = len(trainer.train_dataset)
    if left == 0:
        raise UserError(f"train-rm: every pair is longer than {max_length} tokens; raise the max_length setting")
    stats = train_and_save(trainer, cfg, out_dir, work_dir,
                           sum(len(c) + len(r) for c, r in zip(trainer.train_dataset["chosen_ids"],
                                                               trainer.train_dataset["rejected_ids"], strict=True)))
    first_loss, final_loss = first_last(trainer.state.log_history, "loss")
    first_acc, final_acc = first_last(trainer.state.log_history, "accuracy")
    return {"pairs": len(pairs), "pairs_trained": left, **stats, "first_loss": first_loss, "final_loss": final_loss,
            "first_train_accuracy": first_acc, "final_train_accuracy": final_acc}
