"""The five stages of an iteration. Each reads the previous stage's file and writes its own.

A stage is finished when its summary `<stage>.json` exists: its data file is renamed into place first
and the summary last, both atomically. Generation, the long stage, appends each batch of finished
problems to `samples.partial.jsonl`, so a killed run resumes with the problems it had not finished.
"""

from __future__ import annotations

import gc
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from selfplay.config import EvalConfig, FilterConfig, TrainConfig
from selfplay.errors import UserError
from selfplay.files import (
    JsonlAppender,
    atomic_write_json,
    atomic_write_jsonl,
    read_json,
    read_jsonl,
    recover_partial_jsonl,
)
from selfplay.filters import keep_verified
from selfplay.generation import GENERATORS, Generator, SamplingParams
from selfplay.guards.contamination import ContaminationIndex, split_contaminated
from selfplay.guards.heldout import greedy_metrics, sampled_metrics
from selfplay.models import Placement, load_model, load_tokenizer
from selfplay.plugins import resolve
from selfplay.records import Example, Problem, Sample, Verdict, from_dict, to_dict
from selfplay.training import train_sft
from selfplay.verifiers import Verifier


def _log(msg: str) -> None:
    print(msg, flush=True)


def load_records(path: Path, cls: type) -> list:
    records = []
    for i, row in enumerate(read_jsonl(path), start=1):
        try:
            records.append(from_dict(cls, row))
        except TypeError as e:
            raise UserError(f"{path}: record {i}: not a {cls.__name__} ({e})") from None
    return records


class ModelPool:
    """Keeps the one model in use loaded across stages, so generate and evaluate share a load."""

    def __init__(self, where: Placement, backend: str, batch_size: int):
        self.where = where
        self.backend = resolve(backend, GENERATORS, "generate.backend")
        self.batch_size = batch_size
        self._path: Path | None = None
        self._generator: Generator | None = None

    def generator(self, path: Path) -> Generator:
        if self._path != path:
            self.release()
            model = load_model(path, self.where)
            self._generator = self.backend(model, load_tokenizer(path), str(path), self.batch_size)
            self._path = path
        assert self._generator is not None
        return self._generator

    def release(self) -> None:
        self._generator, self._path = None, None
        gc.collect()


def generate(
    it_dir: Path, problems: Sequence[Problem], pool: ModelPool, model_path: Path, params: SamplingParams
) -> dict[str, Any]:
    """Sample `params.n` completions per problem into samples.jsonl, resuming after a crash."""
    summary_path = it_dir / "generate.json"
    if summary_path.is_file():
        return read_json(summary_path)
    partial = it_dir / "samples.partial.jsonl"
    rows, torn = recover_partial_jsonl(partial)
    if torn:
        _log(f"{partial}: cut off a torn last line (the process died while writing it); regenerating it")
    # Keep only problems whose k samples all made it to disk; the rest are sampled again.
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["problem_id"]].append(row)
    wanted = {p.id for p in problems}
    complete = {pid for pid, g in groups.items() if pid in wanted and len(g) == params.n}
    kept = [r for r in rows if r["problem_id"] in complete]
    if torn or len(kept) != len(rows):
        atomic_write_jsonl(partial, kept)
    if complete:
        _log(f"{it_dir.name}/generate: resuming; {len(complete)} of {len(problems)} problems already sampled")
    remaining = [p for p in problems if p.id not in complete]
    start = time.perf_counter()
    tokens = 0
    if remaining:
        gen = pool.generator(model_path)
        seeded = SamplingParams(**{**asdict(params), "seed": params.seed + len(complete)})
        with JsonlAppender(partial) as out:
            for batch in gen.generate(remaining, seeded, desc=f"{it_dir.name} generate"):
                out.write_many(to_dict(s) for s in batch)
                tokens += sum(s.num_tokens for s in batch)
    seconds = time.perf_counter() - start
    samples_path = it_dir / "samples.jsonl"
    partial.replace(samples_path)
    summary = {
        "samples": len(problems) * params.n,
        "problems": len(problems),
        "resumed_problems": len(complete),
        "new_tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds if seconds > 0 and tokens else None,
        "model": str(model_path),
        "params": asdict(params),
    }
    atomic_write_json(summary_path, summary)
    return summary


def verify(it_dir: Path, problems: Sequence[Problem], verifier: Verifier) -> dict[str, Any]:
    summary_path = it_dir / "verify.json"
    if summary_path.is_file():
        return read_json(summary_path)
    start = time.perf_counter()
    by_id = {p.id: p for p in problems}
    samples = load_records(it_dir / "samples.jsonl", Sample)
    verdicts = [verifier.verify(by_id[s.problem_id], s) for s in samples]
    atomic_write_jsonl(it_dir / "verdicts.jsonl", (to_dict(v) for v in verdicts))
    summary = {
        "verifier": verifier.name,
        "samples": len(verdicts),
        "passed": sum(v.passed for v in verdicts),
        "answered": sum(v.answer is not None for v in verdicts),
        "seconds": time.perf_counter() - start,
    }
    atomic_write_json(summary_path, summary)
    return summary


