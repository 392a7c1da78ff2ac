"""Optional generation backend on vLLM (`generate.backend: vllm`): the transformers backend's contract, on a GPU.

Sampling k completions per problem is most of an iteration's time; vLLM's paged KV cache and continuous
batching do it far faster on a GPU than `model.generate`. It needs a CUDA GPU and its own environment.

Kept equal to the transformers backend, so the two can be swapped without changing what a run means:
  prompt ids   the chat template rendered to text, tokenized without added special tokens, handed to vLLM
               as token ids (vLLM's own chat rendering plays no part);
  sampling     temperature, then top-p over the full vocabulary (top_k off); temperature 0 is greedy;
  stopping     at the generation_config eos ids and the tokenizer's eos; the stop token is not counted and
               the text is decoded by our tokenizer with special tokens skipped.
Differs on purpose:
  seeds        every sample is its own vLLM request with a seed from (params.seed, problem id, sample index),
               so a sample does not change with batch size, order, or a resumed run. The transformers backend
               seeds once per call, so the two backends draw different (equally distributed) samples.
  batches      `batch_size` is still sequences per engine call (`batch_size // n` problems, yielded as each
               call returns); vLLM schedules inside a call, so set it in the hundreds or more here.
  temperature  vLLM refuses temperature > 2.

generate.options (passed to vllm.LLM; anything else is refused):
  gpu_memory_utilization  share of the GPU's memory the engine reserves (vLLM's default 0.92). Lower it when
                          a verifier loads a second model while one is loaded: the run keeps up to two.
  kv_cache_memory_bytes   a fixed KV-cache size instead of the share (a GPU shared with other work)
  tensor_parallel_size    GPUs to shard the model over
  max_model_len           context cap, prompt plus new tokens (default: the model's)
  max_num_seqs            sequences decoded at once
  enforce_eager           no CUDA graphs or torch.compile: starts in seconds, decodes slower
  dtype                   weights dtype (default: the run's model.dtype)

Environment. Checked against vllm 0.32.0, the newest release whose wheels pin torch==2.13.0 (ours); it
needs transformers >=5.16.1,<5.20 and Python >=3.11, so it gets a venv of its own beside `.venv`:
    python3.11 -m venv .venv-vllm
    .venv-vllm/bin/pip install --upgrade pip
    .venv-vllm/bin/pip install "vllm==0.32.0" "transformers>=5.16.1,<5.20" -e ".[dev]"
    .venv-vllm/bin/python -c "import torch; assert torch.cuda.is_available(), torch.__version__"
The torch it installs is PyPI's default Linux build of 2.13.0, made for CUDA 13.0 (the driver must support it).

Freeing the GPU. vLLM runs the model in an engine-core child process; `close()` shuts that process down,
and its exit hands all of its GPU memory back before training starts here. Dropping the LLM object frees
it only when garbage collection gets to it. With VLLM_ENABLE_V1_MULTIPROCESSING=0 the model lives in this
process and vLLM leaves memory behind (vllm-project/vllm#21073), so leave that variable unset.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from selfplay.errors import UserError
from selfplay.generation.base import sample_seed
from selfplay.generation.hf import encode_prompts, stop_ids, to_completion
from selfplay.interfaces import Completion, SamplingParams
from selfplay.models import Placement, load_tokenizer
from selfplay.records import Problem

VLLM_VERSION = "0.32.0"
INSTALL = (
    f'python3.11 -m venv .venv-vllm && .venv-vllm/bin/pip install "vllm=={VLLM_VERSION}" '
    '"transformers>=5.16.1,<5.20" -e ".[dev]"'
)
OPTIONS = frozenset({
    "gpu_memory_utilization", "kv_cache_memory_bytes", "tensor_parallel_size", "max_model_len", "max_num_seqs",
    "enforce_eager", "dtype",
})


def stop_token_ids(model_path: Path, tokenizer: Any) -> set[int]:
    """The eos ids the transformers backend stops at: the model's generation config's, plus the tokenizer's."""
    from transformers import AutoConfig, GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(model_path)
    except OSError:  # no generation_config.json: from_pretrained derives one from config.json the same way
        config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_path))
    return stop_ids(config, tokenizer)


