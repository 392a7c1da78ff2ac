"""The train stage across processes: `train.launcher: accelerate` runs any Trainer under `accelerate launch`.

The run's process writes the stage's job (the trainer, its records, the settings) into `<iteration>/launch/`,
and starts `accelerate launch --num_processes N [--config_file F] -m selfplay.training.launch JOB`. Every rank
builds the same trainer and calls its `train`; trl's trainers are accelerate's, so the ranks form one DDP group
(NCCL on GPUs, gloo on CPUs), or DeepSpeed / FSDP when the config file says so. The checkpoints, the resume from
the last whole one and the merged `model/` are the local trainer's: rank 0 writes them, the others wait.

A rank that fails (an exception, SIGKILL, out of memory) makes torchrun stop the others; the stage then stops
with one line, and `selfplay resume` launches again from the last whole checkpoint. The launcher dies with the
run's process (PR_SET_PDEATHSIG), so a killed run leaves no ranks behind.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfplay.errors import UserError
from selfplay.files import atomic_write_jsonl, atomic_write_text, read_jsonl
from selfplay.models import Placement, placement
from selfplay.records import from_dict, to_dict
from selfplay.training.common import discard_partial


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _death_signal():
    """A function for the launcher's child side of fork: get SIGTERM when the run's process dies (Linux).

    libc is looked up here, in the parent: between fork and exec the child may only make the call itself.
    """
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:  # not Linux: a killed run may leave its ranks running
        return None
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _dtype_name(where: Placement) -> str:
    return str(where.dtype).removeprefix("torch.")


class AccelerateLaunch:
    """A Trainer (selfplay.interfaces) that runs `inner` on `train.num_processes` ranks with `accelerate launch`."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.record_type = inner.record_type

    def train(self, init_path: Path, records: Sequence[Any], out_dir: Path, work_dir: Path, cfg: Any,
              where: Placement, seed: int) -> dict[str, Any]:
        folder = out_dir.parent / "launch"
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_jsonl(folder / "records.jsonl", (to_dict(r) for r in records))
        result = folder / "result.json"
        result.unlink(missing_ok=True)
        job = {"trainer": f"{type(self.inner).__module__}:{type(self.inner).__qualname__}",
               "init_path": str(init_path), "out_dir": str(out_dir), "work_dir": str(work_dir),
               "train": cfg.model_dump(mode="json"), "device": where.device, "dtype": _dtype_name(where),
               "seed": seed, "result": str(result)}
        atomic_write_text(folder / "job.json", json.dumps(job, indent=1))
        discard_partial(work_dir)  # the ranks then all resume from the same last whole checkpoint
        argv = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(cfg.num_processes),
                "--num_machines", "1", "--main_process_port", str(_free_port())]
        if cfg.accelerate_config:
            if not Path(cfg.accelerate_config).is_file():
                raise UserError(f"train.accelerate_config: {cfg.accelerate_config} is not a file")
            argv += ["--config_file", cfg.accelerate_config]
        elif cfg.num_processes > 1:
            argv += ["--multi_gpu"]  # torchrun's ranks; on a machine without GPUs they form a gloo group on CPUs
        argv += ["--dynamo_backend", "no", "--mixed_precision", "no", "-m", "selfplay.training.launch",
                 str(folder / "job.json")]
        threads = max(1, (os.cpu_count() or 1) // cfg.num_processes)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)),
               "PYTHONUNBUFFERED": "1"}
        print(f"{out_dir.parent.name}/train: accelerate launch, {cfg.num_processes} process(es)"
              + (f", {cfg.accelerate_config}" if cfg.accelerate_config else ""), flush=True)
        tail: list[str] = []
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                              preexec_fn=_death_signal()) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                tail = (tail + [line.rstrip()])[-200:]
            code = proc.wait()
        if code != 0 or not result.is_file():
            raise UserError(f"train.launcher: accelerate: the training ranks failed (exit code {code}): "
                            f"{_failure(tail)}; finished checkpoints are kept, selfplay resume continues "
                            "from the last one")
        return {**json.loads(result.read_text()), "launcher": "accelerate", "num_processes": cfg.num_processes}


def _failure(tail: list[str]) -> str:
    """The most telling line of the ranks' output: a rank's error, or torchrun's summary of who failed."""
    for marker in ("Error:", "exitcode", "Signal", "Killed"):
        for line in reversed(tail):
            if marker in line:
                return line.strip()[:300]
    return (tail[-1].strip() if tail else "no output")[:300]


def main(job_path: str) -> None:
    """One rank: rebuild the job's trainer and records, train; rank 0 writes the result for the run's process."""
    from selfplay.config import TrainConfig

    job = json.loads(Path(job_path).read_text())
    module, name = job["trainer"].split(":")
    inner = getattr(importlib.import_module(module), name)()
    records = [from_dict(inner.record_type, r) for r in read_jsonl(Path(job_path).parent / "records.jsonl")]
    stats = inner.train(Path(job["init_path"]), records, Path(job["out_dir"]), Path(job["work_dir"]),
                        TrainConfig(**job["train"]), placement(job["device"], job["dtype"]), job["seed"])
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_text(Path(job["result"]), json.dumps(stats, default=str))


if __name__ == "__main__":
    main(sys.argv[1])
