"""A run killed with SIGKILL in the middle of a stage resumes without losing or doubling anything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfplay.files import read_jsonl
from tests.conftest import ROOT, run_cli, tiny_overrides

pytestmark = pytest.mark.e2e


def _start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "selfplay", *args], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _wait_until(proc: subprocess.Popen, ready, timeout: float = 240, poll: float = 0.02, what: str = "the kill point"
                ) -> None:
    """Wait while `proc` runs until `ready()`; fail if it ends first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for the run to reach {what}"
        time.sleep(poll)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    _wait_until(proc, ready, timeout)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _line_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


LONG_GENERATION = {
    "task.train_size": 24,
    "generate.batch_size": 2,  # one problem per batch, so the kill lands between or inside batches
    "generate.max_new_tokens": 24,
}


def test_sigkill_during_generation_then_a_torn_line_resumes_without_loss_or_double(tiny_model, sums_jsonl, tmp_path):
    args = tiny_overrides(tiny_model, sums_jsonl, tmp_path, **LONG_GENERATION)
    run = tmp_path / "t"
    partial = run / "iter-001" / "samples.partial.jsonl"
    _kill_when(_start("run", *args), lambda: _line_count(partial) >= 6)
    assert not (run / "iter-001" / "generate.json").exists()
    before_kill = partial.read_text().splitlines()
    # Power loss mid-write: half a JSON line at the end of the file.
    with open(partial, "a") as f:
        f.write('{"id": "torn/s0", "problem_id": "tor')

    proc = run_cli("resume", str(run))
    assert proc.returncode == 0, proc.stderr
    assert "cut off a torn last line" in proc.stdout
    done = len(before_kill) // 2
    assert f"resuming; {done} of 24 problems already sampled" in proc.stdout

    final = (run / "iter-001" / "samples.jsonl").read_text().splitlines()
    ids = [json.loads(line)["id"] for line in final]
    assert len(ids) == 48 and len(set(ids)) == 48  # every problem's 2 samples, none twice
    assert set(before_kill) <= set(final)  # what was on disk before the kill was kept, not redone
    assert not partial.exists()
    summary = json.loads((run / "iter-001" / "generate.json").read_text())
    assert summary["resumed_problems"] == done
    assert [m["iteration"] for m in read_jsonl(run / "metrics.jsonl")] == [0, 1]


def test_sigkill_during_training_resumes_from_the_last_checkpoint(tiny_model, sums_jsonl, tmp_path):
    args = tiny_overrides(
        tiny_model, sums_jsonl, tmp_path,
        **{"task.train_size": 24, "train.batch_size": 1, "train.epochs": 3, "train.checkpoint_every": 5},
    )
    run = tmp_path / "t"
    trainer_dir = run / "iter-001" / "trainer"

    def has_checkpoint() -> bool:
        return any(trainer_dir.glob("checkpoint-*/trainer_state.json"))

    _kill_when(_start("run", *args), has_checkpoint)
    assert not (run / "iter-001" / "train.json").exists()
    samples_before = (run / "iter-001" / "samples.jsonl").stat().st_mtime_ns

    proc = run_cli("resume", str(run))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run / "iter-001" / "train.json").read_text())
    assert summary["resumed_from"] and "checkpoint-" in summary["resumed_from"]
    assert summary["steps"] == 72  # 24 examples x 3 epochs at batch 1: the schedule finished, not restarted
    assert (run / "iter-001" / "model" / "model.safetensors").is_file()
    assert (run / "iter-001" / "samples.jsonl").stat().st_mtime_ns == samples_before  # not sampled again
    assert [m["iteration"] for m in read_jsonl(run / "metrics.jsonl")] == [0, 1]


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tiny_model, sums_jsonl, tmp_path):
    args = tiny_overrides(tiny_model, sums_jsonl, tmp_path, **LONG_GENERATION)
    run = tmp_path / "t"
    partial = run / "iter-001" / "samples.partial.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    # Ctrl-C's default action, even when this suite runs in the background of a non-interactive shell, which
    # starts it (and so every child) with SIGINT ignored.
    proc = subprocess.Popen([sys.executable, "-m", "selfplay", "run", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while _line_count(partial) < 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert f"continue with: selfplay resume {run}" in out
    assert err.rstrip().splitlines()[-1] == "selfplay: interrupted" and "Traceback" not in err
    assert json.loads((run / "state.json").read_text())["status"] == "interrupted"
    assert _line_count(partial) >= 2  # what was sampled before Ctrl-C is still there for the resume
