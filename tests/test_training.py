import json

import pytest
import torch
from safetensors.torch import load_file

from selfplay.config import TrainConfig
from selfplay.models import placement
from selfplay.records import Example
from selfplay.training import train_sft

EXAMPLES = [Example(f"it1/p{i}/s0", f"p{i}", f"p{i}/s0", f"What is {i} + 1?", f"Answer: {i + 1}", 1) for i in range(6)]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_sft_changes_weights_and_saves_a_plain_checkpoint(tiny_model, tmp_path, method):
    cfg = TrainConfig(method=method, epochs=2, batch_size=2, learning_rate=5e-3, checkpoint_every=100)
    out = tmp_path / "model"
    stats = train_sft(tiny_model, EXAMPLES, out, tmp_path / "work", cfg, placement("cpu", "float32"), seed=0)
    assert stats["steps"] == 6 and stats["examples"] == 6 and stats["tokens_per_epoch"] > 0
    assert stats["final_loss"] < stats["first_loss"]
    # A merged, ordinary checkpoint: no adapter files, loads with from_pretrained, weights moved.
    assert not (out / "adapter_config.json").exists()
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    before = load_file(tiny_model / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert set(before) == set(after)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("mlp" in k for k in changed)
    assert not (tmp_path / "work").exists()  # trainer checkpoints are removed once the model is saved


def test_loss_is_on_the_completion_only(tiny_model, tmp_path):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from selfplay.models import load_model

    # Tokenise the way train_sft does and check the prompt tokens carry no loss.
    tok = AutoTokenizer.from_pretrained(tiny_model)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": "What is 2 + 2?"}],
                               "completion": [{"role": "assistant", "content": "Answer: 4"}]}])
    args = SFTConfig(output_dir=str(tmp_path), completion_only_loss=True, report_to=[], use_cpu=True)
    trainer = SFTTrainer(model=load_model(tiny_model, placement("cpu", "float32")), args=args,
                         train_dataset=data, processing_class=tok)
    row = trainer.train_dataset[0]
    prompt = tok.apply_chat_template(data[0]["prompt"], add_generation_prompt=True, tokenize=True)["input_ids"]
    n = len(prompt)
    assert row["input_ids"][:n] == prompt
    assert set(row["labels"][:n]) == {-100}
    # The completion is learned through its end-of-turn token, so the model learns to stop.
    assert row["labels"][n:] == row["input_ids"][n:] and tok.eos_token_id in row["labels"][n:]


@pytest.mark.e2e
def test_max_length_that_leaves_no_completion_is_a_clear_error(tiny_model, sums_jsonl, tmp_path, capsys):
    from selfplay.cli import main
    from tests.conftest import tiny_overrides

    # trl drops every example whose prompt fills max_length; training must not crash on an empty set.
    assert main(["run", *tiny_overrides(tiny_model, sums_jsonl, tmp_path, **{"train.max_length": 8})]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("selfplay: error: train.max_length: 8 tokens leaves no room for any completion")
    assert (tmp_path / "t" / "iter-001" / "train.jsonl").is_file()  # the stages before training are kept
