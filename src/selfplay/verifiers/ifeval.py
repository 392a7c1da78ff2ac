"""Instruction following, checked by IFEval's and IFBench's own checker code (the if-verifiable package).

A problem names its instructions in its meta: `instruction_id_list`, `kwargs` (one dict per instruction,
as the checker's build_description takes it) and `benchmark` ("ifeval", the default, or "ifbench", which
picks the checker registry). As in IFEval, an instruction passes *strict* on the response as written and
*loose* when it holds on one of eight lenient variants (first or last line dropped, markdown `*` removed).
A verdict passes when every instruction passes strict; its score is the strict share of instructions, and
its critique a compact JSON record of both, from which `instruction_metrics` gives IFEval's four numbers.

Nothing is downloaded: if-verifiable's IFBench module asks nltk to fetch data when imported, and that
request is refused here. A checker that needs nltk data which is not installed (IFEval's number_sentences,
some IFBench ones) fails with a clear error; the built-in tasks never use those.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterable
from typing import Any

from selfplay.errors import UserError
from selfplay.records import Problem, Sample, Verdict


@contextlib.contextmanager
def _no_downloads():
    """Refuse nltk.download while a module that calls it at import time is imported."""
    import nltk

    real = nltk.download
    nltk.download = lambda *args, **kwargs: False
    try:
        yield
    finally:
        nltk.download = real


@functools.cache
def registry(benchmark: str) -> dict[str, Any]:
    """The checker classes of one benchmark, by instruction id."""
    import langdetect

    # langdetect samples at random; a fixed seed makes the language and case checkers give the same verdict twice.
    langdetect.DetectorFactory.seed = 0
    if benchmark == "ifeval":
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    elif benchmark == "ifbench":
        with _no_downloads():
            from if_verifiable.ifbench.instructions_registry import INSTRUCTION_DICT
    else:
        raise ValueError(f"unknown benchmark '{benchmark}'")
    return INSTRUCTION_DICT


def check(problem: Problem, response: str) -> tuple[list[str], list[bool], list[bool]]:
    """The instruction ids of `problem` and, for each, whether `response` follows it strictly and loosely."""
    from if_verifiable.common import evaluate_instructions

    meta = problem.meta
    ids, kwargs = meta.get("instruction_id_list"), meta.get("kwargs")
    if not isinstance(ids, list) or not ids or not isinstance(kwargs, list) or len(kwargs) != len(ids):
        raise UserError(f"problem {problem.id}: the ifeval verifier needs meta 'instruction_id_list' and 'kwargs' "
                        "(lists of equal length)")
    benchmark = str(meta.get("benchmark", "ifeval"))
    if benchmark not in ("ifeval", "ifbench"):
        raise UserError(f"problem {problem.id}: meta 'benchmark' is '{benchmark}'; expected 'ifeval' or 'ifbench'")
    known = registry(benchmark)
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise UserError(f"problem {problem.id}: unknown {benchmark} instruction id(s) {', '.join(unknown)}")
    try:
        results, _ = evaluate_instructions(response=response, instruction_id_list=ids, kwargs_list=kwargs,
                                           prompt=problem.prompt, instruction_registry=known)
    except LookupError:
        raise UserError(f"problem {problem.id}: a checker of {', '.join(ids)} needs nltk data that is not "
                        "installed (nothing is downloaded at run time)") from None
    if not results:  # an empty response follows nothing
        return list(ids), [False] * len(ids), [False] * len(ids)
    return list(ids), [r.strict_pass for r in results], [r.loose_pass for r in results]


class IfEvalVerifier:
    name = "ifeval"

    def __init__(self, strict_format: bool = False):
        self.strict_format = strict_format  # every built-in takes it; instructions have no answer line

    def verify(self, problem: Problem, sample: Sample) -> Verdict:
        ids, strict, loose = check(problem, sample.completion)
        critique = json.dumps({"instructions": ids, "strict": strict, "loose": loose}, separators=(",", ":"))
        answer = f"{sum(strict)}/{len(ids)} strict" if sample.completion.strip() else None
        return Verdict(sample.id, problem.id, sum(strict) / len(ids), all(strict), answer, self.name, critique)


def _records(verdicts: Iterable[Verdict]) -> list[dict[str, Any]]:
    out = []
    for v in verdicts:
        try:
            found = json.loads(v.critique or "")
        except json.JSONDecodeError:
            continue
        if isinstance(found, dict) and {"instructions", "strict", "loose"} <= found.keys():
            out.append(found)
    return out


def instruction_metrics(verdicts: Iterable[Verdict]) -> dict[str, float]:
    """IFEval's four numbers from verdicts with an ifeval critique (others are ignored); {} when there are none."""
    found = _records(verdicts)
    if not found:
        return {}
    n = sum(len(r["strict"]) for r in found)
    return {
        "prompt_strict": sum(all(r["strict"]) for r in found) / len(found),
        "prompt_loose": sum(all(r["loose"]) for r in found) / len(found),
        "instruction_strict": sum(sum(r["strict"]) for r in found) / n,
        "instruction_loose": sum(sum(r["loose"]) for r in found) / n,
    }


def instruction_pass_rates(verdicts: Iterable[Verdict]) -> dict[str, dict[str, float]]:
    """Per instruction id: how often it was asked for, and its strict and loose pass rates."""
    counts: dict[str, list[int]] = {}
    for r in _records(verdicts):
        for iid, s, lo in zip(r["instructions"], r["strict"], r["loose"], strict=True):
            c = counts.setdefault(iid, [0, 0, 0])
            c[0], c[1], c[2] = c[0] + 1, c[1] + s, c[2] + lo
    return {iid: {"n": n, "strict": s / n, "loose": lo / n} for iid, (n, s, lo) in sorted(counts.items())}
