"""Distillation, one iteration: a teacher answers the training prompts, the student learns its answers by SFT.

The teacher (`teacher.model`) is a local model folder, sampled with the run's generation backend, or any
OpenAI-compatible chat endpoint given by URL (a vLLM, llama.cpp, TGI or `transformers serve` server), asked
through `selfplay.generation.openai_compat`. With `teacher.verify` (the default) only the answers the run's
verifier passes are kept, deduplicated and capped per problem as in RFT; otherwise every finished answer is.
The student is the run's model: each iteration fine-tunes `train.init_from` (the base, by default) on them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from selfplay.config import TeacherConfig
from selfplay.errors import UserError
from selfplay.filters import keep_verified
from selfplay.interfaces import Generator, SamplingParams
from selfplay.loop.context import RunContext
from selfplay.models import resolve_model_path
from selfplay.records import Example, Problem, Sample, Verdict
from selfplay.training import SFT


def check(cfg: Any, task: Any, train: Sequence[Problem]) -> None:
    """A local teacher is found (an embedded one converted) before anything is written."""
    if not cfg.teacher.is_endpoint:
        try:
            resolve_model_path(cfg.teacher.model)
        except UserError as e:
            raise UserError(f"teacher.model: {str(e).removeprefix('model.path: ')}") from None


def teacher_source(ctx: RunContext, teacher: TeacherConfig) -> tuple[str, Callable[[], Generator] | None]:
    """What the samples will name as their model, and a factory for the teacher's generator.

    A local teacher has no factory: the run's pool loads it (and keeps it, as for any model it samples), so a
    teacher that is the student's own folder is never closed under the pool that shares it.
    """
    if teacher.is_endpoint:
        from selfplay.generation.openai_compat import OpenAIGenerator

        return teacher.model, lambda: OpenAIGenerator(
            base_url=teacher.model, served_model=teacher.served_model, api_key_env=teacher.api_key_env,
            concurrency=teacher.concurrency, timeout=teacher.timeout, retries=teacher.retries,
            extra_body=dict(teacher.extra_body), field="teacher")
    return str(resolve_model_path(teacher.model)), None


def teacher_params(ctx: RunContext, teacher: TeacherConfig, seed: int) -> SamplingParams:
    tokens = teacher.max_new_tokens or ctx.cfg.generate.max_new_tokens
    if teacher.temperature == 0.0:
        return SamplingParams(n=1, temperature=0.0, max_new_tokens=tokens, seed=seed)
    return SamplingParams(teacher.samples, teacher.temperature, teacher.top_p, tokens, seed)


def teacher_examples(
    problems: Sequence[Problem], samples: Sequence[Sample], verdicts: Sequence[Verdict], *, iteration: int,
    verify: bool, max_per_problem: int, dedupe: bool, drop_truncated: bool,
) -> tuple[list[Example], dict[str, Any]]:
    """The teacher's answers as SFT examples: the verified ones, or (verify off) every one."""
    if verify:
        kept = verdicts
    else:  # every answer counts as passed; truncation, repeats and the cap still apply
        kept = [Verdict(s.id, s.problem_id, 1.0, True, None, "unverified") for s in samples]
    examples, stats = keep_verified(problems, samples, kept, iteration=iteration, max_per_problem=max_per_problem,
                                    dedupe=dedupe, drop_truncated=drop_truncated)
    out = stats.to_dict()
    out["teacher_pass_rate"] = sum(v.passed for v in verdicts) / len(verdicts) if verdicts else None
    out["verified"] = verify
    return examples, out


def run_iteration(ctx: RunContext, i: int, source: Path) -> Path:
    cfg, teacher = ctx.cfg, ctx.cfg.teacher
    name, make = teacher_source(ctx, teacher)
    ctx.generate(i, ctx.train_problems, name, teacher_params(ctx, teacher, cfg.seed + 1000 * i), generator=make)
    ctx.verify(i, ctx.train_problems)

    def select(problems: Sequence[Problem], samples: Sequence[Sample], verdicts: Sequence[Verdict]):
        f = cfg.filter
        return teacher_examples(problems, samples, verdicts, iteration=i, verify=teacher.verify,
                                max_per_problem=f.max_per_problem, dedupe=f.dedupe, drop_truncated=f.drop_truncated)

    ctx.select(i, ctx.train_problems, select, Example)
    removed = ctx.review(i)
    return ctx.train(i, SFT(), ctx.init_model(source), source, removed)
