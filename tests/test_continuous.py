"""The continuous backend: greedy output equal to `generate`'s token for token, `generate`'s sampling semantics,
whole problems however the rows are scheduled, and a clean fallback for models it does not run."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfplay.errors import UserError
from selfplay.generation import (
    ContinuousGenerator,
    SamplingParams,
    TransformersGenerator,
    build_generator,
    sample_batches,
)
from selfplay.generation.continuous import nucleus
from selfplay.models import placement
from selfplay.records import Problem

WHERE = placement("cpu", "float32")
# Prompts of many lengths; the first ones share a long prefix (the shared-prefix path), the last ones do not.
PROBLEMS = [Problem(f"p{i}", "What is 1 + 2?" + " and 3" * i, "3") for i in range(9)] + [
    Problem("q0", "7 - 5 = ?", "2"), Problem("q1", "Example: 9 * 9", "81"), Problem("q2", "the a of", "")]


def _texts(gen, problems, params, batch_size) -> dict[str, tuple[str, int, str]]:
    return {s.id: (s.completion, s.num_tokens, s.finish_reason)
            for batch in sample_batches(gen, problems, params, batch_size) for s in batch}


@pytest.fixture(scope="module")
def stopping_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with livelier weights and a second end-of-sequence token reached at different steps.

    With its small initial weights the tiny model repeats one token forever and never ends; this one
    writes varied tokens, and rows that end at different steps are what the scheduler refills.
    """
    import collections

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("stopping")
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    torch.manual_seed(1)
    for weight in model.parameters():
        if weight.dim() > 1:
            weight.data.normal_(0.0, 0.25)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    gen = build_generator("transformers", folder, WHERE, {})
    runs = [gen._run([ids], SamplingParams(max_new_tokens=24))[0] for ids in gen._encode(PROBLEMS)]
    starts = {seq[0] for seq in runs}
    positions = collections.defaultdict(set)
    for seq in runs:
        for t in set(seq) - starts:
            positions[t].add(seq.index(t))
    model.generation_config.eos_token_id = [model.generation_config.eos_token_id,
                                            max(positions, key=lambda t: len(positions[t]))]
    model.generation_config.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_greedy_output_is_generates_token_for_token_on_the_tiny_model(stopping_model, batch_size):
    reference = build_generator("transformers", stopping_model, WHERE, {})
    ours = build_generator("continuous", stopping_model, WHERE, {})
    assert isinstance(ours, ContinuousGenerator)
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=24)
    expected = _texts(reference, PROBLEMS, greedy, 64)
    assert _texts(ours, PROBLEMS, greedy, batch_size) == expected
    lengths = [n for _, n, _ in expected.values()]
    assert len(set(lengths)) > 2 and 24 in lengths, "rows must end at different steps, some at the cap"
    # with and without the shared prefix: the same prompts one at a time have none to share
    assert {k: v for p in PROBLEMS for k, v in _texts(ours, [p], greedy, 4).items()} == expected


@pytest.mark.e2e
def test_greedy_output_is_generates_token_for_token_on_the_real_model():
    from selfplay.config import load_config
    from selfplay.models import resolve_model_path
    from selfplay.tasks import build_task

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "rft-default.yaml")
    split = build_task(cfg.task).split()
    path = resolve_model_path(cfg.model.path)
    stories = [Problem(f"w{i}", f"Write a short story about {t}.", "") for i, t in enumerate(["a lost cat", "the sea"])]
    reference, ours = (build_generator(b, path, WHERE, {}) for b in ("transformers", "continuous"))
    # 16 held-out problems through a continuous batch of 8: rows finish and are refilled mid-batch.
    for problems, cap, batch in ((split.heldout[:16], 32, 8), (stories, 64, 16)):
        greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=cap)
        expected = _texts(reference, problems, greedy, 64)
        assert _texts(ours, problems, greedy, batch) == expected
    assert max(n for _, n, _ in expected.values()) == 64, "the stories must run to the cap"


def test_top_p_keeps_the_tokens_transformers_keeps_with_the_same_weights():
    import torch
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    paths = set()
    batches = [torch.randn(16, 1000) * scale for scale in (0.3, 3.0, 8.0)]
    batches.append(torch.cat([torch.randn(4, 1000) * 0.3, torch.randn(4, 1000) * 8.0]))  # both kinds of row
    for logits in batches:  # flat rows need the full sort; peaked rows are settled by the top candidates
        for temperature, top_p in ((0.8, 0.95), (1.0, 0.5), (1.3, 0.9)):
            warped = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, logits.clone()))
            expected = torch.softmax(warped, -1)
            ours = torch.zeros_like(expected)
            for rows, weights, index in nucleus(torch.softmax(logits / temperature, -1), top_p):
                paths.add(weights.shape[-1])
                ours[rows] = ours[rows].scatter(-1, index, weights)
            ours = ours / ours.sum(-1, keepdim=True)
            assert torch.equal(ours > 0, expected > 0)
            assert torch.allclose(ours, expected, atol=1e-6)
    assert paths == {64, 1000}


