"""Where problems come from. `build_task` picks a built-in from TASKS by the config's `task.source`."""

from __future__ import annotations

from dataclasses import replace

from selfplay.config import ControlTaskConfig, TaskConfig
from selfplay.records import Problem
from selfplay.tasks.base import ANSWER_INSTRUCTION, Split, Task, exemplar_item, render_prompt
from selfplay.tasks.jsonl import JsonlTask
from selfplay.tasks.reasoning_gym import ReasoningGymTask

__all__ = [
    "ANSWER_INSTRUCTION", "Split", "Task", "TASKS", "build_control", "build_task", "control_task", "fresh_problems",
    "render_prompt",
]


def _reasoning_gym(cfg: TaskConfig) -> Task:
    return ReasoningGymTask(cfg.dataset, dict(cfg.params), cfg.train_size, cfg.eval_size, cfg.seed, cfg.one_shot)


def _jsonl(cfg: TaskConfig) -> Task:
    return JsonlTask(cfg.path or "", cfg.train_size, cfg.eval_size, cfg.seed, cfg.one_shot)


TASKS = {"reasoning_gym": _reasoning_gym, "jsonl": _jsonl}


def build_task(cfg: TaskConfig) -> Task:
    return TASKS[cfg.source](cfg)


def control_task(cfg: ControlTaskConfig) -> Task:
    """A control task: every problem is an evaluation problem, none is trained on."""
    if cfg.source == "jsonl":
        return JsonlTask(cfg.path or "", 0, cfg.size, cfg.seed, cfg.one_shot)
    return ReasoningGymTask(cfg.dataset, dict(cfg.params), 0, cfg.size, cfg.seed, cfg.one_shot)


def build_control(cfg: ControlTaskConfig) -> list[Problem]:
    """A control task's problems, their ids prefixed with the control's name."""
    return [replace(p, id=f"{cfg.name}:{p.id}") for p in control_task(cfg).split().heldout]


def fresh_problems(
    cfg: TaskConfig, size: int, seed: int, exclude: set[str], exemplar: Problem | None
) -> tuple[list[Problem], str | None]:
    """New problem variants from another seed, none in `exclude`; a note instead when the task cannot."""
    if cfg.source != "reasoning_gym":
        return [], "the task is a fixed file: no fresh variants (reasoning-gym tasks only)"
    task = ReasoningGymTask(cfg.dataset, dict(cfg.params), cfg.train_size, cfg.eval_size, seed, cfg.one_shot)
    found = task.fresh(size, seed, exclude, exemplar_item(exemplar) if exemplar is not None else None)
    return found, None if found else "every generated problem was already in the train or held-out split"
