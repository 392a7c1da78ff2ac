"""A full disk (or any refused write) is one clear line naming the file, leaves no temporary files, loses
nothing already written, and the run finishes once there is room again."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys

import pytest

from selfplay.files import atomic_write_text, read_jsonl
from tests.conftest import ROOT, run_cli, tiny_overrides


def _limit_file_size(limit: int):
    def apply() -> None:
        # Writes past `limit` bytes then fail with EFBIG, as writes on a full disk fail with ENOSPC.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_refused_atomic_write_removes_its_temporary_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    code = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from selfplay.files import atomic_write_text\n"
        "from selfplay.errors import WriteError\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
        "try:\n"
        f"    atomic_write_text(Path({str(target)!r}), 'x' * 5000)\n"
        "except WriteError as e:\n"
        "    print(e)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.strip() == f"{target}: cannot write (File too large); free some space"
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]
    atomic_write_text(target, "new")  # with room again, the same write goes through
    assert target.read_text() == "new"


@pytest.mark.e2e
@pytest.mark.parametrize("limit, where", [
    # Our own atomic write: config.yaml (~3.6 KB with the test's paths) fits, iter-000's sampled answers (~5.4 KB
    # at eval.samples 4) do not.
    (4500, "iter-000/eval_sampled.jsonl: cannot write (File too large)"),
    (60000, "iter-001: cannot write (training: File too large)"),  # the trainer's checkpoint (safetensors)
])
def test_a_full_disk_mid_run_is_one_line_and_the_run_resumes(tiny_model, sums_jsonl, tmp_path, limit, where):
    args = tiny_overrides(tiny_model, sums_jsonl, tmp_path, **{"eval.samples": 4})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "selfplay", "run", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, preexec_fn=_limit_file_size(limit))
    run = tmp_path / "t"
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]  # after the progress bars
    assert "Traceback" not in proc.stderr, proc.stderr
    assert last.startswith(f"selfplay: error: {run}/{where}"), last
    assert last.endswith(f"then resume the run: selfplay resume {run}")
    assert not [p for p in run.rglob("*") if ".tmp-" in p.name]  # no temporary file left behind
    kept = {p.relative_to(run): p.read_bytes() for p in (run / "problems").iterdir()}
    assert kept  # the frozen split was written before the disk filled

    again = run_cli("resume", str(run))
    assert again.returncode == 0, again.stderr
    assert [m["iteration"] for m in read_jsonl(run / "metrics.jsonl")] == [0, 1]
    assert {p.relative_to(run): p.read_bytes() for p in (run / "problems").iterdir()} == kept


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 4 MiB filesystem (a tmpfs) that a test can fill: ENOSPC as a full disk gives it, not EFBIG."""
    where = tmp_path / "fs"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a real full disk needs a tmpfs this user cannot mount ({mounted.stderr.strip()}); "
                    "the RLIMIT_FSIZE tests above cover the rest")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(where, leave: int):
    """Fill the filesystem holding `where` until `leave` bytes are free; the file that did it."""
    st = os.statvfs(where)
    filler = where / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def test_torch_save_on_a_real_full_disk_is_read_as_a_refused_write(small_filesystem):
    import torch

    from selfplay.errors import write_failure

    _fill(small_filesystem, leave=8 * 1024)
    with pytest.raises(RuntimeError) as raised:  # not an OSError: the reason only survives in the text
        torch.save(torch.zeros(256 * 1024), small_filesystem / "optimizer.pt")
    assert write_failure(raised.value) == "file write failed"
    assert write_failure(RuntimeError("shape mismatch")) is None


@pytest.mark.e2e
def test_a_real_full_disk_in_training_is_one_line_and_resumes_once_there_is_room(
        tiny_model, sums_jsonl, small_filesystem):
    """torch's zip writer raises RuntimeError ("unexpected pos ...") on ENOSPC, not OSError: still one line."""
    import time

    args = tiny_overrides(tiny_model, sums_jsonl, small_filesystem, **{"review.every": 1})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "selfplay", "run", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = small_filesystem / "t"
    try:
        # The review gate holds the run after its filter stage: fill the disk there, so training meets it.
        deadline = time.monotonic() + 240
        while not (run / "iter-001" / "review.request.json").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr and proc.stderr.read()
            time.sleep(0.2)
        samples = (run / "iter-001" / "samples.jsonl").read_bytes()
        # Room for the decision file and the LoRA adapter (66 KB), not for the optimizer state that torch.save
        # writes next (131 KB): the write that fails is torch's own.
        filler = _fill(small_filesystem, leave=112 * 1024)
        assert run_cli("approve", str(run)).returncode == 0
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 2, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last == (f"selfplay: error: {run}/iter-001: cannot write (training: No space left on device); "
                    f"free some space, then resume the run: selfplay resume {run}"), last
    # Nothing half written is left for resume to trip on: no torn checkpoint, no half-saved merged model.
    trainer = run / "iter-001" / "trainer"
    assert not [c for c in trainer.glob("checkpoint-*") if not (c / "trainer_state.json").is_file()]
    assert not (run / "iter-001" / "model.tmp").exists() and not (run / "iter-001" / "model").exists()

    filler.unlink()
    again = run_cli("resume", str(run))
    assert again.returncode == 0, again.stderr
    assert (run / "iter-001" / "samples.jsonl").read_bytes() == samples  # nothing sampled again or lost
    assert (run / "iter-001" / "model" / "config.json").is_file()
    assert [m["iteration"] for m in read_jsonl(run / "metrics.jsonl")] == [0, 1]
