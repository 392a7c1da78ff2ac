"""The default CPU backend: our own decode loop over a transformers model, with continuous batching.

`model.generate` spends most of its time on work that produces no token: each of the k samples of a
problem prefills the same prompt again, every row of a batch is decoded until the longest one ends
(rows that finished keep decoding padding), and the whole vocabulary is sorted for top-p at every step.
This backend keeps the model's own modules (embeddings, norms, projections, rotary embedding, MLP, head)
and replaces the loop around them:

- **one prefill per prompt**: a problem's prompt is run once and its keys and values are copied into
  the k rows that sample from it; only the last prompt position goes through the vocabulary head;
- **continuous batching**: a fixed number of rows (`batch_size`) each with its own length in a
  preallocated key/value cache; a row that ends is refilled at once with the next waiting sample,
  so no step decodes padding and a batch never waits for its longest row;
- **exact top-p from the top candidates**: the nucleus is found among the 64 most likely tokens when
  they hold the top-p mass (nearly always), with a full sort only for the rows where they do not.

Greedy output is the same as `generate`'s token for token (tests check it on the tiny and the real
model); sampling uses the same temperature and top-p semantics (temperature first, then the smallest
set of most likely tokens whose mass reaches top-p, no top-k). Each sample draws from its own random stream,
seeded by (params.seed, problem id, sample index) like the vLLM backend's, so a problem's samples are the same
whatever batch, order or worker drew them (a Ray worker, a resumed stage).

It runs decoder-only models whose layers are the Llama layout (Llama, Mistral without a sliding
window, Qwen2, Qwen3); any other model falls back to `generate`, with one line saying so.
"""

from __future__ import annotations

import gc
import importlib
import os
import random
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from selfplay.errors import UserError
from selfplay.generation.base import sample_seed
from selfplay.generation.hf import TransformersGenerator, encode_prompts, option_logprobs, stop_ids, to_completion
from selfplay.interfaces import Completion, SamplingParams
from selfplay.models import Placement, load_model, load_tokenizer
from selfplay.records import Problem

SUPPORTED = {"llama", "mistral", "qwen2", "qwen3"}
TOP_CANDIDATES = 64  # the nucleus is searched among this many tokens before falling back to a full sort
PREFILL_TOKENS = 4096  # prompt tokens per prefill forward (padded), which bounds its activation memory
MIN_PREFIX = 8  # a shorter shared prefix is not worth a forward of its own


def nucleus(probs, top_p: float, candidates: int | None = None):
    """Top-p filtering as transformers does it, without sorting the vocabulary: [(rows, weights, token ids)].

    A token stays when the tokens ranked above it hold less than `top_p` of the mass, so the most likely
    token always stays. For most rows the top `candidates` tokens hold `top_p` of the mass and settle it;
    the other rows (flat distributions) are sorted whole. Weights are the kept tokens' probabilities.
    """
    import torch

    values, index = probs.topk(min(candidates or TOP_CANDIDATES, probs.shape[-1]), dim=-1)
    short = values.sum(-1) < top_p
    groups = [(torch.arange(len(probs), device=probs.device), values, index)]
    if values.shape[-1] < probs.shape[-1] and bool(short.any()):
        flat = short.nonzero()[:, 0]
        settled = (~short).nonzero()[:, 0]
        groups = [(settled, values[settled], index[settled]), (flat, *probs[flat].sort(dim=-1, descending=True))]
    return [(rows, v.masked_fill(v.cumsum(-1) - v >= top_p, 0.0), i) for rows, v, i in groups if len(rows)]


