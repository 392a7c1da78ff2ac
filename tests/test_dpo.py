"""DPO on the tiny model: the loss at step 0, a margin that moves, truncation, empty pairs, resume after SIGKILL."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from selfplay.config import TrainConfig
from selfplay.errors import UserError
from selfplay.models import placement
from selfplay.records import Pair
from selfplay.training import DPO, train_dpo
from selfplay.training.dpo import dpo_trainer
from tests.conftest import ROOT

CPU = placement("cpu", "float32")


def _pairs(n: int, chosen: str = "Answer: 7", rejected: str = "Answer: 3") -> list[Pair]:
    return [Pair(f"it1/p{i}", f"p{i}", f"What is {i} + 4?", chosen, rejected, f"p{i}/s0", f"p{i}/s1", 1.0, 0.0, 1)
            for i in range(n)]


def _margin(model_dir, pairs: list[Pair]) -> float:
    """Mean log p(chosen) - log p(rejected) under the model in `model_dir`, prompts rendered by the chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def logp(prompt: list[dict], text: str) -> float:
        n = len(tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)["input_ids"])
        ids = torch.tensor([tok.apply_chat_template(prompt + [{"role": "assistant", "content": text}],
                                                    tokenize=True)["input_ids"]])
        with torch.no_grad():
            logps = model(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
        return logps[n - 1:].sum().item()

    margins = []
    for p in pairs:
        prompt = [{"role": "user", "content": p.prompt}]
        margins.append(logp(prompt, p.chosen) - logp(prompt, p.rejected))
    return sum(margins) / len(margins)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_first_loss_is_ln2_and_training_raises_the_chosen_margin(tiny_model, tmp_path, method):
    pairs = _pairs(8)
    cfg = TrainConfig(method=method, epochs=2, batch_size=2, learning_rate=5e-3, checkpoint_every=100)
    out = tmp_path / "model"
    stats = DPO().train(tiny_model, pairs, out, tmp_path / "work", cfg, CPU, seed=0)
    # Policy and reference are the same network before the first update: -log sigmoid(0) = ln 2.
    assert stats["first_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert stats["first_reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert stats["steps"] == 8 and stats["pairs"] == 8 and stats["resumed_from"] is None
    assert stats["final_loss"] < stats["first_loss"] and stats["final_reward_margin"] > 0
    assert stats["final_reward_accuracy"] == 1.0
    # The saved, merged model prefers the chosen answer more than the starting model did.
    assert _margin(out, pairs) > _margin(tiny_model, pairs) + 0.1
    assert not (out / "adapter_config.json").exists() and (out / "tokenizer_config.json").is_file()
    assert set(load_file(out / "model.safetensors")) == set(load_file(tiny_model / "model.safetensors"))
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(("loss_type", "beta", "expected"), [
    ("ipo", 0.25, (0 - 1 / (2 * 0.25)) ** 2),  # trl: (mean-token log-ratio delta - 1/(2 beta))^2, delta = 0 at step 0
    ("hinge", 0.5, 1.0),  # relu(1 - beta * 0)
])
def test_other_losses_start_at_their_formula(tiny_model, tmp_path, loss_type, beta, expected):
    cfg = TrainConfig(loss_type=loss_type, beta=beta, epochs=1, batch_size=2, checkpoint_every=100)
    stats = train_dpo(tiny_model, _pairs(4), tmp_path / "model", tmp_path / "work", cfg, CPU, seed=0)
    assert stats["steps"] == 2
    assert stats["first_loss"] == pytest.approx(expected, rel=1e-4)


def test_long_prompt_keeps_its_end_and_long_completions_keep_their_start(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    question = " ".join(str(i % 10) for i in range(120)) + " What is 3 + 4?"
    chosen, rejected = "Answer: 7 " + "1 2 " * 40, "Answer: 3 " + "5 6 " * 40
    pair = Pair("it1/p0", "p0", question, chosen, rejected, "p0/s0", "p0/s1", 1.0, 0.0, 1)
    cfg = TrainConfig(max_prompt_length=12, max_completion_length=3)
    trainer = dpo_trainer(tiny_model, [pair], tmp_path / "work", cfg, CPU, seed=0)
    row = trainer.train_dataset[0]

    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt = [{"role": "user", "content": question}]
    full_prompt = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)["input_ids"]

    def completion_ids(text: str) -> list[int]:
        whole = tok.apply_chat_template(prompt + [{"role": "assistant", "content": text}], tokenize=True)["input_ids"]
        assert whole[: len(full_prompt)] == full_prompt
        return whole[len(full_prompt):]

    assert len(full_prompt) > 12 and len(completion_ids(chosen)) > 3
    assert row["prompt_ids"] == full_prompt[-12:]
    assert tok.decode(row["prompt_ids"]).endswith(" + 4?<|im_end|>\n<|im_start|>assistant\n")
    assert row["chosen_ids"] == completion_ids(chosen)[:3]
    assert row["rejected_ids"] == completion_ids(rejected)[:3]
    assert tok.decode(row["chosen_ids"]).startswith("Answer")
    # trl's collator cuts nothing more: every kept completion token is trained on.
    batch = trainer.data_collator([row])
    assert batch["input_ids"].shape[1] == 12 + 3
    assert batch["completion_mask"].sum(dim=1).tolist() == [3, 3]


def test_an_empty_chosen_is_dropped_an_empty_rejected_trains_and_all_empty_is_one_clear_error(
    tiny_model, tmp_path, capsys
):
    ok = _pairs(3)
    blank_chosen = Pair("it1/e0", "e0", "What is 1 + 1?", "", "Answer: 2", "e0/s0", "e0/s1", 1.0, 0.0, 1)
    blank_rejected = Pair("it1/e1", "e1", "What is 1 + 2?", "Answer: 3", "  \n", "e1/s0", "e1/s1", 1.0, 0.0, 1)
    cfg = TrainConfig(epochs=1, batch_size=4, checkpoint_every=100)
    stats = train_dpo(tiny_model, [*ok, blank_chosen, blank_rejected], tmp_path / "m", tmp_path / "w", cfg, CPU, 0)
    assert stats["pairs"] == 4 and stats["dropped_pairs"] == 1 and stats["steps"] == 1
    dropped = [line for line in capsys.readouterr().out.splitlines() if "dropped" in line]
    assert dropped == ["train: 1 of 5 pairs dropped: an empty chosen completion"]
    # The empty rejected answer still has its end-of-turn token to learn from.
    trainer = dpo_trainer(tiny_model, [blank_rejected], tmp_path / "w3", cfg, CPU, 0)
    assert len(trainer.train_dataset[0]["rejected_ids"]) >= 1

    with pytest.raises(UserError) as err:
        train_dpo(tiny_model, [blank_chosen, blank_chosen], tmp_path / "m2", tmp_path / "w2", cfg, CPU, 0)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("train: all 2 preference pairs have an empty chosen completion")
    assert not (tmp_path / "m2").exists()


_CHILD = """
import sys
from pathlib import Path
from selfplay.training.dpo import train_dpo
from tests.test_dpo import CPU, RESUME_CFG, _pairs
model, out, work = map(Path, sys.argv[1:4])
train_dpo(model, _pairs(24), out, work, RESUME_CFG, CPU, seed=0)
"""
RESUME_CFG = TrainConfig(epochs=1, batch_size=1, learning_rate=5e-3, checkpoint_every=1)


@pytest.mark.e2e  # a subprocess run
def test_sigkill_mid_training_resumes_from_the_last_checkpoint(tiny_model, tmp_path):
    work, out = tmp_path / "work", tmp_path / "model"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tiny_model), str(out), str(work)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not any(work.glob("checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "timed out waiting for a checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    complete = sorted((c for c in work.glob("checkpoint-*") if (c / "trainer_state.json").is_file()),
                      key=lambda c: int(c.name.split("-")[1]))
    latest = complete[-1]
    assert int(latest.name.split("-")[1]) < 24

    stats = train_dpo(tiny_model, _pairs(24), out, work, RESUME_CFG, CPU, seed=0)
    assert stats["resumed_from"] == str(latest)
    assert stats["steps"] == 24  # 24 pairs, batch 1, one epoch: the schedule finished, not restarted or doubled
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert not work.exists()

    # The resumed run ends where an uninterrupted one does.
    whole = train_dpo(tiny_model, _pairs(24), tmp_path / "whole", tmp_path / "work2", RESUME_CFG, CPU, seed=0)
    assert whole["steps"] == 24
    resumed, straight = load_file(out / "model.safetensors"), load_file(tmp_path / "whole" / "model.safetensors")
    assert all(torch.allclose(resumed[k], straight[k], atol=1e-5) for k in straight)


@pytest.mark.parametrize("setting", ["train.max_completion_length=0", "train.max_prompt_length=0", "train.beta=0",
                                     "train.loss_type=kto"])
def test_dpo_settings_that_leave_nothing_to_train_are_one_clear_line(setting):
    from selfplay.config import load_config

    key = setting.split("=")[0]
    with pytest.raises(UserError) as err:
        load_config(None, [setting])
    assert "\n" not in str(err.value) and f"{key}:" in str(err.value)
