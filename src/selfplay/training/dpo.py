"""Preference training (DPO) on chosen/rejected pairs: a thin layer over trl's DPOTrainer + peft.

Pairs are handed to trl in conversational form (the prompt's turns, then one assistant turn each for
chosen and rejected), so the chat template is applied as in SFT and generation. The reference model:
- LoRA: none is loaded. With `ref_model=None` and a `peft_config`, trl 1.16 sets `self.ref_model = None`
  for a PEFT model (dpo_trainer.py:909-914) and computes the reference log-probs with the same model
  inside `use_adapter(model, adapter_name=None)`, i.e. with the adapter disabled (dpo_trainer.py:1328-1336).
  A fresh adapter starts at zero, so the adapter-disabled model is exactly the starting model.
- Full fine-tuning: a second, frozen load of the starting model is passed as `ref_model`.
Prompts keep their last `max_prompt_length` tokens and completions their first `max_completion_length`
tokens; trl's own `max_length` (which keeps only the start of prompt + completion) is turned off.
Dropout is off during DPO (trl's `disable_dropout`, so policy and reference see the same network);
`train.lora_dropout` and `train.max_length` do not apply here. Checkpoints, resume and the merged save
work as in `selfplay.training.sft`.
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
from selfplay.records import Pair
from selfplay.training.sft import _latest_checkpoint


def usable_pairs(pairs: Sequence[Pair]) -> list[Pair]:
    """The pairs that can teach something: the chosen completion is not blank; says how many were dropped.

    An empty *rejected* completion stays: it still has the end-of-turn token, and "do not answer with
    nothing" is worth learning. An empty chosen one would teach the model to say nothing.
    """
    kept = [p for p in pairs if p.chosen.strip()]
    if not kept:
        raise UserError(
            f"train: all {len(pairs)} preference pairs have an empty chosen completion; nothing to "
            "train on (check the pairs the filter stage built)"
        )
    if len(kept) < len(pairs):
        print(f"train: {len(pairs) - len(kept)} of {len(pairs)} pairs dropped: an empty chosen completion",
              flush=True)
    return kept


def _truncate(row: dict[str, Any], max_prompt: int, max_completion: int) -> dict[str, Any]:
    # The prompt's end (the question and the assistant header) and the completions' start are what DPO compares.
    return {
        "prompt_ids": row["prompt_ids"][-max_prompt:],
        "chosen_ids": row["chosen_ids"][:max_completion],
        "rejected_ids": row["rejected_ids"][:max_completion],
    }


def dpo_trainer(init_path: Path, pairs: Sequence[Pair], work_dir: Path, cfg: TrainConfig, where: Placement, seed: int):
    """A trl DPOTrainer over `pairs` (already checked by `usable_pairs`), with our truncation applied."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    for name in ("transformers.trainer", "trl"):
        logging.getLogger(name).setLevel(logging.WARNING)
    tokenizer = load_tokenizer(init_path)
    model = load_model(init_path, where)
    data = Dataset.from_list(
        [
            {
                "prompt": p.messages or [{"role": "user", "content": p.prompt}],
                "chosen": [{"role": "assistant", "content": p.chosen}],
                "rejected": [{"role": "assistant", "content": p.rejected}],
            }
            for p in pairs
        ]
    )
    steps = math.ceil(math.ceil(len(pairs) / cfg.batch_size) / cfg.grad_accum * cfg.epochs)
    args = DPOConfig(
        output_dir=str(work_dir),
        beta=cfg.beta,
        loss_type=[cfg.loss_type],
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_length=None,  # our own limits below; trl's would cut the prompt's end and the completions
        logging_steps=max(1, steps // 10),  # about ten readings per stage
        save_strategy="steps",
        save_steps=cfg.checkpoint_every,
        save_total_limit=1,
        report_to=[],
        seed=seed,
        data_seed=seed,
        use_cpu=where.device == "cpu",
        bf16=where.dtype == torch.bfloat16,
        fp16=where.dtype == torch.float16,
        dataloader_num_workers=0,
        dataset_num_proc=None,
    )
    peft_config = ref_model = None
    if cfg.method == "lora":
        peft_config = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    else:
        ref_model = load_model(init_path, where).eval().requires_grad_(False)
    trainer = DPOTrainer(
        model=model, ref_model=ref_model, args=args, train_dataset=data, processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.train_dataset = trainer.train_dataset.map(
        _truncate,
        fn_kwargs={"max_prompt": cfg.max_prompt_length, "max_completion": cfg.max_completion_length},
        desc="Truncating train dataset",
    )
    return trainer


def train_dpo(
    init_path: Path,
    pairs: Sequence[Pair],
    out_dir: Path,
    work_dir: Path,
    cfg: TrainConfig,
    where: Placement,
    seed: int,
) -> dict[str, Any]:
    """Train the model at `init_path` on preference `pairs`; write the merged result to `out_dir` atomically."""
    kept = usable_pairs(pairs)
    trainer = dpo_trainer(init_path, kept, work_dir, cfg, where, seed)
    # Each pair is two sequences: prompt + chosen and prompt + rejected.
    tokens_per_epoch = sum(
        2 * len(row["prompt_ids"]) + len(row["chosen_ids"]) + len(row["rejected_ids"]) for row in trainer.train_dataset
    )
    resume_from = _latest_checkpoint(work_dir)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - start
    logs = [h for h in trainer.state.log_history if "loss" in h]
    # A resumed run only trained the steps after its checkpoint.
    done_before = int(Path(resume_from).name.split("-")[1]) if resume_from else 0
    run_share = (result.global_step - done_before) / result.global_step if result.global_step else 0.0

    trained = trainer.model
    if cfg.method == "lora":
        trained = trained.merge_and_unload()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trained.save_pretrained(tmp)
    trainer.processing_class.save_pretrained(tmp)
    atomic_replace_dir(tmp, out_dir)
    shutil.rmtree(work_dir, ignore_errors=True)

    def first_last(key: str) -> tuple[float | None, float | None]:
        values = [h[key] for h in logs if key in h]
        return (values[0], values[-1]) if values else (None, None)

    first_loss, final_loss = first_last("loss")
    first_acc, final_acc = first_last("rewards/accuracies")
    first_margin, final_margin = first_last("rewards/margins")
    return {
        "pairs": len(kept),
        "dropped_pairs": len(pairs) - len(kept),
        "steps": result.global_step,
        "epochs": cfg.epochs,
        "tokens_per_epoch": tokens_per_epoch,
        "first_loss": first_loss,
        "final_loss": final_loss,
        "train_loss": result.training_loss,
        "first_reward_accuracy": first_acc,
        "final_reward_accuracy": final_acc,
        "first_reward_margin": first_margin,
        "final_reward_margin": final_margin,
        "resumed_from": resume_from,
        "seconds": seconds,
        "tokens_per_second": tokens_per_epoch * cfg.epochs * run_share / seconds if seconds > 0 else None,
    }


class DPO:
    """The preference trainer (a Trainer, selfplay.interfaces): Pairs in, a merged checkpoint out."""

    record_type = Pair

    def train(
        self, init_path: Path, records: Sequence[Pair], out_dir: Path, work_dir: Path, cfg: TrainConfig,
        where: Placement, seed: int,
    ) -> dict[str, Any]:
        return train_dpo(init_path, records, out_dir, work_dir, cfg, where, seed)
