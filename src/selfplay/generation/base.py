"""What every backend shares: the interface, sample ids, and the progress bar around any backend's batches."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence

from tqdm.auto import tqdm

from selfplay import progress
from selfplay.interfaces import Completion, Generator, SamplingParams
from selfplay.records import Problem, Sample, sample_id

__all__ = ["Completion", "Generator", "SamplingParams", "sample_batches", "sample_seed"]


def sample_seed(seed: int, problem_id: str, k: int) -> int:
    """The random stream of sample k of a problem: a function of these three alone, in 63 bits (vLLM keeps int64).

    The continuous and vLLM backends draw each sample from its own stream, and the openai backend sends it as the
    request's seed, so a problem's samples do not depend on the batch, the order, or the worker that drew them.
    """
    digest = hashlib.blake2b(f"{seed}\0{problem_id}\0{k}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def sample_batches(
    gen: Generator, problems: Sequence[Problem], params: SamplingParams, batch_size: int, desc: str = "generate"
) -> Iterator[list[Sample]]:
    """Run `gen` over `problems` and yield each batch as Samples (all `params.n` of a problem together)."""
    if not problems:
        return
    if params.temperature == 0.0 and params.n > 1:
        raise ValueError("greedy decoding gives one sample per problem; use temperature > 0 for n > 1")
    bar = tqdm(total=len(problems) * params.n, desc=desc, unit="sample", dynamic_ncols=True)
    start, tokens = time.perf_counter(), 0
    try:
        for batch in gen.generate(problems, params, batch_size):
            samples = [
                Sample(sample_id(p.id, k), p.id, c.text, c.num_tokens, c.finish_reason, gen.model_name)
                for p, completions in batch
                for k, c in enumerate(completions)
            ]
            tokens += sum(s.num_tokens for s in samples)
            bar.update(len(samples))
            progress.report(bar.n, bar.total, "sample")
            bar.set_postfix(tok_s=f"{tokens / max(1e-9, time.perf_counter() - start):.0f}", refresh=False)
            yield samples
    finally:
        bar.close()  # also when interrupted, so the bar does not print over later messages
