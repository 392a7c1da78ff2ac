"""A generator and a verifier with the local ones' interfaces whose work runs on the Ray workers.

The stages do not know: `stages.generate` appends each batch a `RayGenerator` yields, `stages.verify` each
verdict a `RayVerifier` streams, exactly as for the local backends, so resume, the progress bar, sample ids,
lineage and the guards stay as they are. Each sample is drawn from its own seeded stream (problem id and sample
index), so which worker drew a problem, and how often it was handed out, does not change its samples.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from selfplay.interfaces import Completion, Generator, SamplingParams
from selfplay.records import Problem, Sample, Verdict, from_dict, to_dict
from selfplay.scale.cluster import Handout, RayWorkers

# The verifiers worth a worker (a sandbox, a model) under scale.verify: auto; an answer check is cheaper here.
COSTLY_VERIFIERS = frozenset({"code", "judge", "reward_model"})


def handout_size(problems: int, per_problem: int, batch_size: int, workers: int, fixed: int | None) -> int:
    """Problems per handout: enough to fill a worker's batch, and at least two handouts per worker."""
    if fixed:
        return fixed
    fill = max(1, batch_size // max(1, per_problem))
    return max(1, min(fill, math.ceil(problems / (2 * workers))))


class RayGenerator:
    """The model at `path`, sampled on the workers; what the workers do not serve is done by a local copy."""

    ran_on = "ray"  # recorded in the stage's summary

    def __init__(self, workers: RayWorkers, path: Path, local: Any):
        self.workers, self.path, self._local_factory = workers, Path(path), local
        self.model_name = str(path)
        self._local: Generator | None = None

    def generate(self, problems: Sequence[Problem], params: SamplingParams, batch_size: int
                 ) -> Iterator[list[tuple[Problem, list[Completion]]]]:
        if not problems:
            return
        s = self.workers.scale
        size = handout_size(len(problems), params.n, batch_size, s.workers, s.problems_per_task)
        by_id = {p.id: p for p in problems}
        handouts = [Handout(chunk[0].id, "generate", (str(self.path), [to_dict(p) for p in chunk], asdict(params),
                                                      batch_size), [p.id for p in chunk])
                    for chunk in (problems[b: b + size] for b in range(0, len(problems), size))]
        # workers.run yields each handout once (a late answer from a worker given up on is never read), and a
        # problem is in one handout: each problem comes back once.
        for _, (model_name, results) in self.workers.run(handouts):
            self.model_name = model_name
            if results:
                yield [(by_id[pid], [Completion(**c) for c in cs]) for pid, cs in results]

    def __getattr__(self, name: str) -> Any:
        # Anything but sampling (a judge's option log-probabilities, the tokenizer) runs on a local copy.
        if name.startswith("_"):
            raise AttributeError(name)
        if self._local is None:
            self._local = self._local_factory()
        return getattr(self._local, name)

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
            self._local = None


class RayVerifier:
    """The run's verifier, judged on the workers from the same factory; `verify` of one sample stays local."""

    ran_on = "ray"  # recorded in the verify stage's summary

    def __init__(self, local: Any, spec: dict[str, Any], workers: RayWorkers, models: Any):
        self.local, self.spec, self.workers, self.models = local, spec, workers, models
        self.name = local.name

    def _spec(self) -> dict[str, Any]:
        current = self.models.current or self.models.base_path
        return {**self.spec, "current": str(current), "base": str(self.models.base_path)}

    def verify(self, problem: Problem, sample: Sample) -> Verdict:
        return self.local.verify(problem, sample)

    def verify_stream(self, items: Sequence[tuple[Problem, Sample]]) -> Iterator[list[tuple[int, Verdict]]]:
        """[(index into items, verdict), ...] for each handout as it comes back (the stage saves it with one fsync,
        not one per verdict: the driver's time per handout at scale); a problem's samples stay in one handout."""
        groups: dict[str, list[int]] = defaultdict(list)
        for n, (p, _) in enumerate(items):
            groups[p.id].append(n)
        s = self.workers.scale
        per_problem = max(len(g) for g in groups.values()) if groups else 1
        size = handout_size(len(groups), per_problem, 64, s.workers, s.problems_per_task)
        spec, ids = self._spec(), list(groups)
        handouts = []
        for b in range(0, len(ids), size):
            index = [n for pid in ids[b: b + size] for n in groups[pid]]
            pairs = [(to_dict(items[n][0]), to_dict(items[n][1])) for n in index]
            handouts.append(Handout(ids[b], "verify", (spec, pairs), ids[b: b + size], data=index))
        for h, verdicts in self.workers.run(handouts):
            yield [(n, from_dict(Verdict, v)) for n, v in zip(h.data, verdicts, strict=True)]

    def verify_many(self, items: Sequence[tuple[Problem, Sample]]) -> list[Verdict]:
        out: list[Verdict | None] = [None] * len(items)
        for group in self.verify_stream(items):
            for n, v in group:
                out[n] = v
        return out  # type: ignore[return-value]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "local":
            raise AttributeError(name)
        return getattr(self.local, name)


class RayGroupVerifier(RayVerifier):
    """A verifier that judges a problem's samples together (a majority vote), on the workers."""

    def verify_group(self, problem: Problem, samples: Sequence[Sample]) -> list[Verdict]:
        return self.verify_many([(problem, s) for s in samples])
