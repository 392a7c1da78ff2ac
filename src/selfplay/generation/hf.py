"""The default generation backend: batched `model.generate` from transformers, on CPU or one GPU.

Prompts are sorted by length and batched whole-problem-at-a-time (k samples of a problem share one
batch), which cuts padding and lets the caller persist finished problems as each batch returns.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from tqdm.auto import tqdm

from selfplay.generation.base import SamplingParams
from selfplay.records import Problem, Sample


class TransformersGenerator:
    def __init__(self, model, tokenizer, model_name: str, batch_size: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.batch_size = batch_size
        eos = model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        self.stop_ids = {i for i in eos_ids + [tokenizer.eos_token_id] if i is not None}

    def _encode(self, problems: Sequence[Problem]) -> list[list[int]]:
        texts = [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": p.prompt}], add_generation_prompt=True, tokenize=False
            )
            for p in problems
        ]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _run(self, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
        """One generate() call on left-padded prompts; returns only the new tokens of each sequence."""
        import torch

        pad_id = self.tokenizer.pad_token_id
        width = max(len(ids) for ids in prompts)
        input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):  # left padding, so every prompt ends where generation starts
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        kwargs = dict(max_new_tokens=params.max_new_tokens, pad_token_id=pad_id, num_return_sequences=params.n)
        if params.temperature == 0.0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        device = self.model.device
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
        return out[:, width:].tolist()

    def _sample(self, problem: Problem, k: int, seq: list[int]) -> Sample:
        stop = next((j for j, t in enumerate(seq) if t in self.stop_ids), None)
        n_tok = len(seq) if stop is None else stop
        return Sample(
            id=f"{problem.id}/s{k}",
            problem_id=problem.id,
            completion=self.tokenizer.decode(seq[:n_tok], skip_special_tokens=True),
            num_tokens=n_tok,
            finish_reason="length" if stop is None else "stop",
            model=self.model_name,
        )

    def generate(
        self, problems: Sequence[Problem], params: SamplingParams, desc: str = "generate"
    ) -> Iterator[list[Sample]]:
        """Yield, batch by batch, all `params.n` samples of each problem in the batch."""
        import torch

        if not problems:
            return
        if params.temperature == 0.0 and params.n > 1:
            raise ValueError("greedy decoding gives one sample per problem; use temperature > 0 for n > 1")
        encoded = self._encode(problems)
        order = sorted(range(len(problems)), key=lambda i: -len(encoded[i]))
        per_batch = max(1, self.batch_size // params.n)
        torch.manual_seed(params.seed)
        self.model.eval()
        bar = tqdm(total=len(problems) * params.n, desc=desc, unit="sample", dynamic_ncols=True)
        start, tokens = time.perf_counter(), 0
        try:
            for b in range(0, len(order), per_batch):
                idx = order[b : b + per_batch]
                new = self._run([encoded[i] for i in idx], params)
                batch = [
                    self._sample(problems[idx[row // params.n]], row % params.n, seq) for row, seq in enumerate(new)
                ]
                tokens += sum(s.num_tokens for s in batch)
                bar.update(len(batch))
                bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - start):.0f}", refresh=False)
                yield batch
        finally:
            bar.close()  # also when interrupted, so the bar does not print over later messages
