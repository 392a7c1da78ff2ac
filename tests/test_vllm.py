"""The vLLM backend: the same contract as the transformers backend, checked against it on a GPU.

Every test but the first needs a CUDA GPU and the vllm package (its own environment: see the docstring of
selfplay.generation.vllm) and is skipped elsewhere. The first runs everywhere: it is what a CPU machine sees.
"""

from __future__ import annotations

import gc
import importlib.util
import sys
import time
from pathlib import Path

import pytest
import torch

from selfplay.errors import UserError
from selfplay.generation import SamplingParams, sample_batches
from selfplay.generation.hf import transformers_backend
from selfplay.generation.vllm import VllmGenerator, vllm_backend
from selfplay.models import Placement
from selfplay.records import Problem
from tests.conftest import build_tiny_model

HAVE_CUDA = torch.cuda.is_available()
HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_gpu_and_vllm = pytest.mark.skipif(
    not (HAVE_CUDA and HAVE_VLLM),
    reason=f"needs a CUDA GPU and vllm (cuda: {'yes' if HAVE_CUDA else 'no'}, vllm: {'yes' if HAVE_VLLM else 'no'}); "
    "see selfplay/generation/vllm.py for its environment",
)

GPU32 = Placement("cuda", torch.float32)
KV_BYTES = 512 * 2**20
# float32 so greedy decoding can match transformers token for token; a fixed KV cache so two engines fit
# beside each other and the memory test sees a known amount; eager to start in seconds.
OPTIONS = dict(dtype="float32", enforce_eager=True, gpu_memory_utilization=0.2, kv_cache_memory_bytes=KV_BYTES)
PROBLEMS = [Problem(f"p{i}", "What is 1 + 2?" + " and 3" * i, "3") for i in range(5)]


def test_without_a_gpu_or_vllm_the_backend_is_one_clear_error(monkeypatch, tmp_path):
    """Runs everywhere: each missing piece is a UserError of one line, before any model is read."""

    def refused(match: str, **options: object) -> str:
        with pytest.raises(UserError, match=match) as e:
            vllm_backend(tmp_path, GPU32, **options)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "generate.options" in refused("does not take block_size", block_size=16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    refused("vllm needs a CUDA GPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(UserError, match="model.device is 'cpu'"):
        vllm_backend(tmp_path, Placement("cpu", torch.float32))
    monkeypatch.setitem(sys.modules, "vllm", None)  # what an environment without vllm looks like to the import
    assert "pip install" in refused("vllm is not installed")


def _wide_tiny_model(folder: Path) -> Path:
    """The conftest model with head_dim 64 (vLLM's float32 attention kernels want at least 32).

    Same tokenizer, chat template and generation config; weights drawn wider (std 0.2) so greedy steps are
    not near-ties that float rounding between two kernel sets could flip.
    """
    from transformers import AutoConfig, GenerationConfig, LlamaForCausalLM

    build_tiny_model(folder)
    config = AutoConfig.from_pretrained(folder)
    for key, value in dict(hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1,
                           head_dim=64, initializer_range=0.2).items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig.from_pretrained(folder)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory) -> Path:
    return _wide_tiny_model(tmp_path_factory.mktemp("wide-llama"))


@pytest.fixture(scope="module")
def gen(wide_model):
    g = vllm_backend(wide_model, GPU32, **OPTIONS)
    yield g
    g.close()


def _cut(seq: list[int], stop_ids: set[int]) -> list[int]:
    return next((seq[:j] for j, t in enumerate(seq) if t in stop_ids), seq)


@needs_gpu_and_vllm
def test_whole_problems_with_n_samples_each_and_shared_ids(gen, wide_model):
    params = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_new_tokens=5, seed=1)
    batches = list(sample_batches(gen, PROBLEMS, params, batch_size=4))
    samples = [s for b in batches for s in b]
    assert sorted(s.id for s in samples) == sorted(f"p{i}/s{k}" for i in range(5) for k in range(3))
    assert all(len({s.problem_id for s in b}) == 1 and len(b) == 3 for b in batches)  # 4 // 3 = 1 problem a call
    assert all(0 <= s.num_tokens <= 5 for s in samples)
    assert all((s.finish_reason == "length") == (s.num_tokens == 5) for s in samples)
    assert all(s.model == str(wide_model) for s in samples)


@needs_gpu_and_vllm
def test_greedy_matches_transformers_token_for_token(gen: VllmGenerator, wide_model):
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=16)
    hf = transformers_backend(wide_model, GPU32)
    try:
        prompts = hf._encode(PROBLEMS)
        assert gen._encode(PROBLEMS) == prompts
        expected = [_cut(seq, hf.stop_ids) for seq in hf._run(prompts, greedy)]
        theirs = {p.id: cs for b in hf.generate(PROBLEMS, greedy, 8) for p, cs in b}
    finally:
        hf.close()
        torch.cuda.empty_cache()
    assert gen.stop_ids == hf.stop_ids
    got = [_cut(seq, gen.stop_ids) for seq in gen._sample(prompts, greedy, [0] * len(prompts))]
    assert got == expected
    assert {p.id: cs for b in gen.generate(PROBLEMS, greedy, 8) for p, cs in b} == theirs  # text, count, reason


@needs_gpu_and_vllm
def test_sampling_with_a_seed_repeats_and_another_seed_differs(gen):
    def texts(seed: int) -> list[str]:
        params = SamplingParams(n=4, temperature=1.0, top_p=0.95, max_new_tokens=8, seed=seed)
        return [c.text for b in gen.generate(PROBLEMS[:3], params, 8) for _, cs in b for c in cs]

    first = texts(7)
    assert texts(7) == first
    assert texts(8) != first
    assert len(set(first[:4])) > 1  # the samples of one problem are drawn with different seeds


@needs_gpu_and_vllm
def test_close_gives_the_gpu_memory_back(wide_model):
    gc.collect()
    torch.cuda.empty_cache()
    free_before = torch.cuda.mem_get_info()[0]
    g = vllm_backend(wide_model, GPU32, **OPTIONS)
    list(g.generate(PROBLEMS[:1], SamplingParams(max_new_tokens=2), 8))
    free_during = torch.cuda.mem_get_info()[0]
    g.close()
    deadline = time.monotonic() + 30  # the driver frees a process's memory as it exits; allow it a moment
    while (free_after := torch.cuda.mem_get_info()[0]) < free_before - 2**28 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert free_before - free_during >= KV_BYTES, "the engine's memory should show from this process"
    assert free_after >= free_before - 2**28, f"{(free_before - free_after) / 2**20:.0f} MiB still held after close()"
    g.close()  # a second close is a no-op
