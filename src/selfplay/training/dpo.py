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
`train.lora_dropout` and `train.max_length` do not apply here. Checkpoints, resume and the merged save are
`selfplay.training.common`'s, shared with SFT.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfplay.config import TrainConfig
from selfplay.errors import UserError
from selfplay.models import Placement, load_model, load_tokenizer
from selfplay.records import Pair
from selfplay.training.common import first_last, lora_config, quiet, train_and_save, trainer_settings


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
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    quiet()
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
    args = DPOConfig(
        **trainer_settings(cfg, len(pairs), work_dir, where, seed), beta=cfg.beta, loss_type=[cfg.loss_type],
        max_length=None,  # our own limits below; trl's would cut the prompt's end and the completions
    )
    peft_config = lora_config(cfg)
    ref_model = None if peft_config is not None else load_model(init_path, where).eval().requires_grad_(False)
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
    stats = train_and_save(trainer, cfg, out_dir, work_dir, tokens_per_epoch)
    logs = trainer.state.log_history
    first_loss, final_loss = first_last(logs, "loss")
    first_acc, final_acc = first_last(logs, "rewards/accuracies")
    first_margin, final_margin = first_last(logs, "rewards/margins")
    return {
        "pairs": len(kept), "dropped_pairs": len(pairs) - len(kept), **stats,
        "first_loss": first_loss, "final_loss": final_loss,
        "first_reward_accuracy": first_acc, "final_reward_accuracy": final_acc,
        "first_reward_margin": first_margin, "final_reward_margin": final_margin,
    }


class DPO:
    """The preference trainer (a Trainer, selfplay.interfaces): Pairs in, a merged checkpoint out."""

    record_type = Pair

    def train(
        self, init_path: Path, records: Sequence[Pair], out_dir: Path, work_dir: Path, cfg: TrainConfig,
        where: Placement, seed: int,
    ) -> dict[str, Any]:
        return train_dpo(init_path, records, out_dir, work_dir, cfg, where, seed)
