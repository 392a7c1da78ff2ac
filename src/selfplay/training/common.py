"""What the SFT and DPO trainers share: trl's common settings, the LoRA adapter, resume and the merged save.

Trainer checkpoints every `train.checkpoint_every` steps (one kept) make a killed training stage resume
where it stopped; LoRA adapters are merged into the weights on save, so every iteration's `model/` is a
plain checkpoint that `AutoModelForCausalLM.from_pretrained` and vLLM load; `model/` appears atomically.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from selfplay import progress
from selfplay.config import TrainConfig
from selfplay.errors import disk_full
from selfplay.files import atomic_replace_dir
from selfplay.models import Placement


def quiet() -> None:
    for name in ("transformers.trainer", "trl"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _complete(checkpoint: Path) -> bool:
    """A checkpoint folder is complete once its trainer state, the last file the trainer saves, reads whole."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def discard_partial(work_dir: Path, out_dir: Path | None = None) -> list[str]:
    """Remove the checkpoints a kill or a full disk left half written (and a half-saved merged model).

    Resume must never load one, and the trainer's rotation would otherwise keep a torn higher-numbered
    checkpoint over the last whole one. Returns the names removed.
    """
    removed = [c for c in work_dir.glob("checkpoint-*") if c.is_dir() and not _complete(c)]
    if out_dir is not None:
        removed += [p for p in [out_dir.with_name(out_dir.name + ".tmp")] if p.exists()]
    for c in removed:
        shutil.rmtree(c, ignore_errors=True)
    return [c.name for c in removed]


def latest_checkpoint(work_dir: Path) -> str | None:
    """The last whole checkpoint in `work_dir`, after removing any torn ones."""
    discard_partial(work_dir)
    ckpts = sorted(work_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return str(ckpts[-1]) if ckpts else None


def trainer_settings(cfg: TrainConfig, records: int, work_dir: Path, where: Placement, seed: int) -> dict[str, Any]:
    """Keyword arguments of trl's SFTConfig / DPOConfig that both trainers set the same way."""
    import torch

    ranks = cfg.num_processes if cfg.launcher == "accelerate" else 1  # train.batch_size is per rank
    steps = math.ceil(math.ceil(records / (cfg.batch_size * ranks)) / cfg.grad_accum * cfg.epochs)
    return dict(
        output_dir=str(work_dir), num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate, lr_scheduler_type="linear",
        warmup_steps=0, weight_decay=0.0,
        logging_steps=max(1, steps // 10),  # about ten readings per stage
        save_strategy="steps", save_steps=cfg.checkpoint_every, save_total_limit=1, report_to=[],
        seed=seed, data_seed=seed, use_cpu=where.device == "cpu",
        bf16=where.dtype == torch.bfloat16, fp16=where.dtype == torch.float16,
        dataloader_num_workers=0, dataset_num_proc=None,
    )


def lora_config(cfg: TrainConfig):
    """The LoRA adapter for `train.method: lora` (None for full fine-tuning)."""
    if cfg.method != "lora":
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")


def train_and_save(trainer, cfg: TrainConfig, out_dir: Path, work_dir: Path, tokens_per_epoch: int) -> dict[str, Any]:
    """Train (from the latest checkpoint, if any), write the merged model to `out_dir`, and the common figures."""
    resume_from = latest_checkpoint(work_dir)
    start = time.perf_counter()
    trainer.add_callback(progress.trainer_callback())  # each step into the run's progress.json
    try:
        result = trainer.train(resume_from_checkpoint=resume_from)
    except BaseException as e:
        full = isinstance(e, Exception) and disk_full(work_dir)  # read before the clean-up frees space
        discard_partial(work_dir)  # a full disk or Ctrl-C mid-save: resume starts from the last whole checkpoint
        if full:  # torch's writers lose the OS error (RuntimeError: "unexpected pos ..."); name the cause
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(work_dir)) from e
        raise
    seconds = time.perf_counter() - start
    # A resumed run only trained the steps after its checkpoint.
    done_before = int(Path(resume_from).name.split("-")[1]) if resume_from else 0
    run_share = (result.global_step - done_before) / result.global_step if result.global_step else 0.0
    # Under `accelerate launch` (train.launcher) every rank gets here; rank 0 writes, the others wait for it.
    accelerator = trainer.accelerator
    if accelerator.num_processes > 1:
        save_from_ranks(trainer, cfg, out_dir, work_dir)
    else:
        save_merged(trainer, cfg, out_dir)
        shutil.rmtree(work_dir, ignore_errors=True)
    return {
        "steps": result.global_step,
        "epochs": cfg.epochs,
        "tokens_per_epoch": tokens_per_epoch,
        "train_loss": result.training_loss,
        "resumed_from": resume_from,
        "seconds": seconds,
        "tokens_per_second": tokens_per_epoch * cfg.epochs * run_share / seconds if seconds > 0 else None,
    }


def save_from_ranks(trainer, cfg: TrainConfig, out_dir: Path, work_dir: Path) -> None:
    """Several ranks (`accelerate launch`): every rank takes part in the trainer's own save, which gathers what
    DeepSpeed ZeRO-3 or FSDP shard; rank 0 then merges the saved adapters (LoRA) and writes `out_dir`."""
    accelerator = trainer.accelerator
    saved = work_dir / "final"
    trainer.save_model(str(saved))  # collective: every rank calls it, rank 0 writes
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if cfg.method == "lora":
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(str(saved), dtype=trainer.model.dtype)
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(str(saved), dtype=trainer.model.dtype)
        save_merged(trainer, cfg, out_dir, model)
        shutil.rmtree(work_dir, ignore_errors=True)
    accelerator.wait_for_everyone()


def save_merged(trainer, cfg: TrainConfig, out_dir: Path, model=None) -> None:
    """The trained model (`model`, else the trainer's), its LoRA adapters merged, written to `out_dir` atomically
    with the tokenizer."""
    trained = model if model is not None else trainer.model
    if cfg.method == "lora":
        trained = trained.merge_and_unload()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        trained.save_pretrained(tmp)
        trainer.processing_class.save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the checkpoints stay: resume saves the merged model again
        raise
    atomic_replace_dir(tmp, out_dir)


def first_last(log_history: list[dict[str, Any]], key: str) -> tuple[Any, Any]:
    """The first and last logged value of `key` (a loss, a reward accuracy), or (None, None)."""
    values = [h[key] for h in log_history if key in h]
    return (values[0], values[-1]) if values else (None, None)
