"""train.launcher: accelerate on this CPU: two ranks over gloo train what one process trains on the same global
batch, and a stage whose rank is SIGKILLed stops with one line and resumes from the last whole checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from selfplay.config import TrainConfig
from selfplay.errors import UserError
from selfplay.models import placement
from selfplay.records import Example
from selfplay.training import SFT
from selfplay.training.launch import AccelerateLaunch

pytestmark = pytest.mark.e2e

WHERE = placement("cpu", "float32")
EXAMPLES = [Example(f"it1/p{i}/s0", f"p{i}", f"p{i}/s0", f"What is {i} + {i % 3}?", f"Answer: {i + i % 3}", 1)
            for i in range(16)]
# The same global batch of 8: one process of 8, or two ranks of 4; LoRA, merged into the compared weights. Enough
# steps (24) for a kill to land between the first checkpoint and the end.
ONE = {"method": "lora", "batch_size": 8, "epochs": 12, "learning_rate": 1e-3, "checkpoint_every": 1}
TWO = {**ONE, "batch_size": 4, "launcher": "accelerate", "num_processes": 2}
TOLERANCE = 1e-4  # relative, on the losses: the ranks sum in another order (gloo), nothing else differs
WEIGHTS = 1e-4  # absolute, on every merged weight


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _ranks() -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
    return [int(line.split()[0]) for line in out if "-m selfplay.training.launch" in line
            and "accelerate" not in line]


def _one_then_two_ranks_agree(tiny_model: Path, tmp_path: Path, where, rel: float, weights: float
                              ) -> tuple[dict, dict]:
    """One process, then two ranks, on the same global batches: the same losses (within `rel`) and the same merged
    model (every weight within `weights`). The two ranks' figures and weights, for what the caller checks next."""
    one = SFT().train(tiny_model, EXAMPLES, tmp_path / "one" / "model", tmp_path / "one" / "trainer",
                      TrainConfig(**ONE), where, 0)
    two = AccelerateLaunch(SFT()).train(tiny_model, EXAMPLES, tmp_path / "two" / "model",
                                        tmp_path / "two" / "trainer", TrainConfig(**TWO), where, 0)
    assert one["steps"] == two["steps"] == 24 and two["num_processes"] == 2
    for key in ("first_loss", "final_loss", "train_loss"):
        assert two[key] == pytest.approx(one[key], rel=rel), key
    a, b = _weights(tmp_path / "one" / "model"), _weights(tmp_path / "two" / "model")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < weights
    return two, b


def test_two_gloo_ranks_train_what_one_process_trains_and_a_killed_rank_resumes_to_the_same_model(tiny_model,
                                                                                                  tmp_path):
    two, b = _one_then_two_ranks_agree(tiny_model, tmp_path, WHERE, TOLERANCE, WEIGHTS)
    assert not (tmp_path / "two" / "trainer").exists()  # rank 0 cleaned up after the merged save

    # Two ranks again; one is SIGKILLed after the first checkpoint: one line, then resume to the same model.
    out, work = tmp_path / "killed" / "model", tmp_path / "killed" / "trainer"
    killed: list[int] = []

    def kill_a_rank_after_a_checkpoint() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if any((c / "trainer_state.json").is_file() for c in work.glob("checkpoint-*")) and _ranks():
                os.kill(_ranks()[-1], signal.SIGKILL)
                killed.append(1)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_rank_after_a_checkpoint)
    killer.start()
    with pytest.raises(UserError) as e:
        AccelerateLaunch(SFT()).train(tiny_model, EXAMPLES, out, work, TrainConfig(**TWO), WHERE, 0)
    killer.join()
    assert killed, "no rank was killed"
    line = str(e.value)
    assert "\n" not in line and line.startswith("train.launcher: accelerate: the training ranks failed (exit code")
    assert "selfplay resume continues from the last one" in line
    assert not out.exists() and list(work.glob("checkpoint-*"))
    deadline = time.monotonic() + 30
    while _ranks() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _ranks(), "a rank outlived its failed launch"

    resumed = AccelerateLaunch(SFT()).train(tiny_model, EXAMPLES, out, work, TrainConfig(**TWO), WHERE, 0)
    assert resumed["resumed_from"] and resumed["steps"] == 24
    assert resumed["final_loss"] == pytest.approx(two["final_loss"], rel=TOLERANCE)
    c = _weights(out)
    assert max(float((b[k] - c[k]).abs().max()) for k in b) < WEIGHTS


GPUS = torch.cuda.device_count()


@pytest.mark.skipif(GPUS < 2, reason=f"needs 2 CUDA GPUs for 2 NCCL ranks (this machine has {GPUS}); the gloo "
                    "test above runs the same launcher on the CPU")
def test_two_nccl_ranks_on_two_gpus_train_what_one_gpu_trains(tiny_model, tmp_path):
    """The multi-GPU path of train.launcher: accelerate, as a user with one node of GPUs runs it: DDP over NCCL."""
    # cuBLAS and NCCL sum in their own orders: ten times the CPU's tolerances
    _one_then_two_ranks_agree(tiny_model, tmp_path, placement("cuda", "float32"), 10 * TOLERANCE, 10 * WEIGHTS)
