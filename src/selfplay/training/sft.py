"""Supervised fine-tuning on kept samples, with loss on the completion only: a thin layer over trl + peft.

LoRA adapters are merged into the weights on save, so every iteration's `model/` is a plain checkpoint
that `AutoModelForCausalLM.from_pretrained` and vLLM load. Trainer checkpoints every few steps make a
killed training stage resume where it stopped instead of starting over.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfplay.config import TrainConfig
from selfplay.errors import UserError
from selfplay.files import atomic_replace_dir
from selfplay.models import Placement, load_model, load_tokenizer
from selfplay.records import Example


def _latest_checkpoint(work_dir: Path) -> str | None:
    ckpts = sorted(work_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    # A checkpoint folder is complete once the trainer state is written (the last file it saves).
    ckpts = [c for c in ckpts if (c / "trainer_state.json").is_file()]
    return str(ckpts[-1]) if ckpts else None


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
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    for name in ("transformers.trainer", "trl"):
        logging.getLogger(name).setLevel(logging.WARNING)
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
    on_cpu = where.device == "cpu"
    steps = math.ceil(math.ceil(len(examples) / cfg.batch_size) / cfg.grad_accum * cfg.epochs)
    args = SFTConfig(
        output_dir=str(work_dir),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_length=cfg.max_length,
        completion_only_loss=True,
        logging_steps=max(1, steps // 10),  # about ten loss readings per stage
        save_strategy="steps",
        save_steps=cfg.checkpoint_every,
        save_total_limit=1,
        report_to=[],
        seed=seed,
        data_seed=seed,
        use_cpu=on_cpu,
        bf16=where.dtype == torch.bfloat16,
        fp16=where.dtype == torch.float16,
        dataloader_num_workers=0,
        dataset_num_proc=None,
    )
    peft_config = None
    if cfg.method == "lora":
        peft_config = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
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
    resume_from = _latest_checkpoint(work_dir)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]

    trained = trainer.model
    if cfg.method == "lora":
        trained = trained.merge_and_unload()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trained.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    atomic_replace_dir(tmp, out_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    return {
        "examples": len(examples),
        "steps": result.global_step,
        "epochs": cfg.epochs,
        "tokens_per_epoch": tokens_per_epoch,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "train_loss": result.training_loss,
        "resumed_from": resume_from,
        "seconds": seconds,
        "tokens_per_second": tokens_per_epoch * cfg.epochs / seconds if seconds > 0 else None,
    }


class SFT:
    """The supervised trainer (a Trainer, selfplay.interfaces): Examples in, a merged checkpoint out."""

    record_type = Example

    def train(
        self, init_path: Path, records: Sequence[Example], out_dir: Path, work_dir: Path, cfg: TrainConfig,
        where: Placement, seed: int,
    ) -> dict[str, Any]:
        return train_sft(init_path, records, out_dir, work_dir, cfg, where, seed)
