"""The stages of an iteration, as plain functions: each reads the previous stage's file, writes its own
data files, and returns its summary. `loop.runner.run_stage` owns the rest (skip when done, timing, the
state file and the atomic summary write), so a stage here never checks whether it already ran.

Generation and verification, the long stages, append each finished batch to a `.partial.jsonl` file, so
a killed run resumes with the problems (or samples) it had not finished.
"""

from __future__ import annotations

import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from selfplay import progress
from selfplay.errors import WriteError, write_failure
from selfplay.files import JsonlAppender, atomic_write_jsonl, read_jsonl, recover_partial_jsonl
from selfplay.filters.human import weigh_pairs
from selfplay.generation import SamplingParams, sample_batches
from selfplay.guards.contamination import ContaminationIndex, split_contaminated
from selfplay.interfaces import Generator, GroupVerifier, StreamVerifier, Trainer
from selfplay.loop.rundir import load_records
from selfplay.records import TRAIN_FILES, Problem, Sample, TrainRecord, Verdict, to_dict
from selfplay.verifiers import Verifier, verify_all

# What a selection step (keep-verified, pair building) returns: training records and figures about them.
Select = Callable[[Sequence[Problem], Sequence[Sample], Sequence[Verdict]], tuple[list[TrainRecord], dict[str, Any]]]


def _log(msg: str) -> None:
    print(msg, flush=True)


def _recover(partial: Path, what: str) -> tuple[list[dict[str, Any]], bool]:
    rows, torn = recover_partial_jsonl(partial)
    if torn:
        _log(f"{partial}: cut off a torn last line (the process died while writing it); {what}")
    return rows, torn


def generate(
    it_dir: Path, problems: Sequence[Problem], generator: Callable[[], Generator], model_path: Path | str,
    params: SamplingParams, batch_size: int, out: str = "samples",
) -> dict[str, Any]:
    """Sample `params.n` completions per problem into `<out>.jsonl` (samples.jsonl), resuming after a crash.

    `generator` is called only when there is something left to sample, so a resume that finds every
    problem on disk loads no model.
    """
    partial = it_dir / f"{out}.partial.jsonl"
    final = it_dir / f"{out}.jsonl"
    if final.is_file() and not partial.exists():
        # Killed after the samples were complete but before the summary: nothing is left to sample.
        rows = read_jsonl(final)
        return _generate_summary(problems, params, model_path, len({r["problem_id"] for r in rows}), 0, 0.0,
                                 final.name)
    rows, torn = _recover(partial, "regenerating it")
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
        _log(f"{it_dir.name}/{out}.jsonl: resuming; {len(complete)} of {len(problems)} problems already sampled")
    remaining = [p for p in problems if p.id not in complete]
    start = time.perf_counter()
    tokens = 0
    ran_on = "driver"
    if remaining:
        # The seed stays the run's: the backends that draw each sample from its own stream (continuous, vLLM,
        # openai) give a resumed problem the samples an unbroken run gives it.
        gen = generator()
        ran_on = getattr(gen, "ran_on", "driver")  # or "ray" (scale.ray_address)
        with JsonlAppender(partial) as sink:
            for batch in sample_batches(gen, remaining, params, batch_size, desc=f"{it_dir.name} {out}"):
                sink.write_many(to_dict(s) for s in batch)
                tokens += sum(s.num_tokens for s in batch)
    seconds = time.perf_counter() - start
    partial.touch()
    # Problems in split order, whichever batch, worker or session finished them: the same run writes the same file.
    order = {p.id: n for n, p in enumerate(problems)}
    rows = read_jsonl(partial)
    ranked = sorted(range(len(rows)), key=lambda n: (order.get(rows[n]["problem_id"], len(order)), n))
    if ranked != list(range(len(rows))):
        atomic_write_jsonl(partial, (rows[n] for n in ranked))
    partial.replace(final)
    return {**_generate_summary(problems, params, model_path, len(complete), tokens, seconds, final.name),
            "ran_on": ran_on}


def _generate_summary(problems: Sequence[Problem], params: SamplingParams, model_path: Path | str, resumed: int,
                      tokens: int, seconds: float, file: str) -> dict[str, Any]:
    return {
        "samples_file": file,
        "samples": len(problems) * params.n,
        "problems": len(problems),
        "resumed_problems": resumed,
        "new_tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds if seconds > 0 and tokens else None,
        "model": str(model_path),
        "params": asdict(params),
    }


