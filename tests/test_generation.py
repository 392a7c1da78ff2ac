from selfplay.generation import SamplingParams, build_generator, sample_batches
from selfplay.models import placement
from selfplay.records import Problem

WHERE = placement("cpu", "float32")
PROBLEMS = [Problem(f"p{i}", "What is 1 + 2?" + " and 3" * i, "3") for i in range(5)]


def _samples(gen, problems, params, batch_size):
    return list(sample_batches(gen, problems, params, batch_size))


def test_k_samples_per_problem_with_ids_and_token_counts(tiny_model):
    gen = build_generator("transformers", tiny_model, WHERE, {})
    params = SamplingParams(n=3, temperature=1.0, top_p=1.0, max_new_tokens=5, seed=1)
    batches = _samples(gen, PROBLEMS, params, batch_size=4)
    samples = [s for b in batches for s in b]
    assert sorted(s.id for s in samples) == sorted(f"p{i}/s{k}" for i in range(5) for k in range(3))
    # Whole problems per batch (batch_size 4 // n 3 = 1 problem), so a batch can be persisted as a unit.
    assert all(len({s.problem_id for s in b}) == 1 and len(b) == 3 for b in batches)
    assert all(0 <= s.num_tokens <= 5 for s in samples)
    assert all((s.finish_reason == "length") == (s.num_tokens == 5) for s in samples)
    assert all(s.model == str(tiny_model) for s in samples)
    # Longest prompts first, so an out-of-memory batch shows up at the start, not the end.
    assert batches[0][0].problem_id == "p4"


def test_greedy_is_deterministic_and_sampling_varies(tiny_model):
    gen = build_generator("transformers", tiny_model, WHERE, {})
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=6)
    a = [s.completion for b in _samples(gen, PROBLEMS, greedy, 8) for s in b]
    b = [s.completion for b in _samples(gen, PROBLEMS, greedy, 8) for s in b]
    assert a == b
    sampled = SamplingParams(n=4, temperature=1.5, top_p=1.0, max_new_tokens=6, seed=3)
    texts = [s.completion for b in _samples(gen, PROBLEMS[:1], sampled, 8) for s in b]
    assert len(set(texts)) > 1


def test_left_padding_gives_the_same_greedy_output_as_unbatched(tiny_model):
    gen = build_generator("transformers", tiny_model, WHERE, {})
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=6)
    a = {s.id: s.completion for b in _samples(gen, PROBLEMS, greedy, 8) for s in b}
    b = {s.id: s.completion for b in _samples(gen, PROBLEMS, greedy, 1) for s in b}
    assert a == b


def test_a_problem_with_chat_messages_is_rendered_from_its_turns(tiny_model):
    gen = build_generator("transformers", tiny_model, WHERE, {})
    turns = [{"role": "user", "content": "What is 1 + 2?"}, {"role": "assistant", "content": "4"},
             {"role": "user", "content": "Check that again."}]
    multi = Problem("m", "unused", "3", messages=turns)
    [encoded] = gen._encode([multi])
    text = gen.tokenizer.decode(encoded)
    assert text.count("<|im_start|>user") == 2 and "Check that again." in text and "unused" not in text
    [[sample]] = _samples(gen, [multi], SamplingParams(max_new_tokens=4), 4)
    assert sample.id == "m/s0"


def test_backend_options_it_does_not_take_are_one_clear_error(tiny_model):
    import pytest

    from selfplay.errors import UserError

    with pytest.raises(UserError, match="generate.options: the transformers backend takes no options"):
        build_generator("transformers", tiny_model, WHERE, {"tensor_parallel": 2})
    with pytest.raises(UserError, match="generate.options: .*does not accept"):
        build_generator("tests.plugins:recording_backend", tiny_model, WHERE, {"bogus": 1})
    with pytest.raises(UserError, match="generate.backend: unknown 'sglang'"):
        build_generator("sglang", tiny_model, WHERE, {})
