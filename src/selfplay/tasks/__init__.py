"""Where problems come from. A config names a built-in task from TASKS, or a user's factory 'module:attr'.

A task factory is called as `factory(section, train_size, eval_size)` with the config section that names
it (`task`, or one entry of `guards.control`) and returns a Task (selfplay.interfaces): a `name`, a
`default_verifier`, and `split()` into train / held-out problems, each rendered the task's own way.
"""

from __future__ import annotations

from dataclasses import replace

from selfplay.config import ControlTaskConfig, TaskConfig, TaskSource
from selfplay.errors import UserError
from selfplay.interfaces import FreshTask, Task
from selfplay.plugins import resolve
from selfplay.records import Problem
from selfplay.tasks.base import ANSWER_INSTRUCTION, RawItem, Split, exemplar_item, render_prompt, split_items
from selfplay.tasks.code import DEFAULT_CODE, CodeTask, HumanEvalTask
from selfplay.tasks.ifbench import IfBenchTask
from selfplay.tasks.instructions import InstructionsTask
from selfplay.tasks.jsonl import JsonlTask
from selfplay.tasks.prompts import DEFAULT_PROMPTS, PromptsTask
from selfplay.tasks.reasoning_gym import ReasoningGymTask

__all__ = [
    "ANSWER_INSTRUCTION", "RawItem", "Split", "Task", "TASKS", "build_control", "build_task", "control_task",
    "exemplar_item", "fresh_problems", "render_prompt", "split_items",
]


def _reasoning_gym(cfg: TaskSource, train_size: int, eval_size: int) -> Task:
    return ReasoningGymTask(cfg.dataset, dict(cfg.params), train_size, eval_size, cfg.seed, cfg.one_shot)


def _jsonl(cfg: TaskSource, train_size: int, eval_size: int) -> Task:
    return JsonlTask(cfg.path or "", train_size, eval_size, cfg.seed, cfg.one_shot)


def _instructions(cfg: TaskSource, train_size: int, eval_size: int) -> Task:
    return InstructionsTask(dict(cfg.params), train_size, eval_size, cfg.seed)


def _ifbench(cfg: TaskSource, train_size: int, eval_size: int) -> Task:
    # Evaluation only: train_size is ignored, every prompt is held out.
    return IfBenchTask(dict(cfg.params), eval_size, cfg.seed)


def _prompts(cfg: TaskSource, train_size: int, eval_size: int) -> Task:
    return PromptsTask(cfg.path or DEFAULT_PROMPTS, train_size, eval_size, cfg.seed)


def _code(cfg: TaskSource, train_size: int, eval_size: int) -> Task:
    if cfg.params:
        raise UserError(f"task.params.{next(iter(cfg.params))}: source 'code' takes no settings (give a file as path)")
    return CodeTask(cfg.path or DEFAULT_CODE, train_size, eval_size, cfg.seed)


def _humaneval(cfg: TaskSource, train_size: int, eval_size: int) -> Task:
    # Evaluation only: train_size is ignored, every problem is held out.
    if cfg.params:
        raise UserError(f"task.params.{next(iter(cfg.params))}: source 'humaneval' takes no settings")
    return HumanEvalTask(eval_size, cfg.seed)


TASKS = {
    "reasoning_gym": _reasoning_gym, "jsonl": _jsonl, "instructions": _instructions, "ifbench": _ifbench,
    "prompts": _prompts, "code": _code, "humaneval": _humaneval,
}


def build_task(cfg: TaskConfig) -> Task:
    return resolve(cfg.source, TASKS, "task.source")(cfg, cfg.train_size, cfg.eval_size)


def control_task(cfg: ControlTaskConfig) -> Task:
    """A control task: every problem is an evaluation problem, none is trained on."""
    return resolve(cfg.source, TASKS, f"guards.control[{cfg.name}].source")(cfg, 0, cfg.size)


def build_control(cfg: ControlTaskConfig) -> list[Problem]:
    """A control task's problems, their ids prefixed with the control's name."""
    return [replace(p, id=f"{cfg.name}:{p.id}") for p in control_task(cfg).split().heldout]


def fresh_problems(
    task: Task, size: int, seed: int, exclude: set[str], exemplar: Problem | None
) -> tuple[list[Problem], str | None]:
    """New problem variants from another seed, none in `exclude`; a note instead when the task cannot."""
    if not isinstance(task, FreshTask):
        return [], f"{task.name} cannot draw new problems (it has no `fresh` method: a fixed file cannot)"
    found = task.fresh(size, seed, exclude, exemplar)
    return found, None if found else "every generated problem was already in the train or held-out split"
