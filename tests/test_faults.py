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
    (3000, "iter-000/eval_sampled.jsonl: cannot write (File too large)"),  # our own atomic write
    (60000, "iter-001: cannot write (training: File too large)"),  # the trainer's checkpoint (safetensors)
])
def test_a_full_disk_mid_run_is_one_line_and_the_run_resumes(tiny_model, sums_jsonl, tmp_path, limit, where):
    args = tiny_overrides(tiny_model, sums_jsonl, tmp_path)
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
