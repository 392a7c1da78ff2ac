"""Online RL (recipe grpo): the rollout sampler on the live LoRA policy, whole runs on the tiny model with trl's
GRPOTrainer and RLOOTrainer, several weighted rewards, the no-signal alarm, clear refusals, and a SIGKILL in the
middle of RL training that resumes to the same rewards and rollouts as a run never killed."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from selfplay.config import load_config
from selfplay.errors import UserError
from selfplay.files import read_jsonl
from selfplay.guards.rl_signal import audit
from selfplay.interfaces import SamplingParams
from selfplay.models import Placement, load_model, load_tokenizer
from selfplay.recipes.grpo import rollout_continuous
from selfplay.training.rl import _runs, rollout_seed
from tests.conftest import run_cli, tiny_overrides, write_jsonl
from tests.test_resume import _kill_when, _line_count, _start

CPU = Placement("cpu", None)


def grpo_overrides(model: Path, data: Path, out: Path, name: str = "g", **extra: object) -> list[str]:
    base = {"recipe": "grpo", "verify.verifier": "tests.plugins:Letters", "task.train_size": 12,
            "rl.steps": 3, "rl.prompts_per_step": 2, "rl.num_generations": 4, "train.checkpoint_every": 2}
    return tiny_overrides(model, data, out, name, **{**base, **extra})


@pytest.fixture
def sums40(tmp_path) -> Path:
    rows = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(8) for b in range(5)]
    return write_jsonl(tmp_path / "sums40.jsonl", rows)


# -- pieces --------------------------------------------------------------------------------------------------
def test_groups_are_runs_of_the_same_prompt_cut_at_the_group_size():
    a, b = [1, 2, 3], [4, 5]
    assert _runs([a, a, a, a, b, b, b, b], 4) == [(0, 4), (4, 4)]
    assert _runs([a, a, a, a, a, a, a, a], 4) == [(0, 4), (4, 4)]  # two problems with one prompt: two groups
    assert _runs([a, a, b, a], 4) == [(0, 2), (2, 1), (3, 1)]
    assert rollout_seed(0, 3, 0) == rollout_seed(0, 3, 0) != rollout_seed(0, 4, 0) != rollout_seed(1, 3, 0)


def test_rollouts_sample_the_live_lora_policy_as_generate_does(tiny_model):
    """Greedy rollouts from the continuous decoder on the trainer's LoRA-wrapped policy equal `generate` on the
    same policy, token for token, and the policy is put back in training mode."""
    import torch
    from peft import LoraConfig, get_peft_model

    tokenizer = load_tokenizer(tiny_model)
    policy = get_peft_model(load_model(tiny_model, CPU), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                                    task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    for name, p in policy.named_parameters():
        if "lora_B" in name:  # a trained adapter: zero B would leave the policy equal to the base
            p.data.normal_(0, 0.5)
    base = policy.get_base_model()
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"What is {k} + 1?"}],
                                             add_generation_prompt=True) for k in range(3)]
    prompts = [p if isinstance(p, list) else p["input_ids"] for p in prompts]
    policy.train()
    drawn = rollout_continuous(base, tokenizer, prompts, SamplingParams(n=2, temperature=0.0, max_new_tokens=8),
                               batch_size=4)
    assert policy.training or base.training  # the caller (the trainer) restores train mode; no error here
    with torch.no_grad():
        policy.eval()
        for prompt, seqs in zip(prompts, drawn, strict=True):
            out = policy.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                  max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
            expected = out[0, len(prompt):].tolist()
            assert seqs[0] == seqs[1] == expected[: len(seqs[0])]
    merged = get_peft_model(load_model(tiny_model, CPU), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                                    task_type="CAUSAL_LM")).get_base_model()
    plain = rollout_continuous(merged, tokenizer, prompts, SamplingParams(n=1, max_new_tokens=8), batch_size=4)
    assert [d[0] for d in drawn] != [p[0] for p in plain], "the adapter changed nothing: the test would not see it"


def test_scoring_only_the_completion_on_the_cpu_gives_trls_log_probabilities(tiny_model):
    """The CPU speed-up (training/rl.py, _score_completions_only) changes which positions trl's fused LM head
    projects, never the result: log-probabilities and entropies of the completion tokens are the same both ways,
    and trl's private switch is put back afterwards."""
    import torch
    import trl.trainer.utils as trl_utils
    from trl.trainer.utils import add_fused_lm_head

    from selfplay.training.rl import _score_completions_only

    model = load_model(tiny_model, CPU)
    add_fused_lm_head(model, temperature=0.8, outputs=("log_probs", "entropy"))
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (3, 20))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # a left-padded prompt
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-6] = -100  # only the last 6 tokens (the completion) are scored

    def score():
        out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        return out.log_probs[:, -6:], out.entropy[:, -6:]

    original = trl_utils._use_triton
    with torch.no_grad():
        every_position = score()
        with _score_completions_only(CPU):
            assert trl_utils._use_triton(torch.device("cpu"))
            completion_only = score()
    assert trl_utils._use_triton is original
    for a, b in zip(every_position, completion_only, strict=True):
        assert a.abs().sum() > 0 and torch.allclose(a, b, atol=1e-5)