def filter_(
    it_dir: Path, problems: Sequence[Problem], iteration: int, cfg: FilterConfig,
    index: ContaminationIndex | None = None,
) -> dict[str, Any]:
    """Keep verified samples as training examples; drop any that overlap an evaluation prompt."""
    summary_path = it_dir / "filter.json"
    if summary_path.is_file():
        return read_json(summary_path)
    start = time.perf_counter()
    samples = load_records(it_dir / "samples.jsonl", Sample)
    verdicts = load_records(it_dir / "verdicts.jsonl", Verdict)
    examples, stats = keep_verified(
        problems, samples, verdicts, iteration=iteration, max_per_problem=cfg.max_per_problem, dedupe=cfg.dedupe,
        drop_truncated=cfg.drop_truncated,
    )
    dropped: list[dict[str, str]] = []
    if index is not None:
        questions = {p.id: str(p.meta.get("question", p.prompt)) for p in problems}
        examples, dropped = split_contaminated(examples, questions, index)
        if dropped:
            _log(f"{it_dir.name}/filter: dropped {len(dropped)} example(s) that overlap evaluation prompts "
                 f"(listed in contaminated.jsonl)")
    atomic_write_jsonl(it_dir / "contaminated.jsonl", dropped)
    atomic_write_jsonl(it_dir / "train.jsonl", (to_dict(e) for e in examples))
    summary = {
        **asdict(stats), "kept": len(examples), "contaminated": len(dropped),
        "contamination_n": index.n if index is not None else None, "seconds": time.perf_counter() - start,
    }
    atomic_write_json(summary_path, summary)
    return summary


def train(
    it_dir: Path, init_path: Path, fallback_path: Path, cfg: TrainConfig, where: Placement, seed: int, pool: ModelPool,
    removed: Sequence[str] = (),
) -> dict[str, Any]:
    """Fine-tune `init_path` on train.jsonl into it_dir/model; with no examples the model stays `fallback_path`.

    `removed` lists example ids a reviewer rejected; they are left out.
    """
    summary_path = it_dir / "train.json"
    if summary_path.is_file():
        return read_json(summary_path)
    examples = load_records(it_dir / "train.jsonl", Example)
    if removed:
        left_out = set(removed)
        examples = [e for e in examples if e.id not in left_out]
    if not examples:
        _log(f"{it_dir.name}/train: no examples to train on; the model is unchanged this iteration")
        summary = {"skipped": True, "model": str(fallback_path), "examples": 0, "seconds": 0.0}
    else:
        pool.release()  # free the sampling copy before training loads its own
        _log(f"{it_dir.name}/train: {len(examples)} examples, starting from {init_path}")
        stats = train_sft(init_path, examples, it_dir / "model", it_dir / "trainer", cfg, where, seed)
        summary = {"skipped": False, "model": "model", "init_from": str(init_path), "examples": len(examples), **stats}
    summary["removed_by_review"] = len(removed)
    atomic_write_json(summary_path, summary)
    return summary


def trained_model_path(it_dir: Path) -> Path:
    summary = read_json(it_dir / "train.json")
    path = Path(summary["model"])
    return path if path.is_absolute() else it_dir / path


@dataclass
class Measured:
    """What one evaluation set produced: metrics, and the completions with their verdicts."""

    metrics: dict[str, Any]
    greedy: list[Sample]
    greedy_verdicts: list[Verdict]
    sampled: list[Sample]
    sampled_verdicts: list[Verdict]


def measure(
    gen: Generator, problems: Sequence[Problem], verifier: Verifier, cfg: EvalConfig, seed: int, desc: str,
    sampled: bool = True,
) -> Measured:
    """Greedy accuracy, and pass@k when `sampled` and cfg.samples > 0, of one model on one problem set."""
    by_id = {p.id: p for p in problems}
    greedy_params = SamplingParams(n=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens, seed=seed)
    greedy = [s for b in gen.generate(problems, greedy_params, desc=f"{desc} greedy") for s in b]
    greedy_verdicts = [verifier.verify(by_id[s.problem_id], s) for s in greedy]
    metrics = greedy_metrics(greedy, greedy_verdicts)
    samples: list[Sample] = []
    verdicts: list[Verdict] = []
    if sampled and cfg.samples:
        params = SamplingParams(cfg.samples, cfg.temperature, cfg.top_p, cfg.max_new_tokens, seed)
        samples = [s for b in gen.generate(problems, params, desc=f"{desc} pass@k") for s in b]
        verdicts = [verifier.verify(by_id[s.problem_id], s) for s in samples]
        metrics.update(sampled_metrics(verdicts, cfg.pass_k))
    return Measured(metrics, greedy, greedy_verdicts, samples, verdicts)


def write_verdicts(path: Path, samples: Sequence[Sample], verdicts: Sequence[Verdict]) -> None:
    atomic_write_jsonl(path, ({**to_dict(s), "verdict": to_dict(v)} for s, v in zip(samples, verdicts, strict=True)))


def evaluate(
    it_dir: Path, problems: Sequence[Problem], pool: ModelPool, model_path: Path, verifier: Verifier,
    cfg: EvalConfig, seed: int,
) -> dict[str, Any]:
    """Greedy accuracy and pass@k of `model_path` on the held-out problems, into eval.json."""
    summary_path = it_dir / "eval.json"
    if summary_path.is_file():
        return read_json(summary_path)
    it_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    m = measure(pool.generator(model_path), problems, verifier, cfg, seed, it_dir.name)
    write_verdicts(it_dir / "eval_samples.jsonl", m.greedy, m.greedy_verdicts)
    summary = {"model": str(model_path), "metrics": m.metrics, "seconds": time.perf_counter() - start}
    atomic_write_json(summary_path, summary)
    return summary
