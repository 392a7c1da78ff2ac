"""Pull the final answer out of a completion: the last 'Answer: ...' line, else the last \\boxed{...}."""

from __future__ import annotations

import re

_ANSWER_LINE = re.compile(
    r"^\W*(?:the\s+)?(?:final\s+)?answer(?:\s+is)?\W*[:：]\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE
)
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_WRAPPERS = ("**", "__", "`", "$")


def extract_answer(completion: str) -> str | None:
    """The text of the final answer, or None when the completion states none."""
    matches = _ANSWER_LINE.findall(completion)
    if matches:
        answer = matches[-1].strip()
    else:
        boxed = _BOXED.findall(completion)
        if not boxed:
            return None
        answer = boxed[-1].strip()
    # Models decorate answers with markdown; strip matched wrappers and a trailing full stop.
    answer = answer.rstrip(".").strip()
    changed = True
    while changed and answer:
        changed = False
        for w in _WRAPPERS:
            if len(answer) > 2 * len(w) and answer.startswith(w) and answer.endswith(w):
                answer = answer[len(w) : -len(w)].strip()
                changed = True
    answer = answer.rstrip(".").strip()
    return answer or None