class VllmGenerator:
    """A `vllm.LLM` behind the Generator interface; the module docstring says what matches transformers."""

    def __init__(self, llm: Any, tokenizer: Any, stop_ids: set[int], model_name: str, owns_dist: bool):
        self.llm = llm
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.model_name = model_name
        self._owns_dist = owns_dist  # torch.distributed was not up before vLLM, so close() may tear it down

    def _encode(self, problems: Sequence[Problem]) -> list[list[int]]:
        return encode_prompts(self.tokenizer, problems)

    def _sample(self, prompts: list[list[int]], params: SamplingParams, seeds: list[int]) -> list[list[int]]:
        """One engine call with one n=1 request per (prompt, seed); returns each request's new token ids."""
        from vllm import SamplingParams as VllmParams
        from vllm.inputs import TokensPrompt

        greedy = params.temperature == 0.0
        stops = sorted(self.stop_ids)
        requests = [
            VllmParams(
                n=1,
                temperature=params.temperature,
                top_p=1.0 if greedy else params.top_p,
                top_k=0,
                max_tokens=params.max_new_tokens,
                seed=None if greedy else seed,
                stop_token_ids=stops,
            )
            for seed in seeds
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], requests, use_tqdm=False)
        return [list(out.outputs[0].token_ids) for out in outputs]

    def generate(
        self, problems: Sequence[Problem], params: SamplingParams, batch_size: int
    ) -> Iterator[list[tuple[Problem, list[Completion]]]]:
        """`batch_size // n` problems per engine call, in the given order, each with its n samples in order."""
        if not problems:
            return
        if self.llm is None:
            raise RuntimeError("this vLLM generator was closed")
        if params.temperature > 2.0:  # vLLM's own check would fail deep in the engine call, with a long trace
            raise UserError(f"temperature {params.temperature}: the vllm backend samples at 0 to 2")
        encoded = self._encode(problems)
        n = params.n
        per_batch = max(1, batch_size // n)
        for start in range(0, len(problems), per_batch):
            idx = range(start, min(start + per_batch, len(problems)))
            prompts = [encoded[i] for i in idx for _ in range(n)]
            seeds = [sample_seed(params.seed, problems[i].id, k) for i in idx for k in range(n)]
            new = self._sample(prompts, params, seeds)
            yield [
                (problems[i], [to_completion(self.tokenizer, seq, self.stop_ids)
                               for seq in new[row * n : (row + 1) * n]])
                for row, i in enumerate(idx)
            ]

    def close(self) -> None:
        """Stop the engine process (its exit frees the GPU), then drop what vLLM left in this process."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            # Terminates and joins the engine-core process (and tensor-parallel workers); idempotent, so vLLM's
            # own finalizer later does nothing. `del llm` with gc/empty_cache, the usual advice, is not enough
            # when the model is in this process (vllm-project/vllm#1908, #21073); the process exit is.
            core.shutdown()
        del llm, core
        gc.collect()
        import torch
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        # Only set up in this process when the engine runs in-process; no-ops otherwise.
        destroy_model_parallel()
        if self._owns_dist:
            destroy_distributed_environment()
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()


def vllm_backend(model_path: Path, where: Placement, **options: Any) -> VllmGenerator:
    """Factory for `generate.backend: vllm`; `options` are the generate.options listed in the module docstring."""
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise UserError(
            f"generate.options: the vllm backend does not take {', '.join(unknown)} "
            f"(it takes {', '.join(sorted(OPTIONS))})"
        )
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            "generate.backend: vllm needs a CUDA GPU and this machine has none visible to torch; "
            "use generate.backend: transformers here"
        )
    if where.device == "cpu":
        raise UserError("generate.backend: vllm runs on the GPU but model.device is 'cpu'; set it to auto or cuda")
    if importlib.util.find_spec("vllm") is None:
        raise UserError(f"generate.backend: vllm is not installed in this environment; it needs its own: {INSTALL}")
    try:
        from vllm import LLM
    except Exception as e:  # installed but broken, typically a torch it was not built for
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"generate.backend: vllm is installed but does not import ({first}); {INSTALL}") from e
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":
        warnings.warn("VLLM_ENABLE_V1_MULTIPROCESSING=0: close() cannot return all GPU memory (vllm#21073)",
                      stacklevel=2)

    options.setdefault("dtype", str(where.dtype).removeprefix("torch."))
    tokenizer = load_tokenizer(model_path)
    stops = stop_token_ids(model_path, tokenizer)
    owns_dist = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    llm = LLM(model=str(model_path), **options)
    return VllmGenerator(llm, tokenizer, stops, str(model_path), owns_dist)