def test_the_rl_guard_alarms_on_no_signal_truncation_and_entropy_collapse():
    steady = [{"step": s, "reward": 0.5, "frac_reward_zero_std": 0.1, "completions/clipped_ratio": 0.2,
               "entropy": 1.0, "kl": 0.01} for s in range(1, 5)]
    assert audit(steady, 0.5, 0.2).status == "ok"
    flat = [{**s, "frac_reward_zero_std": 1.0, "completions/clipped_ratio": 1.0} for s in steady]
    (alarm,) = audit(flat, 0.5, 0.2).alarms
    assert "0% of groups had any reward spread" in alarm and "cut at the token cap" in alarm
    collapsing = [{**s, "entropy": 1.0 / s["step"] ** 3} for s in steady]
    assert any("entropy collapsed" in a for a in audit(collapsing, 0.5, 0.2).alarms)
    no_kl = audit([{k: v for k, v in s.items() if k != "kl"} for s in steady], 0.5, 0.2)
    assert any("KL" in n for n in no_kl.notes)


def test_over_optimisation_fires_when_gold_turns_down_while_the_proxy_still_climbs():
    from selfplay.guards.rl_signal import overoptimisation

    rising = [{"step": s, "reward": 0.1 * s, "gold": 0.05 * s} for s in range(1, 13)]
    assert overoptimisation(rising, 0.02)[1] is None
    goodhart = [{"step": s, "reward": 0.1 * s, "gold": 0.05 * min(s, 6) - 0.04 * max(0, s - 6)} for s in range(1, 13)]
    figures, alarm = overoptimisation(goodhart, 0.02)
    assert alarm and "over-optimisation: after update" in alarm and figures["gold_peak_step"] <= 7
    both_down = [{**s, "reward": 2.0 - 0.1 * s["step"]} for s in goodhart]
    assert overoptimisation(both_down, 0.02)[1] is None  # the policy got worse at everything: not Goodhart
    assert overoptimisation(goodhart[:4], 0.02) == ({}, None)  # too few updates to smooth
    # With the count of rollouts behind each pass rate, a fall must also clear the noise of those counts.
    few = [{**s, "gold_n": 4} for s in goodhart]  # 4 rollouts an update: a 20-point fall is noise
    figures, alarm = overoptimisation(few, 0.02)
    assert alarm is None and "inside the noise" in figures["note"] and figures["gold_drop_noise"] > 0.3
    many = [{**s, "gold_n": 4096} for s in goodhart]
    figures, alarm = overoptimisation(many, 0.02)
    assert alarm and figures["gold_drop_noise"] < 0.05
    # 32 rollouts an update clear the noise if they were independent; as 4 requests of 8 that pass or fail
    # together (the requests' own pass rates kept), the same fall is inside it.
    independent = [{**s, "gold_n": 32} for s in goodhart]
    assert overoptimisation(independent, 0.02)[1] is not None
    together = [{**s, "gold_by_request": [0.0, 0.0, 1.0, 1.0]} for s in independent]
    figures, alarm = overoptimisation(together, 0.02)
    assert alarm is None and figures["gold_noise_from"] == "requests" and "inside the noise" in figures["note"]
    alike = [{**s, "gold_by_request": [s["gold"]] * 4} for s in independent]  # requests alike: rollouts decide
    assert overoptimisation(alike, 0.02)[1] is not None
    # A flat gold curve of 40 updates of 64 rollouts, sampled: the best window's lead over the last is noise.
    rng = random.Random(0)
    false_alarms = 0
    for _ in range(200):
        flat = [{"step": s, "reward": 0.01 * s, "gold": sum(rng.random() < 0.3 for _ in range(64)) / 64,
                 "gold_n": 64} for s in range(1, 41)]
        false_alarms += overoptimisation(flat, 0.02)[1] is not None
    assert false_alarms <= 10  # <= 5%; with the margin alone almost every flat run would alarm


