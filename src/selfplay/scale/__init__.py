"""Scale-out on Ray: the sampling, verify and evaluation stages of a run fanned out over Ray workers.

`scale.ray_address` turns it on. The driver stays one process that owns the run folder; the workers (Ray actors,
`worker.StageWorker`) build their backend and verifiers from the same factories as a local run and return plain
records, which the driver appends to the same partial files (`fanout`). `cluster.RayWorkers` connects, keeps the
workers, and hands out work with the faults handled. Training stays in the driver (or `accelerate launch`).
"""

from __future__ import annotations

from typing import Any

from selfplay.config.scale import ScaleConfig
from selfplay.scale.cluster import Handout, RayWorkers
from selfplay.scale.fanout import COSTLY_VERIFIERS, RayGenerator, RayGroupVerifier, RayVerifier
from selfplay.scale.worker import StageWorker, WorkerSetupError

__all__ = ["COSTLY_VERIFIERS", "Handout", "RayGenerator", "RayGroupVerifier", "RayVerifier", "RayWorkers",
           "StageWorker", "WorkerSetupError", "fan_out_verifier"]


def fan_out_verifier(local: Any, scale: ScaleConfig, workers: RayWorkers | None, models: Any,
                     spec: dict[str, Any]) -> Any:
    """`local`, or a verifier with its interface that judges on the workers, as `scale.verify` says.

    `spec` holds build_verifier's arguments (name, task_default, strict_format, options, field, judge, seed), so a
    worker builds the same verifier; the models it reads ('current', 'base') are filled in at each call.
    """
    from selfplay.interfaces import GroupVerifier

    if workers is None or scale.verify == "local":
        return local
    if scale.verify == "auto" and local.name not in COSTLY_VERIFIERS:
        return local
    cls = RayGroupVerifier if isinstance(local, GroupVerifier) else RayVerifier
    return cls(local, spec, workers, models)
