"""Human review gates: the run pauses after filtering, a person reviews, approves (dropping some examples)
or rejects from another shell, and a run killed while waiting comes back to the same gate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from selfplay.files import read_jsonl
from tests.conftest import ROOT, run_cli, tiny_overrides
from tests.test_resume import _wait_until

pytestmark = pytest.mark.e2e


def _start(args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "selfplay", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=180):
    _wait_until(proc, path.exists, timeout, poll=0.2, what=str(path))


def _args(tiny_model, sums_jsonl, tmp_path):
    return tiny_overrides(tiny_model, sums_jsonl, tmp_path, **{
        "review.every": 1, "review.poll_seconds": 0.2, "review.sample_size": 3,
    })


def test_gate_pauses_then_approve_drops_rejected_examples(tiny_model, sums_jsonl, tmp_path):
    proc = _start(["run", *_args(tiny_model, sums_jsonl, tmp_path)])
    run = tmp_path / "t"
    it = run / "iter-001"
    try:
        _wait_for(it / "review.request.json", proc)
        time.sleep(1.0)
        assert proc.poll() is None and not (it / "train.json").exists()  # waiting, not training
        assert json.loads((run / "state.json").read_text())["status"] == "waiting for review"
        request = json.loads((it / "review.request.json").read_text())
        assert len(request["shown"]) == 3 and request["examples_total"] == 6
        first = request["shown"][0]["id"]
        assert first in (it / "review.html").read_text()

        shown = run_cli("review", str(run))
        assert shown.returncode == 0 and first in shown.stdout and "waiting for a decision" in shown.stdout
        bad = run_cli("approve", str(run), "--reject", "no-such-id")
        assert bad.returncode == 2 and "no training example with id 'no-such-id'" in bad.stderr
        ok = run_cli("approve", str(run), "--reject", first)
        assert ok.returncode == 0 and "1 example(s) removed" in ok.stdout
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "waiting for review" in out
    train = json.loads((it / "train.json").read_text())
    assert train["examples"] == 5 and train["removed_by_review"] == 1
    assert json.loads((it / "review.json").read_text())["rejected_ids"] == [first]
    assert len(read_jsonl(it / "train.jsonl")) == 6  # the filter's output is kept whole; lineage intact

    again = run_cli("approve", str(run), "--reject", first)
    assert again.returncode == 0 and "already approved" in again.stdout  # harmless
    flip = run_cli("reject", str(run))
    assert flip.returncode == 2 and "cannot be changed" in flip.stderr


def test_run_killed_while_waiting_resumes_to_the_decision(tiny_model, sums_jsonl, tmp_path):
    args = _args(tiny_model, sums_jsonl, tmp_path)
    proc = _start(["run", *args])
    run = tmp_path / "t"
    _wait_for(run / "iter-001" / "review.request.json", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # The decision can be given while no process runs; resume picks it up without asking again.
    assert run_cli("approve", str(run)).returncode == 0
    resumed = run_cli("resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert "waiting for review" not in resumed.stdout
    assert json.loads((run / "iter-001" / "train.json").read_text())["examples"] == 6
    assert json.loads((run / "state.json").read_text())["status"] == "finished"


def test_reject_stops_the_run_before_training(tiny_model, sums_jsonl, tmp_path):
    proc = _start(["run", *_args(tiny_model, sums_jsonl, tmp_path)])
    run = tmp_path / "t"
    _wait_for(run / "iter-001" / "review.request.json", proc)
    assert run_cli("reject", str(run), "--reason", "answers copied from the prompt").returncode == 0
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "a reviewer rejected the training data" in err
    assert not (run / "iter-001" / "train.json").exists() and not (run / "iter-001" / "model").exists()
    assert json.loads((run / "state.json").read_text())["status"] == "rejected"
    assert json.loads((run / "iter-001" / "review.json").read_text())["reason"] == "answers copied from the prompt"
    again = run_cli("resume", str(run))
    assert again.returncode == 2 and "rejected" in again.stderr
    assert run_cli("review", str(run)).returncode == 0  # the record stays readable