@pytest.mark.parametrize("setting, message", [
    (["review.every=1"], "review.every: recipe grpo trains on its rollouts"),
    (["generate.backend=openai", "generate.options={launch: transformers}"], "generate.backend: openai cannot"),
    (["rl.options={no_such_setting: 1}"], "rl.options: no_such_setting is not a setting of trl's GRPOConfig"),
    (["rl.prompts_per_step=48"], "rl.prompts_per_step: 48 is more than the 12 training problems"),
])
def test_what_grpo_cannot_run_is_one_line_and_writes_nothing(tiny_model, sums40, tmp_path, setting, message):
    result = run_cli("run", *grpo_overrides(tiny_model, sums40, tmp_path), *setting)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr[-2000:]
    assert not (tmp_path / "g" / "iter-001" / "model").exists()


def test_rloo_settings_that_belong_to_grpo_are_refused():
    with pytest.raises(UserError) as err:
        load_config(None, ["rl.algorithm=rloo", "rl.loss_type=grpo"])
    assert "RLOOTrainer has neither" in str(err.value) and "\n" not in str(err.value)


# -- whole runs ----------------------------------------------------------------------------------------------
def _steps(run: Path, i: int = 1) -> list[dict]:
    return read_jsonl(run / f"iter-{i:03d}" / "rl-steps.jsonl")


@pytest.mark.e2e
@pytest.mark.parametrize("algorithm, first", [("grpo", "letters"), ("rloo", "majority")])
def test_a_grpo_run_writes_every_rollout_with_its_rewards_and_the_figures_per_update(tiny_model, sums40, tmp_path,
                                                                                      algorithm, first):
    """GRPO on two weighted rewards; RLOO with the group's own majority as the first (TTRL, labels hidden)."""
    rewards = "[{verifier: verify, weight: 1.0}, {verifier: 'tests.plugins:Letters', weight: 0.5}]"
    extra = {"rl.algorithm": algorithm, "rl.rewards": rewards}
    if first == "majority":
        extra.update({"verify.verifier": "majority", "task.labels": "hidden"})
    result = run_cli("run", *grpo_overrides(tiny_model, sums40, tmp_path, **extra))
    assert result.returncode == 0, result.stderr[-3000:]
    run, it = tmp_path / "g", tmp_path / "g" / "iter-001"
    summary = json.loads((it / "rl.json").read_text())
    assert summary["steps"] == 3 and summary["algorithm"] == algorithm and summary["rollout"] == "continuous"
    assert summary["rollout_tokens_per_second"] > 0
    samples, verdicts = read_jsonl(it / "samples.jsonl"), read_jsonl(it / "verdicts.jsonl")
    assert len(samples) == len(verdicts) == 3 * 2 * 4  # steps x prompts per step x generations
    assert len({s["id"] for s in samples}) == len(samples)
    assert [v["sample_id"] for v in verdicts] == [s["id"] for s in samples]
    assert {v["details"]["step"] for v in verdicts} == {1, 2, 3}
    second = "letters_2" if first == "letters" else "letters"
    for v in verdicts:  # the weighted sum of the two rewards, each kept by name
        r = v["details"]["rewards"]
        assert set(r) == {first, second} and math.isclose(v["score"], r[first] + 0.5 * r[second])
    if first == "majority":  # each group of 4 rollouts voted on its own
        assert all(v["details"]["samples"] == 4 and "status" in v["details"] for v in verdicts)
        audit_train = json.loads((it / "eval.json").read_text())["guards"]["pseudo_labels"]["train"]
        assert audit_train["problems"] == 3 * 2  # one vote per problem and update
    steps = _steps(run)
    assert [s["step"] for s in steps] == [1, 2, 3]
    for s in steps:
        assert {"reward", f"rewards/{first}/mean", f"rewards/{second}/mean", "frac_reward_zero_std", "entropy",
                "completions/clipped_ratio", "kl"} <= set(s)
        mine = [v["score"] for v in verdicts if v["details"]["step"] == s["step"]]
        assert math.isclose(s["reward"], sum(mine) / len(mine), rel_tol=1e-4)  # trl's mean is ours
    evaluation = json.loads((it / "eval.json").read_text())
    assert evaluation["guards"]["rl"]["steps"] == 3
    assert (it / "model" / "config.json").is_file() and not (it / "trainer").exists()
    page = (run / "report.html").read_text()
    assert "<h2>Online RL</h2>" in page and "Reward per update" in page
    row = read_jsonl(run / "metrics.jsonl")[-1]
    assert "rl/reward_last" in row and row["seconds"]["rl"] > 0
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())


