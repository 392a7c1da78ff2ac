"""Where a run's stages run: in this process (the default), or fanned out over the workers of a Ray cluster."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from selfplay.config.base import Section


class ScaleConfig(Section):
    ray_address: str | None = Field(
        None, description="null: every stage runs in this process. 'local': start a Ray cluster inside the run "
        "(one machine). 'auto': join the cluster this machine belongs to (after `ray start`). An address "
        "('10.0.0.5:6379', 'ray://host:10001'): join that cluster. Sampling, evaluation and the costly verifiers "
        "then run on `workers` Ray actors; the run folder, the files and the guarantees stay the same.")
    workers: int = Field(2, ge=1, description="Ray actors, each holding its own copy of the model (or verifier).")
    num_cpus: float = Field(1.0, gt=0.0, description="CPUs each worker reserves (and its torch threads).")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs each worker reserves (1 for a vLLM worker per GPU).")
    task_timeout: float = Field(
        900.0, gt=0.0, description="Seconds a worker may spend on one handout (a few problems) before it is taken "
        "for hung, killed, and its problems handed to another worker.")
    startup_timeout: float = Field(
        600.0, ge=0.0, description="Seconds a new worker is given on top of task_timeout for its first handout "
        "(starting its process, importing torch, loading the model).")
    max_retries: int = Field(
        2, ge=0, description="Times a problem is handed out again after its worker died or hung; one more "
        "failure stops the run with one line naming the problem.")
    verify: Literal["auto", "ray", "local"] = Field(
        "auto", description="Where the verify stage runs: 'auto' sends the costly verifiers (code sandbox, judge, "
        "reward model) to the workers and checks answers here; 'ray' or 'local' for every verifier.")
    problems_per_task: int | None = Field(
        None, ge=1, description="Problems in one handout (null: enough to fill a worker's batch, and at least "
        "two handouts per worker so a slow one does not hold the stage).")
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables for the workers (the run's offline settings "
        "are always passed).")

    @model_validator(mode="after")
    def _check(self) -> ScaleConfig:
        if self.ray_address is not None and not self.ray_address.strip():
            raise ValueError("scale.ray_address: empty; use null, 'local', 'auto' or a cluster address")
        return self

    @property
    def on_ray(self) -> bool:
        return self.ray_address is not None
