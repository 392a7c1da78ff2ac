"""The default generation backend: batched `model.generate` from transformers, on CPU or one GPU.

Prompts are sorted by length and batched whole-problem-at-a-time (k samples of a problem share one
batch), which cuts padding and lets the caller persist finished problems as each batch returns.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from pathlib import Path

from selfplay.errors import UserError
from selfplay.interfaces import Completion, SamplingParams
from selfplay.models import Placement, load_model, load_tokenizer
from selfplay.records import Problem


def stop_ids(generation_config, tokenizer) -> set[int]:
    """The tokens that end a completion: the generation config's end-of-sequence ids and the tokenizer's."""
    eos = generation_config.eos_token_id
    eos_ids = eos if isinstance(eos, list) else [eos]
    return {i for i in eos_ids + [tokenizer.eos_token_id] if i is not None}


def encode_prompts(tokenizer, problems: Sequence[Problem]) -> list[list[int]]:
    """Each problem's turns through the chat template, as token ids (the template carries its special tokens)."""
    texts = [tokenizer.apply_chat_template(p.chat(), add_generation_prompt=True, tokenize=False) for p in problems]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def to_completion(tokenizer, seq: list[int], stops: set[int]) -> Completion:
    """New tokens up to (not including) the first stop token; 'length' when none came."""
    stop = next((j for j, t in enumerate(seq) if t in stops), None)
    n_tok = len(seq) if stop is None else stop
    return Completion(tokenizer.decode(seq[:n_tok], skip_special_tokens=True), n_tok,
                      "length" if stop is None else "stop")


def option_token_ids(tokenizer, prefix: str, options: Sequence[str]) -> tuple[str, list[int]]:
    """The prefix to force and each option's one token after it.

    Tokenizers split 'Score: 3' differently ('Score', ':', ' ', '3' or 'Score', ':', ' 3'), so the prefix is
    tried as given and without its trailing space (the option then carries the space).
    """
    for forced, lead in ((prefix, ""), (prefix.rstrip(), prefix[len(prefix.rstrip()):])):
        base = tokenizer(forced, add_special_tokens=False)["input_ids"]
        ids = []
        for option in options:
            full = tokenizer(forced + lead + option, add_special_tokens=False)["input_ids"]
            if full[: len(base)] != base or len(full) != len(base) + 1:
                break
            ids.append(full[-1])
        else:
            if len(set(ids)) == len(ids):
                return forced, ids
    raise UserError(f"the model's tokenizer does not spell each of {list(options)} as one token after "
                    f"{prefix!r}; the constrained judge cannot read its probabilities (use judge.mode: generate)")


MIN_SHARED = 16  # a prefix common to every prompt of a call is computed once when it is at least this long


def option_logprobs(model, tokenizer, problems: Sequence[Problem], prefix: str, options: Sequence[str],
                    batch_size: int) -> list[list[float]]:
    """For each problem, the model's log-probabilities of each one-token option after its chat and `prefix`.

    A judge's prompts share their rubric's opening: the part common to every prompt of the call is run once,
    and its keys and values are reused by every row. The rest of each prompt is right-padded (its own tokens
    never attend to the padding after them), and only each row's last position goes through the vocabulary head.
    """
    import copy

    import torch

    forced, ids = option_token_ids(tokenizer, prefix, options)
    texts = [tokenizer.apply_chat_template(p.chat(), add_generation_prompt=True, tokenize=False) + forced
             for p in problems]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    if not encoded:
        return []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model.device
    shared = 0  # the common prefix, leaving every prompt at least one token of its own
    limit = min(len(e) for e in encoded) - 1
    while shared < limit and all(e[shared] == encoded[0][shared] for e in encoded):
        shared += 1
    if shared < MIN_SHARED:
        shared = 0
    out: list[list[float] | None] = [None] * len(problems)
    order = sorted(range(len(problems)), key=lambda i: -len(encoded[i]))
    with torch.inference_mode():
        cache = None
        if shared:
            head = torch.tensor([encoded[0][:shared]], device=device)
            cache = model.base_model(input_ids=head, use_cache=True).past_key_values
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            tails = [encoded[i][shared:] for i in idx]
            width = max(len(t) for t in tails)
            input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), shared + width), dtype=torch.long)
            mask[:, :shared] = 1
            for row, t in enumerate(tails):
                input_ids[row, : len(t)] = torch.tensor(t)
                mask[row, shared : shared + len(t)] = 1
            positions = (shared + torch.arange(width)).expand(len(idx), width)
            past = None
            if cache is not None:
                past = copy.deepcopy(cache)
                past.batch_repeat_interleave(len(idx))
            hidden = model.base_model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                      position_ids=positions.to(device), past_key_values=past,
                                      use_cache=past is not None).last_hidden_state
            last = torch.tensor([len(t) - 1 for t in tails], device=hidden.device)
            hidden = hidden[torch.arange(len(idx), device=hidden.device), last]
            logps = torch.log_softmax(model.get_output_embeddings()(hidden).float(), dim=-1)[:, ids]
            for row, i in enumerate(idx):
                out[i] = logps[row].tolist()
    return out  # type: ignore[return-value]


class TransformersGenerator:
    def __init__(self, model, tokenizer, model_name: str):
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.stop_ids = stop_ids(model.generation_config, tokenizer)

    def _encode(self, problems: Sequence[Problem]) -> list[list[int]]:
        return encode_prompts(self.tokenizer, problems)

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

    def generate(
        self, problems: Sequence[Problem], params: SamplingParams, batch_size: int
    ) -> Iterator[list[tuple[Problem, list[Completion]]]]:
        """Longest prompts first (an out-of-memory batch shows at the start), `batch_size // n` problems a call."""
        import torch

        if not problems:
            return
        encoded = self._encode(problems)
        order = sorted(range(len(problems)), key=lambda i: -len(encoded[i]))
        per_batch = max(1, batch_size // params.n)
        torch.manual_seed(params.seed)
        self.model.eval()
        for b in range(0, len(order), per_batch):
            idx = order[b : b + per_batch]
            new = self._run([encoded[i] for i in idx], params)
            yield [
                (problems[i], [to_completion(self.tokenizer, seq, self.stop_ids)
                               for seq in new[row * params.n : (row + 1) * params.n]])
                for row, i in enumerate(idx)
            ]

    def option_logprobs(self, problems: Sequence[Problem], prefix: str, options: Sequence[str],
                        batch_size: int) -> list[list[float]]:
        """Log-probabilities of one-token options after each problem's chat and a forced prefix (a judge's score)."""
        return option_logprobs(self.model, self.tokenizer, problems, prefix, options, batch_size)

    def close(self) -> None:
        self.model = None
        gc.collect()


def transformers_backend(model_path: Path, where: Placement, **options: object) -> TransformersGenerator:
    """Factory for `generate.backend: transformers`; it takes no options."""
    if options:
        raise UserError(f"generate.options: the transformers backend takes no options (got {', '.join(options)})")
    return TransformersGenerator(load_model(model_path, where), load_tokenizer(model_path), str(model_path))
