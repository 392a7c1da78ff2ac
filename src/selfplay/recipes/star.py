"""STaR (Zelikman et al., 2022): rejection sampling plus rationalization, one iteration:

sample k completions per training problem and keep the verified ones, as RFT does. Then, for the training
problems that no sample solved, sample again with the reference answer given as a hint (`star.hint`), verify
those rationalizations against the same reference, and keep the ones that reach it, trained on *without*
the hint: the example's prompt is the problem's own. A rationalization that talks about the hint
(`star.drop_mentions`) or repeats its wording (three words in a row) is dropped, since without the hint in
its prompt it would teach the model to answer a hint it never saw.

This is aimed at the self-consistency ceiling of plain RFT: once greedy accuracy meets pass@k, the problems
the model never solves give no training signal; the hint turns some of them into examples.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from selfplay.errors import UserError
from selfplay.filters import keep_verified
from selfplay.loop.context import RunContext
from selfplay.recipes.rft import verified
from selfplay.records import Example, Problem, Sample, Verdict
from selfplay.training import SFT

HINTED = "#hinted"  # marks a hinted problem's id, so its samples never share an id with the plain ones


def hinted(problem: Problem, hint: str) -> Problem:
    """The problem asked again with its reference answer as a hint, appended to its (last) user turn."""
    text = hint.replace("{answer}", problem.reference)
    pid = problem.id + HINTED
    if problem.messages is None:
        return replace(problem, id=pid, prompt=f"{problem.prompt}\n{text}")
    turns = [dict(m) for m in problem.messages]
    last = max(k for k, m in enumerate(turns) if m["role"] == "user")
    turns[last]["content"] = f"{turns[last]['content']}\n{text}"
    return replace(problem, id=pid, messages=turns)


def unsolved(problems: Sequence[Problem], verdicts: Sequence[Verdict]) -> list[Problem]:
    solved = {v.problem_id for v in verdicts if v.passed}
    return [p for p in problems if p.id not in solved]


def mentions(text: str, words: Sequence[str]) -> bool:
    """Whether `text` mentions any of `words` as whole words (case-insensitive)."""
    return any(re.search(rf"(?<!\w){re.escape(w)}(?!\w)", text, re.IGNORECASE) for w in words if w.strip())


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def echoes(text: str, hint: str, n: int = 3) -> bool:
    """Whether `text` repeats any n words in a row of the hint's own wording (its answer slot left out).

    Measured on the embedded model: hinted answers such as "The correct answer is 20, and the step to reach it
    is ..." or "Show how to reach it on the last line with: 13." copy the hint; trained on under the plain
    prompt, they would teach the model to answer a hint it never saw.
    """
    grams = set()
    for part in hint.split("{answer}"):
        w = _words(part)
        grams |= {tuple(w[k : k + n]) for k in range(len(w) - n + 1)}
    w = _words(text)
    return any(tuple(w[k : k + n]) in grams for k in range(len(w) - n + 1))


def rationalizations(
    problems: Sequence[Problem], samples: Sequence[Sample], verdicts: Sequence[Verdict], *, iteration: int,
    max_per_problem: int, drop_mentions: Sequence[str], hint: str = "", dedupe: bool = True,
    drop_truncated: bool = True,
) -> tuple[list[Example], dict[str, Any]]:
    """SFT examples from the verified hinted samples, each under its problem's own prompt and id (no hint).

    A sample that mentions the hint (`drop_mentions`) or repeats three words in a row of its wording is dropped.
    """
    by_hinted_id = {p.id + HINTED: p for p in problems}
    leaning = {s.id for s in samples if mentions(s.completion, drop_mentions) or echoes(s.completion, hint)}
    kept_verdicts = [v for v in verdicts if v.sample_id not in leaning]
    # keep_verified reads the prompt from the problem it is given: the plain one, under the hinted id.
    plain = [replace(p, id=hid) for hid, p in by_hinted_id.items()]
    examples, stats = keep_verified(plain, samples, kept_verdicts, iteration=iteration,
                                    max_per_problem=max_per_problem, dedupe=dedupe, drop_truncated=drop_truncated)
    examples = [replace(e, problem_id=by_hinted_id[e.problem_id].id) for e in examples]
    passed = {v.sample_id for v in verdicts if v.passed}
    return examples, {
        "problems": len({s.problem_id for s in samples}),
        "samples": len(samples),
        "passed": len(passed),
        "dropped_mentioning_hint": len(leaning & passed),
        # Kept answers with nothing before the answer line: the hint copied, no working shown.
        "answer_only": sum(1 for e in examples if len(e.completion.strip().splitlines()) < 2),
        "kept": len(examples),
        "problems_reached": len({e.problem_id for e in examples}),
        "truncated": stats.truncated,
    }


def check(cfg: Any, task: Any, train: Sequence[Problem]) -> None:
    """A hint needs a reference answer: refuse a task whose training problems have none (open-ended prompts)."""
    if cfg.star.rationalize and cfg.task.labels == "hidden":
        raise UserError("task.labels: hidden: recipe 'star' gives the answer as a hint (rationalization); set "
                        "star.rationalize: false, or use recipe 'rft'")
    missing = [p.id for p in train if not p.reference.strip()]
    if cfg.star.rationalize and missing:
        raise UserError(f"recipe 'star': {len(missing)} of {len(train)} training problems of task {task.name} have no "
                        f"reference answer to give as a hint (e.g. {missing[0]}); use recipe 'rft', or "
                        "star.rationalize: false")


def run_iteration(ctx: RunContext, i: int, source: Path) -> Path:
    cfg, star = ctx.cfg, ctx.cfg.star
    params = cfg.generate.params(cfg.generate.samples_per_problem, cfg.seed + 1000 * i)
    ctx.generate(i, ctx.train_problems, source, params)
    ctx.verify(i, ctx.train_problems)
    missed: list[Problem] = []
    if star.rationalize:
        missed = unsolved(ctx.train_problems, ctx.records(i, "verdicts", Verdict))
        asked = [hinted(p, star.hint) for p in missed]
        hint_params = cfg.generate.params(star.samples, cfg.seed + 1000 * i + 500)
        ctx.generate(i, asked, source, hint_params, stage="rationalize", out="rationalize-samples")
        ctx.verify(i, asked, stage="rationalize-verify", samples="rationalize-samples", out="rationalize-verdicts")

    def select(problems: Sequence[Problem], samples: Sequence[Sample], verdicts: Sequence[Verdict]):
        f = cfg.filter
        examples, out = verified(problems, samples, verdicts, f, i)
        out["unsolved"] = len(missed)
        if star.rationalize:
            extra, rstats = rationalizations(
                missed, ctx.records(i, "rationalize-samples", Sample), ctx.records(i, "rationalize-verdicts", Verdict),
                iteration=i, max_per_problem=f.max_per_problem, drop_mentions=star.drop_mentions, hint=star.hint,
                dedupe=f.dedupe, drop_truncated=f.drop_truncated)
            examples += extra
            out["rationalization"] = rstats
            out["rationalized"] = rstats["kept"]
            out["problems_reached"] = rstats["problems_reached"]
        return examples, out

    ctx.select(i, ctx.train_problems, select, Example)
    removed = ctx.review(i)
    return ctx.train(i, SFT(), ctx.init_model(source), source, removed)
