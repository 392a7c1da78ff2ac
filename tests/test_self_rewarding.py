"""The Self-Rewarding recipe end to end on the tiny model: candidates, the model judging them, pairs, DPO,
the judge-vs-gold figures, and resume after SIGKILL in judging and in DPO training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from selfplay.files import read_jsonl
from tests.conftest import run_cli
from tests.test_resume import _kill_when, _line_count, _start

pytestmark = pytest.mark.e2e


def _overrides(model: Path, out: Path, name: str = "sr", **extra: object) -> list[str]:
    base = {
        "name": name,
        "output_dir": str(out),
        "recipe": "self_rewarding",
        "iterations": 1,
        "model.path": str(model),
        "task.source": "instructions",
        "task.train_size": 6,
        "task.eval_size": 4,
        "generate.samples_per_problem": 3,
        "generate.max_new_tokens": 8,
        "generate.batch_size": 8,
        "verify.verifier": "judge",
        "verify.batch_size": 4,
        "judge.batch_size": 4,
        "filter.drop_truncated": False,  # a random model rarely ends a completion before the cap
        "eval.samples": 0,
        "eval.max_new_tokens": 8,
        "train.batch_size": 2,
        "train.epochs": 1,
        "train.checkpoint_every": 1,
        "train.init_from": "previous",
        "guards.control": "[{name: gk, path: 'builtin:general_knowledge', size: 4}]",
        "guards.embeddings": False,
        "guards.fresh_size": 0,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_a_self_rewarding_run_judges_pairs_trains_with_dpo_and_audits_the_judge(tiny_model, tmp_path):
    proc = run_cli("run", *_overrides(tiny_model, tmp_path, iterations=2), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "sr"
    it1 = run / "iter-001"
    samples = {r["id"]: r for r in read_jsonl(it1 / "samples.jsonl")}
    verdicts = {r["sample_id"]: r for r in read_jsonl(it1 / "verdicts.jsonl")}
    assert len(samples) == 18 and set(verdicts) == set(samples)
    assert all(v["verifier"] == "judge" for v in verdicts.values())
    notes = [json.loads(v["critique"]) for v in verdicts.values()]
    assert all(n["mode"] == "constrained" and n["fence"].startswith("response-") for n in notes)

    pairs = read_jsonl(it1 / "pairs.jsonl")
    assert pairs, "the tiny model's judge scores differ, so pairs are made"
    for p in pairs:  # lineage: each side is a sample, and its judgement made the pair
        assert p["chosen_score"] == verdicts[p["chosen_sample_id"]]["score"] > p["rejected_score"]
        assert p["rejected_score"] == verdicts[p["rejected_sample_id"]]["score"]
        assert samples[p["chosen_sample_id"]]["completion"] == p["chosen"]
    selected = json.loads((it1 / "filter.json").read_text())
    assert selected["kept"] == len(pairs) and selected["gold"] == "ifeval"
    assert {"pair_accuracy_gold", "judge_gold_correlation", "unparsed", "judge_mean_score"} <= set(selected)

    trained = json.loads((it1 / "train.json").read_text())
    assert trained["pairs"] == len(pairs) and trained["first_loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert (it1 / "model" / "model.safetensors").is_file()
    # Iteration 2 samples from iteration 1's model, and 'current' judges with it too.
    assert json.loads((run / "iter-002" / "generate.json").read_text())["model"].endswith("iter-001/model")

    ev = json.loads((it1 / "eval.json").read_text())
    audit = ev["guards"]["reward_hacking"]
    assert audit["proxy"] == "judge" and audit["gold"] == "ifeval" and audit["heldout"]["samples"] == 4
    win = ev["guards"]["win_rate"]
    assert win["compared"] == 4 and 0 <= win["win_rate"] <= 1 and win["judge"] == "base"
    assert "instruction_strict" in ev["metrics"]
    assert "<h2>Judge</h2>" in (run / "report.html").read_text()


def test_sigkill_while_judging_resumes_with_the_judgements_already_on_disk(tiny_model, tmp_path):
    args = _overrides(tiny_model, tmp_path, **{"task.train_size": 12, "verify.batch_size": 1, "judge.batch_size": 1})
    run = tmp_path / "sr"
    partial = run / "iter-001" / "verdicts.partial.jsonl"
    _kill_when(_start("run", *args), lambda: _line_count(partial) >= 4)
    before = {json.loads(line)["sample_id"]: line for line in partial.read_text().splitlines() if line.endswith("}")}
    assert not (run / "iter-001" / "verify.json").exists()

    proc = run_cli("resume", str(run), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming; {len(before)} of 36 samples already judged" in proc.stdout
    final = {r["sample_id"]: r for r in read_jsonl(run / "iter-001" / "verdicts.jsonl")}
    assert len(final) == 36
    for sid, line in before.items():  # judged once: the same fence, the same score
        assert final[sid] == json.loads(line)


def test_sigkill_during_dpo_training_resumes_from_the_last_checkpoint(tiny_model, tmp_path):
    args = _overrides(tiny_model, tmp_path, **{"task.train_size": 16, "train.batch_size": 1, "train.epochs": 3,
                                              "train.checkpoint_every": 4})
    run = tmp_path / "sr"
    trainer_dir = run / "iter-001" / "trainer"
    _kill_when(_start("run", *args), lambda: any(trainer_dir.glob("checkpoint-*/trainer_state.json")))
    assert not (run / "iter-001" / "train.json").exists()
    pairs = len(read_jsonl(run / "iter-001" / "pairs.jsonl"))

    proc = run_cli("resume", str(run), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "iter-001" / "train.json").read_text())
    assert summary["resumed_from"] and "checkpoint-" in summary["resumed_from"]
    assert summary["steps"] == 3 * pairs  # the schedule finished, not restarted
    assert (run / "iter-001" / "model" / "model.safetensors").is_file()
