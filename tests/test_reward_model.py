"""`selfplay train-rm` and `verify.verifier: reward_model` on the tiny model: a pair file in, a reward model out that
ranks held-out pairs, its score as a verifier and as grpo's reward, and one clear line for every bad pair file."""

from __future__ import annotations

import json

import pytest

from selfplay.config import load_config
from selfplay.files import read_jsonl
from selfplay.preferences import read_pairs, split_pairs, train_rm
from selfplay.records import Pair, to_dict
from tests.conftest import run_cli, write_jsonl
from tests.test_grpo import grpo_overrides


def _pairs(n: int) -> list[dict]:
    """Pairs a reward model can learn from the answer alone: the chosen one ends 'good', the rejected one 'bad'."""
    return [{"prompt": f"Is {k} a fine number?", "chosen": f"{k} is good", "rejected": f"{k} is bad"}
            for k in range(n)]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "q", "chosen": "a"}, "line 2: missing field 'rejected'"),
    ({"prompt": "q", "chosen": "a", "rejected": "a"}, "line 2: 'chosen' and 'rejected' are the same text"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "line 2: 'prompt' must be a non-empty string"),
    ({"prompt": "q", "chosen": ["a"], "rejected": "b"}, "line 2: 'chosen' must be a non-empty string"),
    ({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}, "line 2: 'prompt' must be"),
])
def test_a_bad_pair_file_is_one_line_naming_the_file_line_and_field(tmp_path, row, message):
    path = write_jsonl(tmp_path / "pairs.jsonl", [_pairs(1)[0], row])
    result = run_cli("train-rm", str(path), str(tmp_path / "rm"))
    assert result.returncode == 2
    assert f"{path}: {message}" in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    assert not (tmp_path / "rm").exists()


def test_a_runs_pairs_file_and_a_persons_file_read_the_same_way(tmp_path):
    run_row = to_dict(Pair("p1", "prob", "What is 2+2?", "4", "5", "prob/s0", "prob/s1", 1.0, 0.0, 1,
                           messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]))
    person = {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "who": "ana", "when": "2026-12-05T10:00"}
    (a, b) = read_pairs(write_jsonl(tmp_path / "p.jsonl", [run_row, person]))
    assert a.prompt[0]["role"] == "system" and (a.chosen, a.rejected) == ("4", "5")
    assert b.prompt == [{"role": "user", "content": "What is 2+2?"}]
    train, held = split_pairs(read_pairs(write_jsonl(tmp_path / "q.jsonl", _pairs(20))), 0.1, seed=0)
    assert (len(train), len(held)) == (18, 2)
    assert split_pairs(read_pairs(tmp_path / "q.jsonl"), 0.1, seed=0) == (train, held)  # seeded


@pytest.mark.e2e
def test_train_rm_ranks_held_out_pairs_and_its_model_scores_samples_in_a_grpo_run(tiny_model, sums_jsonl, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", _pairs(60))
    out = tmp_path / "rm"
    cfg = load_config(None, [f"model.path={tiny_model}", "train.method=full", "train.learning_rate=1e-3",
                             "train.epochs=3", "train.batch_size=8", "train.checkpoint_every=50"])
    figures = train_rm(pairs, out, cfg, heldout=0.2, max_length=128)
    assert figures["heldout_pairs"] == 12 and figures["accuracy"] >= 0.9, figures
    assert json.loads((out / "rm_eval.json").read_text())["accuracy"] == figures["accuracy"]
    assert not out.with_name("rm.trainer").exists()
    again = run_cli("train-rm", str(pairs), str(out), f"model.path={tiny_model}")
    assert again.returncode == 2 and "pass --force" in again.stderr

    # As grpo's reward: its score reaches the verdicts and trl's per-update figures.
    rewards = f"[{{verifier: reward_model, options: {{path: '{out}'}}}}]"
    result = run_cli("run", *grpo_overrides(tiny_model, sums_jsonl, tmp_path / "runs", **{"rl.rewards": rewards,
                                                                                           "rl.steps": 2}))
    assert result.returncode == 0, result.stderr[-3000:]
    verdicts = read_jsonl(tmp_path / "runs" / "g" / "iter-001" / "verdicts.jsonl")
    assert verdicts and all(v["verifier"] == "reward_model" and "reward" in v["details"] for v in verdicts)
    assert len({round(v["score"], 6) for v in verdicts}) > 1  # a real score per completion
    steps = read_jsonl(tmp_path / "runs" / "g" / "iter-001" / "rl-steps.jsonl")
    assert all("rewards/reward_model/mean" in s for s in steps)


def test_a_missing_reward_model_is_one_line(tiny_model, sums_jsonl, tmp_path):
    result = run_cli("run", *grpo_overrides(tiny_model, sums_jsonl, tmp_path, **{
        "verify.verifier": "reward_model", "verify.options": f"{{path: '{tmp_path / 'nope'}'}}"}))
    assert result.returncode == 2
    assert "is not a reward model folder" in result.stderr and result.stderr.strip().count("\n") == 0


@pytest.mark.e2e
def test_rlaif_trains_a_reward_model_on_ai_preferences_and_runs_grpo_against_it_audited_by_gold(tiny_model,
                                                                                                 tmp_path):
    """configs/rlaif.yaml's phase on the tiny model: judged AI preference pairs, a reward model trained on them, and
    grpo with that reward model as its only reward while IFEval's checkers (gold) score every update's rollouts."""
    from tests.test_constitutional import _overrides

    args = _overrides(tiny_model, tmp_path, name="rlaif", **{
        "recipe": "rlaif", "task.train_size": 12, "constitution.phase": "preference", "constitution.pairs": "judged",
        "judge.batch_size": 4, "generate.backend": "tests.test_constitutional:length_judging_backend",
        "rl.steps": 1, "rl.prompts_per_step": 2, "rl.num_generations": 4, "train.max_length": 96,
        "task.eval_size": 2, "guards.control": "[]"})
    proc = run_cli("run", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    it = tmp_path / "rlaif" / "iter-001"
    pairs = read_jsonl(it / "pairs.jsonl")
    rm = json.loads((it / "reward_model.json").read_text())
    assert rm["pairs"] == len(pairs) >= 2 and rm["heldout_pairs"] >= 1 and rm["accuracy"] is not None
    assert (it / "reward_model" / "rm_eval.json").is_file()
    assert {v["verifier"] for v in read_jsonl(it / "verdicts.jsonl")} == {"constitution"}  # the comparisons, kept
    rollouts = read_jsonl(it / "rollout-verdicts.jsonl")
    assert len(rollouts) == len(read_jsonl(it / "rollouts.jsonl")) == 1 * 2 * 4
    assert {v["verifier"] for v in rollouts} == {"reward_model"}
    assert all("gold_passed" in v["details"] for v in rollouts)  # IFEval scored every rollout, and trained none
    steps = read_jsonl(it / "rl-steps.jsonl")
    assert [s["step"] for s in steps] == [1] and all("gold" in s and "rewards/reward_model/mean" in s for s in steps)
