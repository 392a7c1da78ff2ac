"""Shared fixtures: a tiny randomly initialised Llama with a tiny BPE tokenizer, and small task files.

The tiny model runs the same code paths as the real one (chat template, generate, trl SFT, LoRA merge)
in a fraction of a second per stage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_model(folder: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        "What is 3 + 4? Answer: 7",
        "Give your final answer on the last line as: Answer: <answer>",
        "Example: user assistant system the a of to 0 1 2 3 4 5 6 7 8 9 + - * / = ?",
    ] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    fast.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def sums_jsonl(tmp_path) -> Path:
    rows = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(6) for b in range(5)]
    return write_jsonl(tmp_path / "sums.jsonl", rows)


@pytest.fixture
def code_jsonl(tmp_path) -> Path:
    """Twelve small code problems with their tests and reference solutions (task.source: code)."""
    rows = [{"prompt": f"Write `times_{k}(x)` that returns x times {k}.", "entry_point": f"times_{k}",
             "tests": [f"assert times_{k}(2) == {2 * k}", f"assert times_{k}(0) == 0"],
             "code": f"def times_{k}(x):\n    return x * {k}"} for k in range(12)]
    return write_jsonl(tmp_path / "code.jsonl", rows)


def tiny_overrides(model: Path, data: Path, out: Path, name: str = "t", **extra: object) -> list[str]:
    """Config overrides for a fast run of the tiny model on a JSONL task."""
    base = {
        "name": name,
        "output_dir": str(out),
        "iterations": 1,
        "model.path": str(model),
        "task.source": "jsonl",
        "task.path": str(data),
        "task.train_size": 6,
        "task.eval_size": 4,
        "generate.samples_per_problem": 2,
        "generate.max_new_tokens": 6,
        "generate.batch_size": 8,
        "eval.samples": 2,
        "eval.pass_k": 2,
        "eval.max_new_tokens": 6,
        "train.batch_size": 4,
        "train.epochs": 1,
        "train.checkpoint_every": 1,
        "verify.verifier": "tests.plugins:PassFirst",
        "filter.drop_truncated": False,  # a random model rarely ends a completion before the cap
        "guards.control": "[{name: gk, path: 'builtin:general_knowledge', size: 6}]",
        "guards.embeddings": False,  # loading the embedding model costs seconds; test_guards covers it
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 300, fresh: bool = False) -> subprocess.CompletedProcess:
    """`selfplay ARGS` as a user runs it: its exit code, stdout and stderr.

    By default it runs in this test process (`selfplay.cli.main`, output captured): a new interpreter costs a few
    CPU seconds of importing torch and transformers, and the suite makes dozens of these calls. `fresh=True`, or a
    `cwd` other than the repository, starts `python -m selfplay` in a new process instead, as the tests that kill
    a run or read what a new process prints need. Both catch what escapes `main` as the interpreter would: exit
    code 1 and the traceback on stderr."""
    if fresh or Path(cwd) != ROOT:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        return subprocess.run([sys.executable, "-m", "selfplay", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout)
    from selfplay.cli import main

    return in_process(["selfplay", *args], lambda: main(list(args)))


def in_process(argv: list[str], call) -> subprocess.CompletedProcess:
    """`call()` with stdout and stderr captured, ending as an interpreter would: its return value or SystemExit's
    code is the exit code, and anything else escaping it is printed as a traceback with exit code 1."""
    import contextlib
    import io
    import traceback

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = call()
        except SystemExit as e:  # argparse's errors, --help, a script's sys.exit
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if e.code is not None and not isinstance(e.code, int):
                print(e.code, file=sys.stderr)
        except Exception:  # noqa: BLE001 - the interpreter would print it and exit 1
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess(argv, code if isinstance(code, int) else 0, out.getvalue(), err.getvalue())