@pytest.mark.e2e
def test_a_reward_that_never_differs_in_a_group_raises_the_no_signal_alarm(tiny_model, sums40, tmp_path):
    """trl#5697: every completion cut at the cap and scored the same: zero-spread groups, a loss of 0, and here
    an alarm that says so."""
    too_hard = {"verify.verifier": "tests.plugins:TooHard"}
    result = run_cli("run", *grpo_overrides(tiny_model, sums40, tmp_path, **too_hard))
    assert result.returncode == 0, result.stderr[-3000:]
    steps = _steps(tmp_path / "g")
    assert all(s["frac_reward_zero_std"] == 1.0 for s in steps)
    alarms = json.loads((tmp_path / "g" / "iter-001" / "eval.json").read_text())["guards"]["rl"]["alarms"]
    assert alarms and "0% of groups had any reward spread" in alarms[0] and "cut at the token cap" in alarms[0]
    assert "ALARM rl:" in result.stdout


@pytest.mark.e2e
def test_sigkill_in_the_middle_of_rl_resumes_to_the_rewards_and_rollouts_of_an_unbroken_run(tiny_model, sums40,
                                                                                           tmp_path):
    extra = {"rl.steps": 4, "train.checkpoint_every": 2, "generate.max_new_tokens": 8}
    whole = run_cli("run", *grpo_overrides(tiny_model, sums40, tmp_path / "a", **extra))
    assert whole.returncode == 0, whole.stderr[-3000:]

    args = grpo_overrides(tiny_model, sums40, tmp_path / "b", **extra)
    run = tmp_path / "b" / "g"
    partial = run / "iter-001" / "rl-steps.partial.jsonl"
    # Killed once step 3 is logged: checkpoint-2 is on disk, step 3's rollouts and figures are past it.
    _kill_when(_start("run", *args), lambda: _line_count(partial) >= 3)
    assert not (run / "iter-001" / "rl.json").exists()
    resumed = run_cli("resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step" in resumed.stdout

    a, b = _steps(tmp_path / "a" / "g"), _steps(run)
    assert [s["step"] for s in b] == [1, 2, 3, 4]  # nothing doubled, nothing lost
    for x, y in zip(a, b, strict=True):
        assert math.isclose(x["reward"], y["reward"], rel_tol=1e-5, abs_tol=1e-6), (x, y)
    texts = lambda r: [(s["id"], s["completion"]) for s in read_jsonl(r / "iter-001" / "samples.jsonl")]  # noqa: E731
    assert texts(run) == texts(tmp_path / "a" / "g")
    summary = json.loads((run / "iter-001" / "rl.json").read_text())
    assert summary["resumed_from"] and summary["resumed_from"].endswith("checkpoint-2")
