"""The stage runner and the stage functions on real files: a stage killed after its data was complete but
before its summary was written does not redo its work on resume."""

from __future__ import annotations

import json

import pytest

from selfplay.files import atomic_write_jsonl
from selfplay.generation import SamplingParams
from selfplay.loop import stages
from selfplay.loop.rundir import RunDir
from selfplay.loop.runner import run_stage
from selfplay.records import Problem, Sample, Verdict, to_dict

PROBLEMS = [Problem(f"p{k}", f"What is {k} + 1?", str(k + 1)) for k in range(3)]
SAMPLES = [Sample(f"p{k}/s{j}", f"p{k}", f"Answer: {k + j}", 3, "stop", "m") for k in range(3) for j in range(2)]


class Refuses:
    """A verifier or generator that must not be used: the work it would do is already on disk."""

    name = "refuses"

    def verify(self, problem, sample):
        raise AssertionError("judged a sample that was already judged")


def test_verify_killed_after_its_data_but_before_its_summary_judges_nothing_again(tmp_path):
    atomic_write_jsonl(tmp_path / "samples.jsonl", (to_dict(s) for s in SAMPLES))
    verdicts = [Verdict(s.id, s.problem_id, 1.0, True, None, "math") for s in SAMPLES]
    atomic_write_jsonl(tmp_path / "verdicts.jsonl", (to_dict(v) for v in verdicts))
    summary = stages.verify(tmp_path, PROBLEMS, Refuses(), batch_size=4)
    assert summary["samples"] == 6 and summary["passed"] == 6


def test_generate_killed_after_its_data_but_before_its_summary_samples_nothing_again(tmp_path):
    atomic_write_jsonl(tmp_path / "samples.jsonl", (to_dict(s) for s in SAMPLES))

    def no_model():
        raise AssertionError("loaded a model to sample problems already sampled")

    summary = stages.generate(tmp_path, PROBLEMS, no_model, tmp_path / "m", SamplingParams(n=2), batch_size=4)
    assert summary["samples"] == 6 and summary["resumed_problems"] == 3 and summary["new_tokens"] == 0


def test_the_runner_skips_a_done_stage_and_refuses_a_stage_without_a_summary(tmp_path):
    rundir = RunDir(tmp_path)
    calls = []
    assert run_stage(rundir, 1, "mine", lambda: calls.append(1) or {"n": 1})["n"] == 1
    assert run_stage(rundir, 1, "mine", lambda: calls.append(1) or {"n": 2})["n"] == 1  # done: not run again
    assert calls == [1] and json.loads((tmp_path / "iter-001" / "mine.json").read_text())["seconds"] >= 0
    with pytest.raises(TypeError, match="stage 'other' of iteration 1 returned NoneType"):
        run_stage(rundir, 1, "other", lambda: None)
    assert not (tmp_path / "iter-001" / "other.json").exists()


def test_metrics_rows_take_a_selection_step_that_counts_other_things(tmp_path):
    rundir = RunDir(tmp_path)
    for i in (0, 1):
        rundir.iter_dir(i).mkdir()
        (rundir.iter_dir(i) / "eval.json").write_text(json.dumps({"model": "m", "metrics": {"greedy_accuracy": 0.5}}))
    (rundir.iter_dir(1) / "filter.json").write_text(json.dumps({"kept": 3, "my_count": 7, "seconds": 0.1}))
    rows = rundir.collect_metrics()
    assert rows[1]["kept"] == 3 and rows[1]["problems_solved"] is None and "train_pass_rate" not in rows[1]


def test_train_killed_after_model_was_in_place_but_before_its_summary_does_not_train_again(tmp_path):
    from selfplay.records import Example

    class MustNotTrain:
        record_type = Example

        def train(self, *args):
            raise AssertionError("trained again although model/ was complete")

    examples = [Example("it1/p0/s0", "p0", "p0/s0", "What is 0 + 1?", "Answer: 1", 1)]
    atomic_write_jsonl(tmp_path / "train.jsonl", (to_dict(e) for e in examples))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "trainer" / "checkpoint-1").mkdir(parents=True)  # left behind by the kill
    summary = stages.train(tmp_path, MustNotTrain(), tmp_path / "base", tmp_path / "base", None, None, 0, lambda: None)
    assert summary["model"] == "model" and summary["recovered"] and not (tmp_path / "trainer").exists()