def _invert(weights, uniform):
    """Per row, the index where the cumulative `weights` first pass `uniform` times their total: a draw from the
    row's weights (zero-weight entries are never chosen), with the row's own uniform number."""
    import torch

    cdf = weights.cumsum(-1)
    total = cdf[:, -1:]
    target = torch.minimum(uniform[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True)[:, 0].clamp_(max=weights.shape[-1] - 1)


def unsupported_reason(model) -> str | None:
    """Why this backend cannot run `model` (None when it can)."""
    config = model.config
    kind = getattr(config, "model_type", "?")
    if kind not in SUPPORTED:
        return f"model_type '{kind}' is not one of {', '.join(sorted(SUPPORTED))}"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return f"{kind} with a sliding attention window"
    if getattr(config, "_attn_implementation", "sdpa") not in ("sdpa", "eager"):
        return f"attention implementation '{config._attn_implementation}'"
    return None


@dataclass
class _Prompt:
    """A prefilled prompt: its last position's logits and its keys/values, layer by layer ([heads, len, d])."""

    logits: object
    layers: list


@dataclass
class _Prefix:
    """The leading tokens all prompts of a call share, prefilled once ([1, heads, len, d] per layer)."""

    length: int
    layers: list


@dataclass
class _Row:
    """One sample being decoded: which problem and which of its samples, its random stream, the new tokens so far."""

    problem: int
    sample: int
    rng: random.Random
    tokens: list[int] = field(default_factory=list)


class ContinuousGenerator:
    def __init__(self, model, tokenizer, model_name: str):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.stop_ids = stop_ids(model.generation_config, tokenizer)
        module = importlib.import_module(type(model).__module__)
        self._rotate = module.apply_rotary_pos_emb
        self._layers = model.model.layers
        cfg = model.config
        first = self._layers[0].self_attn
        self._head_dim = first.head_dim
        self._kv_heads = cfg.num_key_value_heads
        self._groups = first.num_key_value_groups

    # ----- the model, step by step -----------------------------------------------------------------------

    def _attention_inputs(self, n: int, x, cos, sin):
        """q, k, v of layer n for hidden states x [b, t, h], rotated, as [b, heads, t, d]."""
        attn = self._layers[n].self_attn
        shape = (*x.shape[:-1], -1, self._head_dim)
        q, k, v = attn.q_proj(x).view(shape), attn.k_proj(x).view(shape), attn.v_proj(x).view(shape)
        if hasattr(attn, "q_norm"):  # Qwen3 normalises each head before the rotation
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = self._rotate(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        return q, k, v.transpose(1, 2)

    def _finish_layer(self, n: int, x, residual, attended):
        """Output projection, residual, then the MLP block, as the model's own decoder layer does it."""
        layer = self._layers[n]
        x = residual + layer.self_attn.o_proj(attended.transpose(1, 2).reshape(*x.shape[:-1], -1))
        return x + layer.mlp(layer.post_attention_layernorm(x))

    def _prefill(self, prompts: list[list[int]], prefix: _Prefix | None) -> list[_Prompt]:
        """Run right-padded prompts (after the shared prefix, whose keys/values are reused) in one forward.

        Returns each prompt's last-token logits and its keys/values per layer, prefix included.
        """
        import torch
        import torch.nn.functional as F

        device = self.model.device
        start = prefix.length if prefix else 0
        tails = [p[start:] for p in prompts]
        width = max(len(t) for t in tails)
        ids = torch.zeros((len(tails), width), dtype=torch.long)
        for i, t in enumerate(tails):
            ids[i, : len(t)] = torch.tensor(t)
        ids = ids.to(device)
        positions = start + torch.arange(width, device=device).expand(len(tails), width)
        # a tail token sees the whole prefix and the tail up to itself; with right padding, a real token
        # never sees the padding after it
        query, key = torch.arange(width, device=device)[:, None], torch.arange(start + width, device=device)[None]
        visible = (key < start) | (key - start <= query)
        x = self.model.model.embed_tokens(ids)
        cos, sin = self.model.model.rotary_emb(x, positions)
        states = []
        for n, layer in enumerate(self._layers):
            residual = x
            q, k, v = self._attention_inputs(n, layer.input_layernorm(x), cos, sin)
            if prefix:
                k = torch.cat([prefix.layers[n][0].expand(len(tails), -1, -1, -1), k], dim=2)
                v = torch.cat([prefix.layers[n][1].expand(len(tails), -1, -1, -1), v], dim=2)
            attended = F.scaled_dot_product_attention(
                q, k, v, attn_mask=visible, scale=layer.self_attn.scaling, enable_gqa=self._groups > 1
            )
            states.append((k, v))
            x = self._finish_layer(n, x, residual, attended)
        last = torch.tensor([len(t) - 1 for t in tails], device=device)
        logits = self.model.lm_head(self.model.model.norm(x[torch.arange(len(tails), device=device), last])).float()
        return [
            _Prompt(logits[i], [(k[i, :, : len(p)], v[i, :, : len(p)]) for k, v in states])
            for i, p in enumerate(prompts)
        ]

    def _shared_prefix(self, prompts: list[list[int]]) -> _Prefix | None:
        """Keys/values of the tokens every prompt starts with (system prompt, exemplar), computed once."""
        first = min(prompts, key=len)
        # every prompt keeps at least one token of its own, for its logits
        length = min(len(os.path.commonprefix(prompts)), len(first) - 1)
        if length < MIN_PREFIX:
            return None
        [state] = self._prefill([first[:length]], None)
        return _Prefix(length, [(k[None], v[None]) for k, v in state.layers])

    def _decode(self, tokens, lengths, cache):
        """One new token for each of the first n rows: tokens [n], lengths [n] (cache positions in use)."""
        import torch
        import torch.nn.functional as F

        n = tokens.shape[0]
        width = int(lengths.max()) + 1
        rows = torch.arange(n, device=tokens.device)
        x = self.model.model.embed_tokens(tokens[:, None])
        cos, sin = self.model.model.rotary_emb(x, lengths[:, None])
        visible = (torch.arange(width, device=tokens.device)[None, :] <= lengths[:, None])[:, None, None, :]
        for n_layer, (layer, (k_cache, v_cache)) in enumerate(zip(self._layers, cache, strict=True)):
            residual = x
            q, k, v = self._attention_inputs(n_layer, layer.input_layernorm(x), cos, sin)
            k_cache[rows, :, lengths] = k[:, :, 0]
            v_cache[rows, :, lengths] = v[:, :, 0]
            # the query heads that share a key/value head attend as one group (no copies of the cache)
            grouped = q.reshape(n, self._kv_heads, self._groups, self._head_dim)
            attended = F.scaled_dot_product_attention(
                grouped, k_cache[:n, :, :width], v_cache[:n, :, :width], attn_mask=visible,
                scale=layer.self_attn.scaling,
            ).reshape(n, -1, 1, self._head_dim)
            x = self._finish_layer(n_layer, x, residual, attended)
        return self.model.lm_head(self.model.model.norm(x[:, 0])).float()

    # ----- choosing tokens ---------------------------------------------------------------------------------

    @staticmethod
    def _choose(logits, params: SamplingParams, rows: Sequence[_Row]):
        """Next token of each row: argmax when greedy, else a draw from the temperature-scaled top-p set, by
        inverting the set's cumulative mass at one uniform number from the row's own stream."""
        import torch

        if params.temperature == 0.0:
            return logits.argmax(-1)
        probs = torch.softmax(logits / params.temperature, dim=-1)
        uniform = torch.tensor([r.rng.random() for r in rows], dtype=probs.dtype, device=probs.device)
        if params.top_p >= 1.0:
            return _invert(probs, uniform)
        chosen = torch.empty(len(probs), dtype=torch.long, device=probs.device)
        for where, weights, index in nucleus(probs, params.top_p):
            chosen[where] = index.gather(-1, _invert(weights, uniform[where])[:, None])[:, 0]
        return chosen

    # ----- the scheduler -----------------------------------------------------------------------------------

    def generate(
        self, problems: Sequence[Problem], params: SamplingParams, batch_size: int
    ) -> Iterator[list[tuple[Problem, list[Completion]]]]:
        """Yield problems as their last sample ends; up to `batch_size` rows decode at once."""
        if not problems:
            return
        keys = [p.id for p in problems]
        for ready in self.generate_tokens(encode_prompts(self.tokenizer, problems), params, batch_size, keys):
            yield [(problems[i], [to_completion(self.tokenizer, seq, self.stop_ids) for seq in seqs])
                   for i, seqs in ready]

    def generate_tokens(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams, batch_size: int,
        keys: Sequence[str] | None = None,
    ) -> Iterator[list[tuple[int, list[list[int]]]]]:
        """The decode loop on token ids: yield (prompt index, its `params.n` token lists) as a prompt's last
        sample ends. Each list holds the new tokens up to and including the stop token (none when cut at
        `max_new_tokens`), the form an RL trainer scores and trains on. Sample j of prompt i draws from the
        stream of (params.seed, keys[i], j); the keys are the problem ids (default: the prompts' positions)."""
        import torch

        if not prompts:
            return
        prompts = [list(p) for p in prompts]
        # longest prompts first, so that a batch too big for memory shows at the start
        waiting = deque((i, j) for i in sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
                        for j in range(params.n))
        rows_max = max(1, batch_size)
        device, dtype = self.model.device, self.model.dtype
        width = max(len(p) for p in prompts) + params.max_new_tokens
        shape = (rows_max, self._kv_heads, width, self._head_dim)
        cache = [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                 for _ in self._layers]
        keys = [str(i) for i in range(len(prompts))] if keys is None else [str(k) for k in keys]
        rows: list[_Row] = []
        lengths = torch.zeros(rows_max, dtype=torch.long, device=device)
        last = torch.zeros(rows_max, dtype=torch.long, device=device)
        done: dict[int, list[list[int] | None]] = {}
        store: dict[int, _Prompt] = {}  # the prefilled prompt whose samples are still waiting, if any

        def finished(row: _Row) -> bool:
            return row.tokens[-1] in self.stop_ids or len(row.tokens) >= params.max_new_tokens

        def complete(row: _Row) -> None:
            done.setdefault(row.problem, [None] * params.n)[row.sample] = row.tokens

        with torch.inference_mode():
            prefix = self._shared_prefix(prompts)
            while waiting or rows:
                if waiting and len(rows) < rows_max:
                    admitted = [waiting.popleft() for _ in range(min(rows_max - len(rows), len(waiting)))]
                    problems_in = list(dict.fromkeys(i for i, _ in admitted))
                    for chunk in self._chunks([i for i in problems_in if i not in store], prompts):
                        store.update(zip(chunk, self._prefill([prompts[i] for i in chunk], prefix), strict=True))
                    base = len(rows)
                    for i in problems_in:  # copy each prompt's cache into its rows
                        slots = [base + r for r, (p, _) in enumerate(admitted) if p == i]
                        for (k_cache, v_cache), (k, v) in zip(cache, store[i].layers, strict=True):
                            k_cache[slots, :, : k.shape[1]] = k
                            v_cache[slots, :, : v.shape[1]] = v
                        lengths[slots] = len(prompts[i])
                    # the rows of a prompt draw their first tokens independently from its one prefill
                    new = [_Row(i, j, random.Random(sample_seed(params.seed, keys[i], j))) for i, j in admitted]
                    first = self._choose(torch.stack([store[i].logits for i, _ in admitted]), params, new)
                    last[base : base + len(admitted)] = first
                    for row, token in zip(new, first.tolist(), strict=True):
                        row.tokens.append(token)
                    rows.extend(new)
                    # a problem's samples wait together, so only the one at the head of the queue is kept
                    store = {i: s for i, s in store.items() if waiting and waiting[0][0] == i}
                    rows = self._retire(rows, lengths, last, cache, finished, complete)
                if rows:
                    n = len(rows)
                    logits = self._decode(last[:n], lengths[:n], cache)
                    chosen = self._choose(logits, params, rows)
                    lengths[:n] += 1
                    last[:n] = chosen
                    for row, token in zip(rows, chosen.tolist(), strict=True):
                        row.tokens.append(token)
                    rows = self._retire(rows, lengths, last, cache, finished, complete)
                ready = [i for i, c in done.items() if all(x is not None for x in c)]
                if ready:
                    yield [(i, done.pop(i)) for i in ready]

    @staticmethod
    def _chunks(new: list[int], prompts: list[list[int]]) -> Iterator[list[int]]:
        """Split prompts into prefill calls of at most PREFILL_TOKENS padded tokens each."""
        chunk: list[int] = []
        for i in new:
            if chunk and (len(chunk) + 1) * max(len(prompts[p]) for p in [*chunk, i]) > PREFILL_TOKENS:
                yield chunk
                chunk = []
            chunk.append(i)
        if chunk:
            yield chunk

    @staticmethod
    def _retire(rows, lengths, last, cache, finished, complete):
        """Record the rows that ended and move the last live rows into their places (rows stay 0..n-1)."""
        kept = list(rows)
        slot = 0
        while slot < len(kept):
            row = kept[slot]
            if not finished(row):
                slot += 1
                continue
            complete(row)
            end = len(kept) - 1
            if slot != end:  # move the last row into this slot: its cache, length and next token
                span = int(lengths[end]) + 1
                for k_cache, v_cache in cache:
                    k_cache[slot, :, :span] = k_cache[end, :, :span]
                    v_cache[slot, :, :span] = v_cache[end, :, :span]
                lengths[slot], last[slot] = lengths[end], last[end]
                kept[slot] = kept[end]
            kept.pop()
        return kept

    def option_logprobs(self, problems: Sequence[Problem], prefix: str, options: Sequence[str],
                        batch_size: int) -> list[list[float]]:
        """Log-probabilities of one-token options after each problem's chat and a forced prefix (a judge's score)."""
        return option_logprobs(self.model, self.tokenizer, problems, prefix, options, batch_size)

    def close(self) -> None:
        self.model = None
        self._layers = None
        gc.collect()


def continuous_backend(model_path: Path, where: Placement, quantize: str | None = None):
    """Factory for `generate.backend: continuous` (the default).

    `generate.options: {quantize: int8}` (CPU only, opt-in, lossy) swaps every Linear layer for an int8
    dynamically quantized one: decoding runs about 2.5x faster here, at the accuracy cost that
    docs/BENCHMARKS.md measures. Training always uses the full-precision checkpoint.
    """
    if quantize not in (None, "int8"):
        raise UserError(f"generate.options.quantize: '{quantize}' is not supported (use int8, or leave it out)")
    if quantize and where.device != "cpu":
        raise UserError(f"generate.options.quantize: int8 runs on the CPU only (model.device is {where.device})")
    model, tokenizer = load_model(model_path, where), load_tokenizer(model_path)
    if quantize:
        model = _int8(model)
    reason = unsupported_reason(model)
    if reason is not None:
        print(f"generate.backend continuous: {reason}; sampling with transformers generate instead", flush=True)
        return TransformersGenerator(model, tokenizer, str(model_path))
    return ContinuousGenerator(model, tokenizer, str(model_path))


def _int8(model):
    """The model with int8 weights and per-batch int8 activations in every Linear layer (fbgemm kernels)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
