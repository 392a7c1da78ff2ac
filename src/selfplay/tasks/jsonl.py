"""Problems from a JSONL file, checked by math-verify.

One object per line with a 'prompt' and an 'answer' (or no line with an 'answer': a file of questions only, run
label-free with `verify.verifier: majority`, and never with a one-shot example, which needs an answer to show);
an optional 'solution' (worked steps) is shown when the
problem serves as the one-shot example, an optional 'response' is a whole written answer to learn from (the
demonstration of the 'spin' and 'sft' recipes), and an optional 'category' groups accuracy in the report. Other
fields are kept in the problem's meta. A path 'builtin:NAME' names a file shipped in selfplay/data/.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from selfplay.errors import UserError
from selfplay.files import iter_jsonl
from selfplay.tasks.base import RawItem, Split, split_items

DATA_DIR = Path(__file__).resolve().parents[1] / "data"


def data_path(path: str) -> Path:
    """A file path, or 'builtin:NAME' for selfplay/data/NAME.jsonl."""
    if path.startswith("builtin:"):
        name = path.removeprefix("builtin:")
        found = DATA_DIR / f"{name}.jsonl"
        if not found.is_file():
            known = ", ".join(sorted(f"builtin:{p.stem}" for p in DATA_DIR.glob("*.jsonl")))
            raise UserError(f"{path}: no such built-in data file (known: {known})")
        return found
    return Path(path)


def response_field(obj: dict, where: str) -> str | None:
    """A line's optional 'response' (a whole written answer: the demonstration), checked."""
    response = obj.get("response")
    if response is not None and (not isinstance(response, str) or not response.strip()):
        raise UserError(f"{where}: 'response' must be a non-empty string")
    return response


@dataclass
class JsonlTask:
    path: str
    train_size: int = 64
    eval_size: int = 100
    seed: int = 0
    one_shot: bool = True
    default_verifier: str = "math"

    @property
    def name(self) -> str:
        return f"jsonl:{data_path(self.path).name}"

    def load(self) -> list[RawItem]:
        path = data_path(self.path)
        if not path.is_file():
            raise UserError(f"task.path: file not found: {path}")
        items = []
        answered: tuple[bool, int] | None = None  # whether the first line has an answer, and its number
        for lineno, obj in iter_jsonl(path):
            has = obj.get("answer") is not None
            if answered is None:
                answered = (has, lineno)
            elif has != answered[0]:
                which = (lineno, answered[1]) if answered[0] else (answered[1], lineno)
                raise UserError(f"{path}: line {which[0]}: has no 'answer' but line {which[1]} has one; give every "
                                "line an answer, or none (a file of questions only runs label-free)")
            for key in ("prompt", "answer") if has else ("prompt",):
                if not isinstance(obj.get(key), (str, int, float)) or str(obj[key]).strip() == "":
                    raise UserError(f"{path}: line {lineno}: needs a non-empty '{key}' (string or number)")
            meta = {k: v for k, v in obj.items() if k not in ("prompt", "answer", "response")}
            response = response_field(obj, f"{path}: line {lineno}")
            if response is not None:  # a written answer to learn from (SPIN, the 'sft' recipe)
                meta["demonstration"] = response
            solution = obj.get("solution")
            answer = str(obj["answer"]) if has else ""
            items.append(RawItem(str(obj["prompt"]), answer, meta, str(solution) if solution is not None else None))
        if not items:
            raise UserError(f"{path}: no problems in the file")
        return items

    def split(self) -> Split:
        items = self.load()
        one_shot = self.one_shot
        if one_shot and not items[0].answer:
            print(f"task {self.name}: the file has no answers, so no worked example can be shown; running without "
                  "one (task.one_shot is ignored)", flush=True)
            one_shot = False
        return split_items(
            items,
            prefix=data_path(self.path).stem,
            train_size=self.train_size,
            eval_size=self.eval_size,
            seed=self.seed,
            one_shot=one_shot,
            source=str(self.path),
        )
