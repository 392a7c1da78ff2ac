"""Supervised fine-tuning on kept samples, with loss on the completion only: a thin layer over trl + peft.

Checkpoints, resume and the merged save are `selfplay.training.common`'s, shared with DPO.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfplay.config import TrainConfig
from selfplay.errors import UserError
from selfplay.models import Placement, load_model, load_tokenizer
from selfplay.records import Example
from selfplay.training.common import first_last, lora_config, quiet, train_and_save, trainer_settings


def train_sft(
    init_path: Path,
    examples: Sequence[Example],
    out_dir: Path,
    work_dir: Path,
    cfg: TrainConfig,
    where: Placement,
    seed: int,
) -> dict[str, Any]:
    """Fine-tune the model at `init_path` on `examples`; write the merged result to `out_dir` atomically."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    quiet()
    tokenizer = load_tokenizer(init_path)
    model = load_model(init_path, where)
    data = Dataset.from_list(
        [
            {
                "prompt": e.messages or [{"role": "user", "content": e.prompt}],
                "completion": [{"role": "assistant", "content": e.completion}],
            }
            for e in examples
        ]
    )
    args = SFTConfig(**trainer_settings(cfg, len(examples), work_dir, where, seed), max_length=cfg.max_length,
                     completion_only_loss=True)
    peft_config = lora_config(cfg)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=peft_config
    )
    # trl drops examples whose prompt alone fills max_length (no completion token is left to learn).
    left = len(trainer.train_dataset)
    if left == 0:
        raise UserError(
            f"train.max_length: {cfg.max_length} tokens leaves no room for any completion (every prompt fills it); "
            "raise train.max_length"
        )
    if left < len(examples):
        print(f"train: {len(examples) - left} of {len(examples)} examples dropped: their prompt fills "
              f"train.max_length ({cfg.max_length} tokens)", flush=True)
    tokens_per_epoch = sum(len(x) for x in trainer.train_dataset["input_ids"])
    stats = train_and_save(trainer, cfg, out_dir, work_dir, tokens_per_epoch)
    first_loss, final_loss = first_last(trainer.state.log_history, "loss")
    return {"examples": len(examples), **stats, "first_loss": first_loss, "final_loss": final_loss}


class SFT:
    """The supervised trainer (a Trainer, selfplay.interfaces): Examples in, a merged checkpoint out."""

    record_type = Example

    def train(
        self, init_path: Path, records: Sequence[Example], out_dir: Path, work_dir: Path, cfg: TrainConfig,
        where: Placement, seed: int,
    ) -> dict[str, Any]:
        return train_sft(init_path, records, out_dir, work_dir, cfg, where, seed)
