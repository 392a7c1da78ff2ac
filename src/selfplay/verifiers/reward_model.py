"""A trained reward model as a verifier: `verify.verifier: reward_model`, `verify.options: {path: RM_FOLDER}`.

The folder is what `selfplay train-rm` writes: a sequence-classification checkpoint with one output, the reward.
A sample's score is that reward for the problem's conversation followed by the completion, rendered with the
model's chat template as trl's RewardTrainer rendered its training pairs; it passes when the reward is at least
`threshold`. Scores are unbounded (a Bradley-Terry model fixes only their differences), so RFT's best-of-n,
Self-Rewarding's pairs and grpo's advantages use them as they are, and `threshold` is for the pass/fail figures.

It reads no answers, so it can score a task whose labels are hidden, and it is a learned proxy: the reward-hacking
audit compares it with the task's checker every iteration.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from selfplay.errors import UserError
from selfplay.records import Problem, Sample, Verdict

NAME = "reward_model"


class RewardModelVerifier:
    name = NAME

    def __init__(self, path: str, threshold: float = 0.0, batch_size: int = 16, max_length: int = 1024,
                 device: str = "auto", strict_format: bool = False):
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise UserError(f"verify.options.path: {folder} is not a reward model folder (no config.json); train one "
                            "with: selfplay train-rm PAIRS.jsonl OUT")
        self.path, self.threshold, self.batch_size, self.max_length = folder, float(threshold), batch_size, max_length
        self.device = device
        self._model = None
        self._tokenizer = None

    def _load(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            device = "cuda" if self.device == "auto" and torch.cuda.is_available() else (
                "cpu" if self.device == "auto" else self.device)
            model = AutoModelForSequenceClassification.from_pretrained(self.path, num_labels=1)
            if model.config.num_labels != 1:
                raise UserError(f"verify.options.path: {self.path} has {model.config.num_labels} outputs; a reward "
                                "model has one")
            self._model = model.to(device).eval()
            self._tokenizer = AutoTokenizer.from_pretrained(self.path)
            if self._tokenizer.pad_token is None:
                self._tokenizer.pad_token = self._tokenizer.eos_token
        return self._model, self._tokenizer

    def scores(self, items: Sequence[tuple[Problem, str]]) -> list[float]:
        """The reward of each (problem, completion), `batch_size` at a time."""
        import torch

        model, tok = self._load()
        texts = [tok.apply_chat_template([*p.chat(), {"role": "assistant", "content": c}], tokenize=False)
                 for p, c in items]
        out: list[float] = []
        with torch.inference_mode():
            for b in range(0, len(texts), self.batch_size):
                enc = tok(texts[b : b + self.batch_size], add_special_tokens=False, padding=True, truncation=True,
                          max_length=self.max_length, return_tensors="pt", padding_side="right").to(model.device)
                out.extend(model(**enc).logits[:, 0].float().tolist())
        return out

    def verify(self, problem: Problem, sample: Sample) -> Verdict:
        return self.verify_many([(problem, sample)])[0]

    def verify_many(self, items: Sequence[tuple[Problem, Sample]]) -> list[Verdict]:
        rewards = self.scores([(p, s.completion) for p, s in items])
        return [Verdict(s.id, p.id, r, r >= self.threshold, None, self.name, details={"reward": r})
                for (p, s), r in zip(items, rewards, strict=True)]
