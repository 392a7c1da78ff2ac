"""A user's own recipe, backend, task and verifiers, named as 'module:attr', run through the same driver:
evaluated by the driver every iteration, resumed after SIGKILL, and traced in the report."""

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

pytestmark = pytest.mark.e2e


def _plugin_args(tiny_model, sums_jsonl, tmp_path, **extra):
    log = tmp_path / "backend.log"
    judged = tmp_path / "verify.log"
    return tiny_overrides(tiny_model, sums_jsonl, tmp_path, **{
        "recipe": "tests.plugins:best_vs_worst_recipe",
        "generate.backend": "tests.plugins:recording_backend",
        "generate.options": f"{{log: '{log}'}}",
        "generate.batch_size": 6,
        "eval.batch_size": 4,
        "verify.verifier": "tests.plugins:BatchCounter",
        "verify.options": f"{{log: '{judged}'}}",
        "verify.batch_size": 5,
        **extra,
    }), log, judged


def _kill_when_lines(args: list[str], partial, lines: int) -> None:
    """Start `selfplay run`, SIGKILL it once `partial` holds `lines` whole lines, and wait for it to die."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "selfplay", "run", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (partial.exists() and partial.read_bytes().count(b"\n") >= lines):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "timed out waiting for the kill point"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_user_recipe_backend_and_batch_verifier_run_through_the_driver(tiny_model, sums_jsonl, tmp_path):
    args, log, judged = _plugin_args(tiny_model, sums_jsonl, tmp_path, iterations=2)
    proc = run_cli("run", *args)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "t"
    for i in (1, 2):
        it = run / f"iter-{i:03d}"
        pairs = read_jsonl(it / "pairs.jsonl")
        assert not (it / "train.jsonl").exists()
        # BatchCounter scores s0 above s1, so every problem gives one pair, chosen s0 and rejected s1.
        assert len(pairs) == 6 and all(p["chosen_sample_id"].endswith("/s0") for p in pairs)
        assert all(p["rejected_sample_id"].endswith("/s1") and p["chosen_score"] > p["rejected_score"] for p in pairs)
        assert json.loads((it / "notes.json").read_text())["pairs_seen"] == 6  # the recipe's own stage
        assert json.loads((it / "train.json").read_text())["examples"] == 6
        assert (it / "model" / "model.safetensors").is_file()
        # The driver evaluated the model the recipe returned, with every guard.
        evaluation = json.loads((it / "eval.json").read_text())
        assert evaluation["model"] == str(it / "model")
        assert set(evaluation["guards"]) >= {"degradation", "contamination"}
    assert [m["iteration"] for m in read_jsonl(run / "metrics.jsonl")] == [0, 1, 2]
    # The verify stage called verify_many in batches of verify.batch_size: 12 samples -> 5, 5, 2 per iteration
    # (the held-out audit of each evaluation judges its 12 samples in one call).
    assert judged.read_text().split() == ["12", "5", "5", "2", "12", "5", "5", "2", "12"]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    sizes = {(c["n"], c["batch_size"]) for c in calls if "batch_size" in c}
    assert (2, 6) in sizes  # generation: generate.batch_size
    assert (1, 4) in sizes and (2, 4) in sizes  # evaluation, greedy and pass@k: eval.batch_size takes effect
    assert sum("closed" in c for c in calls) >= 3  # the pool closes a backend before it loads the next model
    # The report traces pairs: both sides of a pair, each back to its sample.
    page = (run / "report.html").read_text()
    assert "pairs.jsonl" in page and "/s1" in page


def test_user_recipe_backend_and_task_resume_after_sigkill_without_redoing_or_doubling(tiny_model, sums_jsonl,
                                                                                         tmp_path):
    args, log, judged = _plugin_args(tiny_model, sums_jsonl, tmp_path, **{
        "task.source": "tests.plugins:CountingTask", "task.params": "{count: 40}", "task.path": "null",
        "task.train_size": 12, "generate.batch_size": 2, "generate.max_new_tokens": 16,
        "generate.options": f"{{log: '{tmp_path / 'backend.log'}', delay: 0.2}}",
    })
    partial = tmp_path / "t" / "iter-001" / "samples.partial.jsonl"
    _kill_when_lines(args, partial, 8)
    kept = partial.read_text().splitlines()
    done = len(kept) // 2  # one problem (2 samples) per batch, each batch appended whole
    calls_before = len(log.read_text().splitlines())
    resumed = run_cli("resume", str(tmp_path / "t"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming; {done} of 12 problems already sampled" in resumed.stdout
    it = tmp_path / "t" / "iter-001"
    samples = read_jsonl(it / "samples.jsonl")
    assert len(samples) == 24 and len({s["id"] for s in samples}) == 24
    assert set(kept[: 2 * done]) <= set((it / "samples.jsonl").read_text().splitlines())  # kept, not redone
    # The resume's first backend call sampled only the problems not on disk (iteration 0's evaluation was done).
    first = json.loads(log.read_text().splitlines()[calls_before])
    assert first == {"batch_size": 2, "problems": 12 - done, "n": 2}
    assert len(read_jsonl(it / "pairs.jsonl")) == 12
    assert json.loads((it / "eval.json").read_text())["model"] == str(it / "model")


def test_sigkill_in_a_slow_verify_stage_resumes_with_the_samples_not_yet_judged(tiny_model, sums_jsonl, tmp_path):
    args, log, judged = _plugin_args(tiny_model, sums_jsonl, tmp_path, **{
        "verify.verifier": "tests.plugins:SlowBatchCounter", "verify.batch_size": 2,
    })
    it = tmp_path / "t" / "iter-001"
    partial = it / "verdicts.partial.jsonl"
    _kill_when_lines(args, partial, 4)
    done = partial.read_bytes().count(b"\n")
    batches_before = len(judged.read_text().split())
    resumed = run_cli("resume", str(tmp_path / "t"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming; {done} of 12 samples already judged" in resumed.stdout
    verdicts = read_jsonl(it / "verdicts.jsonl")
    assert [v["sample_id"] for v in verdicts] == [s["id"] for s in read_jsonl(it / "samples.jsonl")]
    sizes = [int(x) for x in judged.read_text().split()]
    # Only the samples not yet judged were judged, then the held-out audit judged its own 12 in one call.
    assert sum(sizes[batches_before:]) == (12 - done) + 12 and sizes[-1] == 12
    assert json.loads((it / "verify.json").read_text())["resumed_samples"] == done


def test_user_task_without_answer_line_and_a_judge_that_asks_for_the_current_model(tiny_model, tmp_path):
    args = tiny_overrides(tiny_model, tmp_path / "unused.jsonl", tmp_path, iterations=2, **{
        "task.source": "tests.plugins:CountingTask", "task.params": "{count: 20}", "task.path": "null",
        "verify.verifier": "tests.plugins:CurrentModelJudge", "guards.gold_verifier": "math",
        "guards.fresh_size": 5,
    })
    proc = run_cli("run", *args)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "t"
    train = read_jsonl(run / "problems" / "train.jsonl")
    assert len(train) == 6 and all(p["prompt"].startswith("Count from") and "Answer:" not in p["prompt"] for p in train)
    # The judge got the generator of the model each iteration samples from.
    assert {v["critique"] for v in read_jsonl(run / "iter-001" / "verdicts.jsonl")} == {str(tiny_model)}
    assert {v["critique"] for v in read_jsonl(run / "iter-002" / "verdicts.jsonl")} == {str(run / "iter-001" / "model")}
    fresh = json.loads((run / "iter-001" / "eval.json").read_text())["sets"]["fresh"]
    assert "cannot draw new problems" in fresh["skipped"]  # the task has no `fresh`: said, not guessed


def test_a_user_recipe_that_does_not_exist_is_one_clear_line(tiny_model, sums_jsonl, tmp_path):
    proc = run_cli("run", *tiny_overrides(tiny_model, sums_jsonl, tmp_path, recipe="tests.plugins:nope"))
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "selfplay: error: recipe: module 'tests.plugins' has no attribute 'nope'")
    assert not (tmp_path / "t").exists()
    proc = run_cli("run", *tiny_overrides(tiny_model, sums_jsonl, tmp_path, recipe="spinn"))
    assert proc.returncode == 2 and "recipe: unknown 'spinn'" in proc.stderr and "did you mean 'spin'" in proc.stderr


def test_a_recipe_without_a_train_stage_feeds_the_model_it_returns_to_the_next_iteration(tiny_model, sums_jsonl,
                                                                                          tmp_path):
    args = tiny_overrides(tiny_model, sums_jsonl, tmp_path, iterations=2, recipe="tests.plugins:copy_recipe")
    proc = run_cli("run", *args)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "t"
    assert json.loads((run / "iter-001" / "copy.json").read_text())["source"] == str(tiny_model)
    # Iteration 2 samples from the model iteration 1's recipe returned, which the driver evaluated.
    assert json.loads((run / "iter-002" / "copy.json").read_text())["source"] == str(run / "iter-001" / "copied")
    assert json.loads((run / "iter-002" / "eval.json").read_text())["model_dir"] == "iter-002/copied"
    exported = run_cli("export", str(run), str(tmp_path / "out"), "--iteration", "2")
    assert exported.returncode == 0, exported.stderr
    assert json.loads((tmp_path / "out" / "selfplay-export.json").read_text())["source"] == str(
        (run / "iter-002" / "copied").resolve())


def test_an_iteration_that_trains_nothing_keeps_its_model_with_a_relative_run_folder(tiny_model, sums_jsonl,
                                                                                   tmp_path):
    # output_dir is relative (the default "runs"); iteration 2 has nothing to train on, so its model is
    # iteration 1's, named relative to the working directory.
    args = tiny_overrides(tiny_model, sums_jsonl, "runs", iterations=3, **{
        "verify.verifier": "tests.plugins:PassFirstFromBase"})
    proc = run_cli("run", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "runs" / "t"
    assert json.loads((run / "iter-002" / "train.json").read_text())["skipped"]
    assert json.loads((run / "iter-002" / "eval.json").read_text())["model_dir"] == "iter-001/model"
    assert json.loads((run / "iter-003" / "generate.json").read_text())["model"] == "runs/t/iter-001/model"


def test_review_of_preference_pairs_shows_both_sides_and_drops_a_rejected_pair(tiny_model, sums_jsonl, tmp_path):
    args, log, judged = _plugin_args(tiny_model, sums_jsonl, tmp_path, **{
        "review.every": 1, "review.poll_seconds": 0.2, "review.sample_size": 2,
    })
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "selfplay", "run", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    it = tmp_path / "t" / "iter-001"
    try:
        deadline = time.monotonic() + 240
        while not (it / "review.request.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        request = json.loads((it / "review.request.json").read_text())
        assert request["examples_total"] == 6 and len(request["shown"]) == 2
        shown = request["shown"][0]
        pair = next(p for p in read_jsonl(it / "pairs.jsonl") if p["id"] == shown["id"])
        assert (shown["completion"], shown["rejected"]) == (pair["chosen"], pair["rejected"])
        assert shown["verdict"]["sample_id"] == pair["chosen_sample_id"]
        assert shown["rejected_verdict"]["sample_id"] == pair["rejected_sample_id"]
        text = run_cli("review", str(tmp_path / "t")).stdout
        assert "rejected:" in text and shown["id"] in text
        ok = run_cli("approve", str(tmp_path / "t"), "--reject", shown["id"])
        assert ok.returncode == 0, ok.stderr
        proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    train = json.loads((it / "train.json").read_text())
    assert train["examples"] == 5 and train["removed_by_review"] == 1
