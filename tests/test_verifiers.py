import pytest

from selfplay.errors import UserError
from selfplay.records import Problem, Sample
from selfplay.verifiers import build_verifier, extract_answer


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3 + 4 = 7\nAnswer: 7", "7"),
        ("Answer: 5\nwait, no.\nAnswer: **-12**.", "-12"),
        ("The answer: 9", "9"),
        ("so the result is \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("The answer to the problem is 14.", "14"),
        ("The final answer to the arithmetic problem is 96 + 60 = 156.", "156"),
        ("12 + 5 - 3 = 14\n\nThis is the final result.", "14"),
        ("It costs 1,250 dollars", "1250"),
        ("no final line here", None),
        ("Answer:   ", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_strict_extraction_takes_only_the_stated_formats():
    assert extract_answer("12 + 5 - 3 = 14", strict=True) is None
    assert extract_answer("work\nAnswer: 14", strict=True) == "14"


def _sample(text: str) -> Sample:
    return Sample("p/s0", "p", text, 3, "stop", "m")


def test_reasoning_gym_verifier_uses_the_dataset_scorer():
    import reasoning_gym

    entry = reasoning_gym.create_dataset("chain_sum", size=1, seed=3)[0]
    problem = Problem("p", "q", entry["answer"], {"entry": entry})
    v = build_verifier("auto", "reasoning_gym")
    good = v.verify(problem, _sample(f"Answer: {entry['answer']}"))
    bad = v.verify(problem, _sample(f"Answer: {int(entry['answer']) + 1}"))
    bare = v.verify(problem, _sample(f"The sum is {entry['answer']}"))
    strict = build_verifier("auto", "reasoning_gym", strict_format=True)
    unformatted = strict.verify(problem, _sample(f"The sum is {entry['answer']}"))
    assert (good.passed, bad.passed, bare.passed, unformatted.passed) == (True, False, True, False)
    assert good.verifier == "reasoning_gym" and unformatted.answer is None


def test_math_verifier_accepts_equivalent_forms():
    v = build_verifier("math", "reasoning_gym")
    problem = Problem("p", "q", "0.5", {})
    assert v.verify(problem, _sample("Answer: 1/2")).passed
    assert v.verify(problem, _sample("Answer: $\\frac{1}{2}$")).passed
    assert not v.verify(problem, _sample("Answer: 0.6")).passed
    assert v.verify(Problem("p", "q", "Paris", {}), _sample("Answer: paris")).passed


def test_unknown_verifier_is_a_clear_error():
    with pytest.raises(UserError, match="verify.verifier: unknown 'oracle'; built-ins are .*"):
        build_verifier("oracle", "math")
    with pytest.raises(UserError, match="cannot import module 'nope'"):
        build_verifier("nope:thing", "math")


def test_contains_verifier_for_short_factual_answers():
    from selfplay.records import Problem, Sample
    from selfplay.verifiers import build_verifier

    v = build_verifier("contains", "math")
    p = Problem("q", "What is the capital of France?", "Paris")

    def check(text):
        return v.verify(p, Sample("q/s0", "q", text, 5, "stop", "m")).passed

    assert check("The capital of France is Paris.")
    assert check("I think it is Lyon.\nAnswer: paris")  # an Answer line wins over the first line
    assert not check("The capital of France is Lyon.\nParis is in Texas too.")  # only the stated answer counts
    assert not check("Parisian cafes are nice.")  # whole words only
    assert not check("")
