"""Every benchmark script runs end to end with --smoke on the tiny model, and refuses what it cannot run on one line.

The scripts are found by glob: a new script under benchmarks/ (a file with `if __name__ == "__main__"`) that has
no working `--smoke` mode fails here. Helper modules (benchmarks/smoke.py, benchmarks/planted.py) are skipped.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, in_process

pytestmark = pytest.mark.e2e

BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if re.search(r"^if __name__ == .__main__.:", p.read_text(), re.M))
DOC = ROOT / "docs" / "BENCHMARKS.md"

# What a script's smoke run must print, beyond the Markdown table every benchmark prints (docs/BENCHMARKS.md's).
EXPECT = {
    "generation.py": [r"^generation\.py: skipped openai, which needs a server",
                      r"^\| continuous \| 8 \| 8 \| 2 \| 8 \|"],
    "guards.py": [r"^\*\*hack\*\*", r"^\*\*degrade\*\*", r"^Run status: finished"],
    "instructions.py": [r"^\| 1 \| 4 \| "],
    "preference.py": [r"^\*\*Self-Rewarding", r"^\*\*RFT with the gold checkers", r"^\| generate \| "],
    "recipes.py": [r"^\| star \| `bench-star` \| basic_arithmetic \| 1 \|"],
    "rft.py": [r"^\| 1 \| ", r"^Wall time of this process"],
    "scale.py": [r"^\| Ray, 2 workers x 1 CPU \| ", r"^samples\.jsonl byte for byte the same in all 2 runs: yes$"],
    "sandbox.py": [r"^HumanEval: 8 of 8 canonical solutions pass .*a stub returning None passes 0$",
                   r"^\| correct solution \| yes \| passed \|",
                   r"^\| infinite loop \| no \| (timeout \| time|exited \| cpu) \|",  # the wall clock or the CPU limit
                   r"^\| os\._exit\(0\) before the tests \| no \|", r"^\| print a fake 'all passed' \| no \|"],
}
# And what it must print on its last line.
LAST = {"generation.py": r"^ratio at batch 8, k 2: continuous / transformers = \d+\.\d\d$"}
NEEDS_BWRAP = {"sandbox.py"}


def takes_model(script: Path) -> bool:
    """Whether the script has --model: its own, or benchmarks/smoke.py's add_flags unless called with model=False."""
    text = script.read_text()
    return '"--model"' in text or bool(re.search(r"add_flags\((?![^)]*model=False)", text))


# Scripts run in a new interpreter: scale.py starts Ray in its own process, which must not outlive it here.
FRESH = {"scale.py"}


def bench(script: Path, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """`python benchmarks/SCRIPT ARGS`: its exit code, stdout and stderr. In this process (runpy, as `__main__`)
    unless the script is in FRESH: a new interpreter costs seconds of importing torch per script. The torch threads
    and environment a smoke run sets (benchmarks/smoke.py pins one thread) are put back afterwards."""
    if script.name in FRESH:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        return subprocess.run([sys.executable, str(script), *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)
    import runpy

    import torch

    def as_main() -> int:
        runpy.run_path(str(script), run_name="__main__")
        return 0

    argv, environ, threads = sys.argv, dict(os.environ), torch.get_num_threads()
    sys.argv = [str(script), *args]
    try:
        return in_process(list(sys.argv), as_main)
    finally:
        sys.argv = argv
        os.environ.clear()
        os.environ.update(environ)
        torch.set_num_threads(threads)


def test_discovery_finds_the_scripts_and_skips_helpers():
    names = {p.name for p in SCRIPTS}
    assert set(EXPECT) <= names
    assert not names & {"__init__.py", "smoke.py", "planted.py"}


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_smoke_runs_end_to_end(script: Path, tiny_model: Path):
    if script.name in NEEDS_BWRAP and shutil.which("bwrap") is None:
        pytest.skip(f"{script.name} runs programs in the sandbox, which needs bubblewrap (bwrap): not installed")
    before = hashlib.sha256(DOC.read_bytes()).hexdigest() if DOC.exists() else None
    args = ["--smoke", *(["--model", str(tiny_model)] if takes_model(script) else [])]
    proc = bench(script, *args)
    tail = f"\n--- stdout:\n{proc.stdout[-3000:]}\n--- stderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"{script.name} {' '.join(args)} exited {proc.returncode}{tail}"
    assert re.search(r"^\|(---\|)+$", proc.stdout, re.M), f"{script.name} printed no Markdown table{tail}"
    for pattern in EXPECT.get(script.name, []):
        assert re.search(pattern, proc.stdout, re.M), f"{script.name}: no line matches {pattern!r}{tail}"
    if script.name in LAST:
        assert re.match(LAST[script.name], proc.stdout.strip().splitlines()[-1]), f"last line{tail}"
    after = hashlib.sha256(DOC.read_bytes()).hexdigest() if DOC.exists() else None
    assert after == before, f"{script.name} --smoke wrote into docs/BENCHMARKS.md"


def one_line_refusal(proc: subprocess.CompletedProcess, script: str, *words: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"{script}: "), proc.stderr[-3000:]
    assert all(w in lines[0] for w in words), lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("backend", ["openai", "vllm"])
def test_generation_refuses_a_backend_it_cannot_start(backend: str):
    proc = bench(BENCHMARKS / "generation.py", "--smoke", "--backends", "continuous", backend, timeout=60)
    one_line_refusal(proc, "generation.py", f"backend '{backend}'", "continuous, transformers")
    assert proc.stdout == ""


def test_recipes_refuses_a_config_that_does_not_exist():
    proc = bench(BENCHMARKS / "recipes.py", "--smoke", "--run", "stra", timeout=60)
    one_line_refusal(proc, "recipes.py", "configs/stra.yaml", "star")


def test_a_missing_model_is_one_line(tmp_path: Path):
    proc = bench(BENCHMARKS / "instructions.py", "--smoke", "--model", str(tmp_path / "nothing"), timeout=120)
    one_line_refusal(proc, "instructions.py", "nothing", "not a folder")


def test_overoptimisation_stops_before_rl_when_the_reward_model_does_not_beat_the_bar(tiny_model: Path, tmp_path: Path):
    """RL against a reward model that ranks held-out pairs at chance takes hours and shows no curve: the script
    stops after training it, with one line naming its figures, and runs no RL."""
    proc = bench(BENCHMARKS / "overoptimisation.py", "--smoke", "--model", str(tiny_model), "--output-dir",
                 str(tmp_path), "--min-rm-accuracy", "1.01")
    last = proc.stderr.strip().splitlines()[-1]  # after the progress bars and the trainer's log
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert last.startswith("overoptimisation.py: the reward model ranks "), last
    assert "held-out pairs right, under --min-rm-accuracy 101%" in last, last
    assert str(tmp_path / "bench-overopt-rm" / "rm_eval.json") in last, last
    assert (tmp_path / "bench-overopt-rm" / "rm_eval.json").is_file()
    assert not (tmp_path / "bench-overopt" / "iter-001").exists()  # no RL ran