def verify(
    it_dir: Path, problems: Sequence[Problem], verifier: Verifier, batch_size: int, samples_file: str = "samples",
    out: str = "verdicts",
) -> dict[str, Any]:
    """Judge every sample of `<samples_file>.jsonl` into `<out>.jsonl`, `batch_size` at a time; a resume skips
    samples already judged."""
    start = time.perf_counter()
    by_id = {p.id: p for p in problems}
    samples = load_records(it_dir / f"{samples_file}.jsonl", Sample)
    partial = it_dir / f"{out}.partial.jsonl"
    final = it_dir / f"{out}.jsonl"
    if final.is_file() and not partial.exists():
        # Killed after every sample was judged but before the summary: judge nothing again.
        return _verify_summary(verifier, load_records(final, Verdict), len(samples), start, final.name)
    rows, torn = _recover(partial, "judging it again")
    if isinstance(verifier, GroupVerifier):
        # A problem's samples are judged together (a majority vote): one judged only in part is judged again whole.
        kept = _whole_problems(rows, samples)
        torn, rows = torn or len(kept) != len(rows), kept
    if torn:
        atomic_write_jsonl(partial, rows)  # the torn line goes before anything is appended after it
    done = {row["sample_id"] for row in rows}
    if done:
        _log(f"{it_dir.name}/{out}.jsonl: resuming; {len(done)} of {len(samples)} samples already judged")
    todo = [s for s in samples if s.id not in done]
    with JsonlAppender(partial) as sink:
        if isinstance(verifier, StreamVerifier):
            # Each verdict is written as it finishes (those that finish together, one fsync): a killed stage
            # re-runs none that was written.
            n = len(done)
            for got in verifier.verify_stream([(by_id[s.problem_id], s) for s in todo]):
                group = got if isinstance(got, list) else [got]
                sink.write_many(to_dict(v) for _, v in group)
                n += len(group)
                progress.report(n, len(samples), "sample")
        else:
            judged = len(done)
            for chunk in _batches(todo, batch_size, whole=isinstance(verifier, GroupVerifier)):
                sink.write_many(to_dict(v) for v in verify_all(verifier, [(by_id[s.problem_id], s) for s in chunk]))
                judged += len(chunk)
                progress.report(judged, len(samples), "sample")
    # Verdicts in sample order, whatever order the batches finished in.
    order = {s.id: n for n, s in enumerate(samples)}
    verdicts = sorted(load_records(partial, Verdict), key=lambda v: order[v.sample_id])
    atomic_write_jsonl(final, (to_dict(v) for v in verdicts))
    partial.unlink()
    return _verify_summary(verifier, verdicts, len(done), start, final.name)


def _whole_problems(rows: list[dict[str, Any]], samples: Sequence[Sample]) -> list[dict[str, Any]]:
    """The verdict rows of problems whose every sample has one."""
    wanted = defaultdict(int)
    for s in samples:
        wanted[s.problem_id] += 1
    got = defaultdict(int)
    for row in rows:
        got[row["problem_id"]] += 1
    return [row for row in rows if got[row["problem_id"]] == wanted[row["problem_id"]]]


def _batches(samples: list[Sample], size: int, whole: bool) -> list[list[Sample]]:
    """`size` samples at a time; with `whole`, a batch is stretched to the end of its last problem's samples."""
    if not whole:
        return [samples[b : b + size] for b in range(0, len(samples), size)]
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.problem_id].append(s)
    out: list[list[Sample]] = [[]]
    for group in groups.values():
        if out[-1] and len(out[-1]) + len(group) > size:
            out.append([])
        out[-1].extend(group)
    return [b for b in out if b]


def _verify_summary(verifier: Verifier, verdicts: Sequence[Verdict], resumed: int, start: float, file: str
                    ) -> dict[str, Any]:
    summary = {
        "verdicts_file": file,
        "verifier": verifier.name,
        "samples": len(verdicts),
        "passed": sum(v.passed for v in verdicts),
        "answered": sum(v.answer is not None for v in verdicts),
        "resumed_samples": resumed,
        "seconds": time.perf_counter() - start,
        "ran_on": getattr(verifier, "ran_on", "driver"),  # or "ray" (scale.ray_address)
    }
    if isinstance(verifier, GroupVerifier):  # how the votes went: ties and unreadable answers fail, and are counted
        statuses = defaultdict(int)
        for v in verdicts:
            statuses[(v.details or {}).get("status", "none")] += 1
        summary["statuses"] = dict(sorted(statuses.items()))
    return summary


