from selfplay.generation import SamplingParams, TransformersGenerator
from selfplay.models import load_model, load_tokenizer, placement
from selfplay.records import Problem


def _generator(tiny_model, batch_size=4):
    where = placement("cpu", "float32")
    return TransformersGenerator(load_model(tiny_model, where), load_tokenizer(tiny_model), "tiny", batch_size)


PROBLEMS = [Problem(f"p{i}", "What is 1 + 2?" + " and 3" * i, "3") for i in range(5)]


def test_k_samples_per_problem_with_ids_and_token_counts(tiny_model):
    gen = _generator(tiny_model)
    params = SamplingParams(n=3, temperature=1.0, top_p=1.0, max_new_tokens=5, seed=1)
    batches = list(gen.generate(PROBLEMS, params))
    samples = [s for b in batches for s in b]
    assert sorted(s.id for s in samples) == sorted(f"p{i}/s{k}" for i in range(5) for k in range(3))
    # Whole problems per batch (batch_size 4 // n 3 = 1 problem), so a batch can be persisted as a unit.
    assert all(len({s.problem_id for s in b}) == 1 and len(b) == 3 for b in batches)
    assert all(0 <= s.num_tokens <= 5 for s in samples)
    assert all((s.finish_reason == "length") == (s.num_tokens == 5) for s in samples)
    # Longest prompts first, so an out-of-memory batch shows up at the start, not the end.
    assert batches[0][0].problem_id == "p4"


def test_greedy_is_deterministic_and_sampling_varies(tiny_model):
    gen = _generator(tiny_model, batch_size=8)
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=6)
    a = [s.completion for b in gen.generate(PROBLEMS, greedy) for s in b]
    b = [s.completion for b in gen.generate(PROBLEMS, greedy) for s in b]
    assert a == b
    sampled = SamplingParams(n=4, temperature=1.5, top_p=1.0, max_new_tokens=6, seed=3)
    texts = [s.completion for b in gen.generate(PROBLEMS[:1], sampled) for s in b]
    assert len(set(texts)) > 1


def test_left_padding_gives_the_same_greedy_output_as_unbatched(tiny_model):
    batched = _generator(tiny_model, batch_size=8)
    single = _generator(tiny_model, batch_size=1)
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=6)
    a = {s.id: s.completion for b in batched.generate(PROBLEMS, greedy) for s in b}
    b = {s.id: s.completion for b in single.generate(PROBLEMS, greedy) for s in b}
    assert a == b
