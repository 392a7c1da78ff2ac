"""What runs inside a Ray worker: a stage worker that builds its backend and verifiers from the same factories the
local run uses, keeps its models loaded across calls, and loads again only when asked for another model.

The driver talks to it in plain dicts (records as `to_dict` writes them), so nothing but this package and the
standard types crosses the wire. It never writes the run folder: the driver appends what it returns.
"""

from __future__ import annotations

import os
import socket
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from selfplay.errors import UserError
from selfplay.generation import build_generator
from selfplay.interfaces import Generator, SamplingParams
from selfplay.models import placement, resolve_model_path
from selfplay.records import Problem, Sample, from_dict, to_dict
from selfplay.verifiers import build_verifier, verify_all

MODELS_KEPT = 2  # like the driver's pool: the model being sampled and, say, the base model a judge reads


class WorkerSetupError(UserError):
    """A worker cannot do what it was asked at all (its model is unreadable): the run stops with this line."""


class StageWorker:
    """One Ray actor's state: the run's generation settings, its loaded models and its built verifiers."""

    def __init__(self, device: str, dtype: str, backend: str, options: dict[str, Any], threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.where = placement(device, dtype)
        self.backend, self.options = backend, dict(options)
        self.models: OrderedDict[str, Generator] = OrderedDict()
        self.verifiers: dict[str, Any] = {}
        self.name = f"{socket.gethostname()} pid {os.getpid()}"

    def whoami(self) -> str:
        return self.name

    def generator(self, path: str) -> Generator:
        """The model at `path`, loaded here once; the least recently used goes when a third is asked for."""
        if path in self.models:
            self.models.move_to_end(path)
            return self.models[path]
        folder = Path(path)
        if not path.startswith("embedded:") and not (folder / "config.json").is_file():
            why = "no such folder" if not folder.exists() else "no config.json in it" if folder.is_dir() else (
                "not a folder")
            raise WorkerSetupError(f"Ray worker {self.name}: cannot read the model at {path} ({why}); every worker "
                                   "needs the run folder at the same path (shared storage, docs/guide.md#scale)")
        while len(self.models) >= MODELS_KEPT:
            self.models.popitem(last=False)[1].close()
        try:
            model = build_generator(self.backend, resolve_model_path(path), self.where, self.options)
        except (OSError, ValueError) as e:
            raise WorkerSetupError(f"Ray worker {self.name}: cannot load the model at {path}: "
                                   f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        self.models[path] = model
        return model

    def generate(self, path: str, problems: list[dict[str, Any]], params: dict[str, Any], batch_size: int
                 ) -> tuple[str, list[tuple[str, list[dict[str, Any]]]]]:
        """Every problem's `params.n` completions: (the model's name, [(problem id, [completion dicts])])."""
        gen = self.generator(path)
        out = []
        for batch in gen.generate([from_dict(Problem, p) for p in problems], SamplingParams(**params), batch_size):
            out += [(p.id, [asdict(c) for c in completions]) for p, completions in batch]
        return gen.model_name, out

    def verify(self, spec: dict[str, Any], items: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[dict[str, Any]]:
        """Verdicts (dicts) for (problem, sample) pairs, by the verifier `spec` describes (built here once)."""
        verifier = self._verifier(spec)
        pairs = [(from_dict(Problem, p), from_dict(Sample, s)) for p, s in items]
        return [to_dict(v) for v in verify_all(verifier, pairs)]

    def _verifier(self, spec: dict[str, Any]):
        import json

        key = json.dumps(spec, sort_keys=True, default=str)
        if key not in self.verifiers:
            from selfplay.config import JudgeConfig

            self.verifiers[key] = build_verifier(
                spec["name"], spec["task_default"], strict_format=spec["strict_format"], options=spec["options"],
                run=_WorkerModels(self, spec["current"], spec["base"]), field=spec["field"],
                judge=JudgeConfig(**spec["judge"]), seed=spec["seed"])
        return self.verifiers[key]

    def release(self) -> int:
        """Free every model (the driver trains next, on the memory they held); returns how many were loaded."""
        import gc

        n = len(self.models)
        while self.models:
            self.models.popitem()[1].close()
        self.verifiers.clear()
        gc.collect()
        return n


class _WorkerModels:
    """The run's models as a verifier on a worker sees them: 'current', 'base' or a folder, loaded on the worker."""

    def __init__(self, worker: StageWorker, current: str, base: str):
        self.worker, self.current, self.base = worker, current, base

    def generator(self, which: str) -> Generator:
        path = self.current if which == "current" else self.base if which == "base" else which
        return self.worker.generator(path)
