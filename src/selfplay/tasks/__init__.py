"""Where problems come from. `build_task` picks a built-in from TASKS by the config's `task.source`."""

from __future__ import annotations

from selfplay.config import TaskConfig
from selfplay.tasks.base import ANSWER_INSTRUCTION, Split, Task, render_prompt
from selfplay.tasks.jsonl import JsonlTask
from selfplay.tasks.reasoning_gym import ReasoningGymTask

__all__ = ["ANSWER_INSTRUCTION", "Split", "Task", "TASKS", "build_task", "render_prompt"]


def _reasoning_gym(cfg: TaskConfig) -> Task:
    return ReasoningGymTask(cfg.dataset, dict(cfg.params), cfg.train_size, cfg.eval_size, cfg.seed, cfg.one_shot)


def _jsonl(cfg: TaskConfig) -> Task:
    return JsonlTask(cfg.path or "", cfg.train_size, cfg.eval_size, cfg.seed, cfg.one_shot)


TASKS = {"reasoning_gym": _reasoning_gym, "jsonl": _jsonl}


def build_task(cfg: TaskConfig) -> Task:
    return TASKS[cfg.source](cfg)
