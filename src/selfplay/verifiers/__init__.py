"""Verifiers score samples. A Verifier is anything with `verify(problem, sample) -> Verdict` and a `name`.

A config names a built-in from VERIFIERS or a user's factory as 'module:attr'. A user factory is called
as `factory(options, run)`: `options` is `verify.options`, and `run.generator(which)` hands it a
generator for 'current' (the model this iteration samples from), 'base', or a model folder, for a judge.
A verifier may also define `verify_many(items)` to judge a batch at once, and `verify_stream(items)` to yield
(index, verdict) as each finishes (or a list of them that finished together), so the verify stage appends each
verdict as soon as it is known.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from selfplay.errors import UserError
from selfplay.interfaces import BatchVerifier, GeneratorSource, Verifier
from selfplay.plugins import check_call, resolve
from selfplay.records import Problem, Sample, Verdict
from selfplay.verifiers.answer import extract_answer
from selfplay.verifiers.code import CodeVerifier
from selfplay.verifiers.contains import ContainsVerifier
from selfplay.verifiers.ifeval import IfEvalVerifier
from selfplay.verifiers.judge import NAME as JUDGE
from selfplay.verifiers.judge import LLMJudge
from selfplay.verifiers.majority import NAME as MAJORITY
from selfplay.verifiers.majority import MajorityVerifier
from selfplay.verifiers.math import MathVerifier
from selfplay.verifiers.reasoning_gym import ReasoningGymVerifier
from selfplay.verifiers.reward_model import NAME as REWARD_MODEL
from selfplay.verifiers.reward_model import RewardModelVerifier

__all__ = ["LABEL_READERS", "MAJORITY", "VERIFIERS", "Verifier", "build_verifier", "extract_answer", "reads_labels",
           "verify_all"]

# Built-ins take their options as keyword arguments, plus the answer-format setting.
VERIFIERS = {
    "reasoning_gym": ReasoningGymVerifier, "math": MathVerifier, "contains": ContainsVerifier, "ifeval": IfEvalVerifier,
    "code": CodeVerifier, MAJORITY: MajorityVerifier, REWARD_MODEL: RewardModelVerifier,
}

# Built-ins that check a sample against the problem's answer (its reference, a reasoning-gym entry's answer, a code
# task's tests): with task.labels: hidden they would train on the labels the run must not see.
LABEL_READERS = frozenset({"reasoning_gym", "math", "contains", "code"})


def reads_labels(name: str, task_default: str) -> bool:
    """Whether the verifier `name` ('auto' meaning the task's own) checks samples against the answers."""
    return (task_default if name == "auto" else name) in LABEL_READERS


def build_verifier(
    name: str, task_default: str, *, strict_format: bool = False, options: dict[str, Any] | None = None,
    run: GeneratorSource | None = None, field: str = "verify.verifier", judge: Any = None, seed: int = 0,
) -> Verifier:
    """'auto' means the task's own checker; 'judge' the LLM judge the `judge` config section describes;
    otherwise a built-in name or a user's 'module:attr' factory."""
    chosen = task_default if name == "auto" else name
    if chosen == JUDGE:
        if options:
            raise UserError(f"{field.rsplit('.', 1)[0]}.options: the judge takes its settings from the judge: "
                            f"section, not from options (got {', '.join(options)})")
        from selfplay.config import JudgeConfig

        return LLMJudge(judge if judge is not None else JudgeConfig(), run, seed=seed)
    factory = resolve(chosen, {**VERIFIERS, JUDGE: LLMJudge}, field)
    options = dict(options or {})
    if chosen in VERIFIERS:
        kwargs = {"strict_format": strict_format, **options}
        if chosen == MAJORITY:  # 'auto' equality follows the task's own checker
            kwargs["task_default"] = task_default
        check_call(factory, field.rsplit(".", 1)[0] + ".options", **kwargs)
        return factory(**kwargs)
    check_call(factory, field, options, run)
    return factory(options, run)


def verify_all(verifier: Verifier, items: Sequence[tuple[Problem, Sample]]) -> list[Verdict]:
    """Verdicts for `items` in order, batched when the verifier can judge a batch."""
    if isinstance(verifier, BatchVerifier):
        verdicts = verifier.verify_many(items)
        if len(verdicts) != len(items):
            raise RuntimeError(f"{verifier.name}: verify_many gave {len(verdicts)} verdicts for {len(items)} samples")
        return verdicts
    return [verifier.verify(p, s) for p, s in items]
