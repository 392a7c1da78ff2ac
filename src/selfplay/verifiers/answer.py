"""Pull the final answer out of a completion.

The prompt asks for a last line `Answer: <answer>`. Small models often state the answer another way,
so extraction tries, in order: the last `Answer:` line, the last `\\boxed{...}`, the last "the answer
is X", and (unless `strict`) the last number in the completion, as GSM8K's flexible extraction does.
"""

from __future__ import annotations

import re

_ANSWER_LINE = re.compile(
    r"^\W*(?:the\s+)?(?:final\s+)?answer(?:\s+is)?\W*[:：]\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE
)
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_ANSWER_IS = re.compile(r"\banswer\b[^\n]{0,40}?\bis\s*:?\s*([^\n]+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_WRAPPERS = ("**", "__", "`", "$")


def _clean(answer: str) -> str | None:
    answer = answer.strip().rstrip(".").strip()
    changed = True
    while changed and answer:
        changed = False
        for w in _WRAPPERS:  # models decorate answers with markdown
            if len(answer) > 2 * len(w) and answer.startswith(w) and answer.endswith(w):
                answer = answer[len(w) : -len(w)].strip()
                changed = True
    answer = answer.rstrip(".").strip()
    return answer or None


def extract_answer(completion: str, strict: bool = False) -> str | None:
    """The text of the final answer, or None when the completion states none."""
    for pattern in (_ANSWER_LINE, _BOXED):
        matches = pattern.findall(completion)
        if matches:
            return _clean(matches[-1])
    stated = _ANSWER_IS.findall(completion)
    if stated:
        # "the answer is 96 + 60 = 156." states its result after the last '='.
        return _clean(stated[-1].rsplit("=", 1)[-1])
    if strict:
        return None
    numbers = _NUMBER.findall(completion)
    return numbers[-1].replace(",", "") if numbers else None
