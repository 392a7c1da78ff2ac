"""Open-ended prompts with no reference answer (`task.source: prompts`), and constitutions, the written principles
the 'constitutional' recipe critiques and revises by. Both are JSONL files of text written for a model to read.

A prompt set has one `{"prompt": ..., "category": ...}` object per line ('category' optional; other fields are kept
in the problem's meta). With no reference answer, nothing but an LLM judge can score the answers, so the task's
default verifier is 'judge'. The split is the shared one (`tasks.base.split_items`): de-duplicated by prompt,
ordered by a seeded hash, no prompt on both sides; there is no one-shot example (`task.one_shot` is ignored) and
no answer-line instruction. Without `task.path`, the built-in `builtin:assistant-prompts` is used: everyday
requests and red-team requests (harmful help, manipulation, privacy) that a good assistant declines or redirects.

A constitution has one principle per line: `{"name": ..., "critique": ..., "revision": ...}`, plus an optional
`"compare"` (the question a judge answers when it compares two responses by the principle). Paths 'builtin:NAME'
name files shipped in selfplay/data/ (`builtin:constitution`, `builtin:follow-instructions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from selfplay.errors import UserError
from selfplay.files import iter_jsonl
from selfplay.tasks.base import RawItem, Split, split_items
from selfplay.tasks.jsonl import data_path

DEFAULT_PROMPTS = "builtin:assistant-prompts"


def _text(obj: dict, key: str, where: str, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: '{key}' must be a non-empty string (got {value!r})")
    return value.strip()


def _resolve(path: str, field: str) -> Path:
    """The file a path or 'builtin:NAME' names; one line naming `field` when it does not exist."""
    try:
        found = data_path(path)
    except UserError as e:
        raise UserError(f"{field}: {e}") from None
    if not found.is_file():
        raise UserError(f"{field}: {path}: file not found")
    return found


@dataclass
class PromptsTask:
    path: str = DEFAULT_PROMPTS
    train_size: int = 64
    eval_size: int = 64
    seed: int = 0
    default_verifier: str = "judge"

    @property
    def name(self) -> str:
        return f"prompts:{data_path(self.path).stem}"

    def load(self) -> list[RawItem]:
        path = _resolve(self.path, "task.path")
        items = []
        for lineno, obj in iter_jsonl(path):
            where = f"{path}: line {lineno}"
            prompt = _text(obj, "prompt", where)
            _text(obj, "category", where, required=False)
            meta = {k: v for k, v in obj.items() if k != "prompt"}
            items.append(RawItem(prompt, "", meta))
        if not items:
            raise UserError(f"{path}: no prompts in the file")
        return items

    def split(self) -> Split:
        return split_items(self.load(), prefix=data_path(self.path).stem, train_size=self.train_size,
                           eval_size=self.eval_size, seed=self.seed, one_shot=False, source=str(self.path),
                           instruction=None)


# -- constitutions ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Principle:
    """One principle: how to ask for a critique by it, how to ask for a revision, and (optionally) a comparison."""

    name: str
    critique: str
    revision: str
    compare: str | None = None


PRINCIPLE_FIELDS = ("name", "critique", "revision", "compare")


def load_constitution(path: str, field: str = "constitution.path") -> list[Principle]:
    """The principles of a constitution file (a path or 'builtin:NAME'); a bad line is one error naming it."""
    file = _resolve(path, field)
    principles: list[Principle] = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(file):
        where = f"{file}: line {lineno}"
        unknown = sorted(set(obj) - set(PRINCIPLE_FIELDS))
        if unknown:
            raise UserError(f"{where}: unknown field '{unknown[0]}' (a principle has {', '.join(PRINCIPLE_FIELDS)})")
        name = _text(obj, "name", where)
        if name in seen:
            raise UserError(f"{where}: 'name' {name!r} is already used on line {seen[name]}")
        seen[name] = lineno
        principles.append(Principle(name, _text(obj, "critique", where), _text(obj, "revision", where),
                                    _text(obj, "compare", where, required=False)))
    if not principles:
        raise UserError(f"{file}: no principles in the file (one JSON object per line: name, critique, revision)")
    return principles