def test_sampled_first_tokens_follow_the_models_distribution(stopping_model):
    import collections
    import math

    import torch

    from selfplay.generation.hf import encode_prompts

    gen = build_generator("continuous", stopping_model, WHERE, {})
    problem = Problem("d", "What is 1 + 2?", "3")
    [ids] = encode_prompts(gen.tokenizer, [problem])
    with torch.inference_mode():
        logits = gen.model(torch.tensor([ids])).logits[0, -1]
    # a one-token completion is seen as its text (a stop or special token gives ""): compare text frequencies
    text_of = ["" if t in gen.stop_ids else gen.tokenizer.decode([t], skip_special_tokens=True)
               for t in range(len(logits))]

    def by_text(temperature: float, top_p: float) -> dict[str, float]:
        out: dict[str, float] = collections.defaultdict(float)
        for token, p in enumerate(torch.softmax(TemperatureTopP(temperature, top_p)(logits), -1).tolist()):
            out[text_of[token]] += p
        return out

    draws = 4000
    for temperature, top_p in ((0.7, 1.0), (0.7, 0.8)):
        expected = by_text(temperature, top_p)
        params = SamplingParams(n=draws, temperature=temperature, top_p=top_p, max_new_tokens=1, seed=5)
        drawn = collections.Counter(c.text for batch in gen.generate([problem], params, 512) for _, cs in batch
                                    for c in cs)
        assert set(drawn) <= {t for t, p in expected.items() if p > 0} and len(drawn) > 3

        def distance(dist: dict[str, float], drawn=drawn) -> float:  # total variation from the draws
            return 0.5 * sum(abs(drawn[t] / draws - dist.get(t, 0.0)) for t in set(dist) | set(drawn))

        noise = 0.5 * sum(math.sqrt(2 * p * (1 - p) / (math.pi * draws)) for p in expected.values())
        assert distance(expected) < 2 * noise
        assert distance(by_text(1.0, 1.0)) > 2 * noise  # the check tells a different temperature apart


class TemperatureTopP:
    """transformers' own warpers, in the order generate applies them."""

    def __init__(self, temperature: float, top_p: float):
        from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

        self.steps = [TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])

    def __call__(self, logits):
        for step in self.steps:
            logits = step(None, logits[None])[0]
        return logits


def test_samples_are_whole_problems_reproducible_and_seeded_per_sample_whatever_the_rows(stopping_model):
    gen = build_generator("continuous", stopping_model, WHERE, {})
    params = SamplingParams(n=5, temperature=1.2, top_p=0.9, max_new_tokens=8, seed=11)
    # fewer rows than samples of one problem: a problem's samples are spread over several admissions
    batches = list(gen.generate(PROBLEMS, params, 2))
    seen = [p.id for batch in batches for p, _ in batch]
    assert sorted(seen) == sorted(p.id for p in PROBLEMS)
    assert all(len(cs) == 5 for batch in batches for _, cs in batch)
    first = _texts(gen, PROBLEMS, params, 2)
    assert all((reason == "length") == (n == 8) for _, n, reason in first.values())
    assert {reason for _, _, reason in first.values()} == {"stop", "length"}
    assert _texts(gen, PROBLEMS, params, 2) == first
    # Each sample has its own stream (seed, problem id, sample index): other rows, another order, a subset of the
    # problems (what a Ray worker or a resumed stage draws) give every problem the same samples.
    assert _texts(gen, PROBLEMS, params, 7) == first
    some = PROBLEMS[::-3]
    assert _texts(gen, some, params, 3) == {k: v for k, v in first.items() if k.split("/")[0] in {p.id for p in some}}
    assert _texts(gen, PROBLEMS, SamplingParams(5, 1.2, 0.9, 8, seed=12), 2) != first
    assert len({first[f"p0/s{k}"][0] for k in range(5)}) > 1


def test_a_model_it_does_not_run_falls_back_to_generate_with_one_line(tmp_path, tiny_model, capsys):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    gen = build_generator("continuous", tmp_path, WHERE, {})
    assert isinstance(gen, TransformersGenerator)
    assert "model_type 'gpt2' is not one of llama" in capsys.readouterr().out
    [[sample]] = sample_batches(gen, PROBLEMS[:1], SamplingParams(max_new_tokens=3), 4)
    assert sample.num_tokens <= 3


def test_int8_is_opt_in_cpu_only_and_still_samples(tiny_model):
    with pytest.raises(UserError, match="generate.options.quantize: 'int4' is not supported"):
        build_generator("continuous", tiny_model, WHERE, {"quantize": "int4"})
    with pytest.raises(UserError, match="generate.options: .*does not accept"):
        build_generator("continuous", tiny_model, WHERE, {"tensor_parallel": 2})
    gen = build_generator("continuous", tiny_model, WHERE, {"quantize": "int8"})
    assert type(gen.model.model.layers[0].self_attn.q_proj).__name__ == "Linear" and "quantized" in type(
        gen.model.model.layers[0].self_attn.q_proj).__module__
    out = _texts(gen, PROBLEMS, SamplingParams(n=1, temperature=0.0, max_new_tokens=6), 4)
    assert sorted(out) == sorted(f"{p.id}/s0" for p in PROBLEMS)