def filter_(
    it_dir: Path, problems: Sequence[Problem], select: Select, record_type: type, index: ContaminationIndex | None,
) -> dict[str, Any]:
    """Turn verdicts into training records with `select`; drop any that overlap an evaluation prompt.

    The records go to train.jsonl (Examples) or pairs.jsonl (Pairs); dropped overlaps to contaminated.jsonl.
    """
    start = time.perf_counter()
    # A recipe that samples nothing (supervised training on demonstrations) selects from no samples.
    samples = load_records(it_dir / "samples.jsonl", Sample) if (it_dir / "samples.jsonl").is_file() else []
    verdicts = load_records(it_dir / "verdicts.jsonl", Verdict) if (it_dir / "verdicts.jsonl").is_file() else []
    records, stats = select(problems, samples, verdicts)
    dropped: list[dict[str, str]] = []
    if index is not None:
        records, dropped = split_contaminated(records, {p.id: p.question for p in problems}, index)
        if dropped:
            _log(f"{it_dir.name}/filter: dropped {len(dropped)} record(s) that overlap evaluation prompts "
                 f"(listed in contaminated.jsonl)")
    atomic_write_jsonl(it_dir / "contaminated.jsonl", dropped)
    atomic_write_jsonl(it_dir / TRAIN_FILES[record_type], (to_dict(r) for r in records))
    return {
        **stats, "kept": len(records), "contaminated": len(dropped),
        "contamination_n": index.n if index is not None else None,
        "boilerplate_ngrams": index.boilerplate if index is not None else None, "seconds": time.perf_counter() - start,
    }


def train(
    it_dir: Path, trainer: Trainer, init_path: Path, fallback_path: Path, cfg: Any, where: Any, seed: int,
    free_memory: Callable[[], None], removed: Sequence[str] = (), human: tuple[set[str], set[str]] = (set(), set()),
    human_weight: int = 1,
) -> dict[str, Any]:
    """Fine-tune `init_path` on this iteration's records into it_dir/model; with none the model stays `fallback_path`.

    `removed` lists record ids a reviewer rejected; they are left out. `human` holds the ids of the pairs a person
    confirmed and of those they flipped in review: flipped pairs train swapped, and both count `human_weight` times.
    """
    records = load_records(it_dir / TRAIN_FILES[trainer.record_type], trainer.record_type)
    if removed:
        left_out = set(removed)
        records = [r for r in records if r.id not in left_out]
    people: dict[str, int] = {}
    if human[0] or human[1]:
        records, people = weigh_pairs(records, human[0], human[1], human_weight)
    if (it_dir / "model" / "config.json").is_file():
        # Killed after the trainer put model/ in place (its last act, atomic) but before this summary.
        _log(f"{it_dir.name}/train: model/ is already complete; not training again")
        shutil.rmtree(it_dir / "trainer", ignore_errors=True)  # checkpoints the trainer had not yet removed
        summary = {"skipped": False, "model": "model", "init_from": str(init_path), "examples": len(records),
                   "recovered": True, "seconds": 0.0}
    elif not records:
        _log(f"{it_dir.name}/train: nothing to train on; the model is unchanged this iteration")
        # Absolute: the fallback may be a path relative to the working directory (output_dir: runs).
        summary = {"skipped": True, "model": str(Path(fallback_path).resolve()), "examples": 0, "seconds": 0.0}
    else:
        free_memory()  # free the sampling copy before training loads its own
        _log(f"{it_dir.name}/train: {len(records)} examples, starting from {init_path}")
        try:
            stats = trainer.train(init_path, records, it_dir / "model", it_dir / "trainer", cfg, where, seed)
        except Exception as e:
            # A full disk reaches us wrapped by the checkpoint writer (safetensors, torch.save): say so in one line.
            reason = write_failure(e)
            if reason is None:
                raise
            raise WriteError(it_dir, f"training: {reason}") from None
        summary = {"skipped": False, "model": "model", "init_from": str(init_path), "examples": len(records), **stats}
    summary["removed_by_review"] = len(removed)
    summary.update(people)
    return summary
