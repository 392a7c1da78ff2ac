"""The 'code' verifier: run the sample's program against the problem's tests in a sandbox (selfplay.sandbox).

The program is the sample's fenced code block that defines the entry point (else its first block; else the
whole completion). A sample passes when every test passes; its score is the share of tests that passed. The
verdict's `details` keep the sandbox's report (each test, the limit hit, time, memory, the program's output).

Its options (`verify.options`) are the sandbox's limits: timeout, cpu_seconds, memory_mb, processes,
file_size_mb, open_files, tmp_mb, output_kb, workers, retries, python, uid_base (selfplay.sandbox.Limits).
A sandbox that cannot start is retried and then stops the stage with the reason: it is never scored.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

from selfplay.errors import UserError
from selfplay.records import Problem, Sample, Verdict
from selfplay.sandbox import Limits, Result, TestSpec, shared_sandbox

NAME = "code"
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)
OUTPUT_KEPT = 1000  # characters of the program's output kept in a verdict


def extract_code(text: str, entry_point: str) -> str | None:
    """The program in a completion: the fenced block that defines `entry_point`, else the first Python block,
    else the whole text when it defines it. None when there is no code."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    defines = re.compile(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.M)
    for _, body in blocks:
        if defines.search(body):
            return body
    for lang, body in blocks:
        if lang in ("", "python", "py", "python3") and body.strip():
            return body
    return text if defines.search(text) else None


def test_spec(problem: Problem) -> TestSpec:
    meta = problem.meta
    if "entry_point" not in meta or ("tests" not in meta and "check" not in meta):
        raise UserError(f"problem {problem.id}: the 'code' verifier needs a code task's problems (entry_point and "
                        "tests); use task.source: code or humaneval")
    return TestSpec(meta["entry_point"], tests=meta.get("tests"), check=meta.get("check"),
                    context=meta.get("context", ""))


class CodeVerifier:
    name = NAME

    def __init__(self, strict_format: bool = False, **options: Any):
        self.limits = Limits.from_options(options)
        self.sandbox = shared_sandbox(self.limits)

    def verify(self, problem: Problem, sample: Sample) -> Verdict:
        return self.verify_many([(problem, sample)])[0]

    def verify_many(self, items: Sequence[tuple[Problem, Sample]]) -> list[Verdict]:
        out: list[Verdict | None] = [None] * len(items)
        for k, verdict in self.verify_stream(items):
            out[k] = verdict
        return [v for v in out if v is not None]

    def verify_stream(self, items: Sequence[tuple[Problem, Sample]]) -> Iterator[tuple[int, Verdict]]:
        """(index, verdict) as each program finishes, `workers` at a time."""
        jobs: list[tuple[int, str, TestSpec]] = []
        for k, (problem, sample) in enumerate(items):
            spec = test_spec(problem)
            code = extract_code(sample.completion, spec.entry_point)
            if code is None:
                yield k, Verdict(sample.id, problem.id, 0.0, False, None, self.name, "no code in the response",
                                 {"status": "no_code"})
            else:
                jobs.append((k, code, spec))
        for j, result in self.sandbox.run_many([(code, spec) for _, code, spec in jobs]):
            k, code, _ = jobs[j]
            problem, sample = items[k]
            yield k, _verdict(problem, sample, code, result, self.name)


def _verdict(problem: Problem, sample: Sample, code: str, result: Result, name: str) -> Verdict:
    n = len(result.tests)
    score = sum(t["passed"] for t in result.tests) / n if n else 0.0
    details = result.to_dict()
    details["output"] = details["output"][:OUTPUT_KEPT]
    return Verdict(sample.id, problem.id, score if not result.passed else 1.0, result.passed, code, name,
                   result.error, details)
