"""Generation backends behind one interface; a config picks one from GENERATORS or names a factory 'module:attr'.

A factory is called as `factory(model_path, where, **generate.options)` and returns a Generator
(selfplay.interfaces): `generate(problems, params, batch_size)` yields whole problems' completions, and
`close()` frees the model. `sample_batches` turns any backend's output into Samples with shared ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfplay.generation.base import Completion, Generator, SamplingParams, sample_batches
from selfplay.generation.continuous import ContinuousGenerator, continuous_backend
from selfplay.generation.hf import TransformersGenerator, transformers_backend
from selfplay.generation.openai_compat import OpenAIClient, OpenAIGenerator, openai_backend
from selfplay.generation.vllm import vllm_backend
from selfplay.models import Placement
from selfplay.plugins import check_call, resolve

__all__ = [
    "GENERATORS", "Completion", "ContinuousGenerator", "Generator", "OpenAIClient", "OpenAIGenerator",
    "SamplingParams", "TransformersGenerator", "build_generator", "sample_batches",
]

GENERATORS = {
    "continuous": continuous_backend, "openai": openai_backend, "transformers": transformers_backend,
    "vllm": vllm_backend,
}


def build_generator(backend: str, model_path: Path, where: Placement, options: dict[str, Any]) -> Generator:
    factory = resolve(backend, GENERATORS, "generate.backend")
    check_call(factory, "generate.options", model_path, where, **options)
    return factory(model_path, where, **options)
