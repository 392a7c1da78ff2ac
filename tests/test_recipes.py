"""STaR, SPIN, SFT on demonstrations and distillation from a local teacher: their pieces, then whole CLI runs on
the tiny model, each with a SIGKILL and a resume that redoes no finished stage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from selfplay.config import validate
from selfplay.errors import UserError
from selfplay.files import read_jsonl
from selfplay.recipes.spin import spin_pairs
from selfplay.recipes.star import echoes, hinted, mentions, rationalizations
from selfplay.records import Problem, Sample, Verdict
from selfplay.tasks import build_task
from selfplay.tasks.reasoning_gym import demonstration, worked_steps
from selfplay.verifiers import build_verifier
from tests.conftest import run_cli, tiny_overrides, write_jsonl
from tests.test_resume import _kill_when, _line_count, _start


# -- pieces ------------------------------------------------------------------------------------------
def test_worked_steps_follow_the_order_of_operations():
    assert worked_steps("3 + 4 * 2") == "3 + 4 * 2 = 3 + 8 = 11"
    assert worked_steps("5 - 3 - 6") == "5 - 3 - 6 = 2 - 6 = -4"
    assert worked_steps("1 - 2 * 3 * 4 + 5") == "1 - 2 * 3 * 4 + 5 = 1 - 6 * 4 + 5 = 1 - 24 + 5 = -23 + 5 = -18"
    assert worked_steps("-15 + 4") == "-15 + 4 = -11"
    for unsupported in ("8 / 2", "( 1 + 2 ) * 3", "-( 3 )", "7"):
        assert worked_steps(unsupported) is None
    assert demonstration({"expression": "2 + 2"}, "5") is None  # never a demonstration that disagrees with gold


@pytest.mark.parametrize("dataset, params", [
    ("basic_arithmetic", {"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 1,
                          "operators": ["+", "-", "*"], "allow_parentheses": False, "allow_negation": False}),
    ("chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}),
])
def test_arithmetic_demonstrations_pass_the_tasks_own_checker(dataset, params, capsys):
    cfg = validate({"task": {"dataset": dataset, "train_size": 40, "eval_size": 10, "params": params}}, "t")
    task = build_task(cfg.task)
    split = task.split()
    if dataset == "basic_arithmetic":  # reasoning-gym answers '4 + 2 - 2 * 10' with 40 here: those are left out
        assert "generated problems whose reference answer ignores the order of operations" in capsys.readouterr().out
    checker = build_verifier("auto", task.default_verifier)
    for p in split.train:
        demo = p.meta["demonstration"]
        assert demo.endswith(f"Answer: {p.reference}")
        sample = Sample(f"{p.id}/s0", p.id, demo, 10, "stop", "demo")
        assert checker.verify(p, sample).passed, demo


def test_a_hinted_problem_carries_the_answer_under_its_own_id():
    p = Problem("p1", "What is 2 + 3?\nGive your final answer", "5")
    h = hinted(p, "Hint: the correct answer is {answer}.")
    assert h.id == "p1#hinted" and h.prompt.endswith("Hint: the correct answer is 5.") and h.reference == "5"
    turns = Problem("p2", "", "9", messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                              {"role": "user", "content": "What is 4 + 5?"}])
    assert hinted(turns, "Hint: {answer}").messages[-1]["content"] == "What is 4 + 5?\nHint: 9"
    assert turns.messages[-1]["content"] == "What is 4 + 5?"  # the original is not changed


def test_rationalizations_train_without_the_hint_and_drop_ones_that_cite_it():
    plain = [Problem("p1", "What is 2 + 3?", "5"), Problem("p2", "What is 1 + 1?", "2")]
    asked = [hinted(p, "Hint: the correct answer is {answer}.") for p in plain]
    samples = [
        Sample("p1#hinted/s0", "p1#hinted", "2 + 3 = 5\nAnswer: 5", 8, "stop", "m"),
        Sample("p1#hinted/s1", "p1#hinted", "The hint says 5.\nAnswer: 5", 8, "stop", "m"),
        Sample("p2#hinted/s0", "p2#hinted", "As stated, 2.\nAnswer: 2", 8, "stop", "m"),
        Sample("p2#hinted/s1", "p2#hinted", "Answer: 3", 8, "stop", "m"),
    ]
    verdicts = [Verdict(s.id, s.problem_id, 1.0, not s.completion.endswith("3"), None, "v") for s in samples]
    examples, stats = rationalizations(plain, samples, verdicts, iteration=1, max_per_problem=2,
                                       drop_mentions=["hint", "as stated"])
    assert [(e.problem_id, e.completion) for e in examples] == [("p1", "2 + 3 = 5\nAnswer: 5")]
    assert examples[0].prompt == "What is 2 + 3?" and "Hint" not in examples[0].prompt
    assert examples[0].sample_id == "p1#hinted/s0"  # the lineage still names the hinted sample
    assert stats["dropped_mentioning_hint"] == 2 and stats["problems_reached"] == 1
    assert asked[0].id != plain[0].id
    assert mentions("HINT: yes", ["hint"]) and not mentions("hinting", ["hint"])
    # What the embedded model wrote when hinted: both copy the hint's wording, and are dropped.
    hint = "Hint: the correct answer is {answer}. Show how to reach it."
    copied = [Sample("p1#hinted/s2", "p1#hinted", "The correct answer is 5, and the step to reach it is 2 + 3.", 9,
                     "stop", "m"),
              Sample("p1#hinted/s3", "p1#hinted", "Show how to reach it on the last line with: 5.", 9, "stop", "m")]
    assert all(echoes(s.completion, hint) for s in copied) and not echoes("2 + 3 = 5, so the answer is 5.", hint)
    examples, stats = rationalizations(plain, samples[:1] + copied, [Verdict(s.id, s.problem_id, 1.0, True, None, "v")
                                       for s in samples[:1] + copied], iteration=1, max_per_problem=3,
                                       drop_mentions=[], hint=hint)
    assert [e.sample_id for e in examples] == ["p1#hinted/s0"] and stats["dropped_mentioning_hint"] == 2


def test_spin_pairs_choose_the_demonstration_and_reject_the_models_answer():
    p = Problem("p1", "What is 2 + 3?", "5", meta={"demonstration": "2 + 3 = 5\nAnswer: 5"})
    samples = [Sample("p1/s0", "p1", "Answer: 6", 3, "stop", "m"), Sample("p1/s1", "p1", "2 + 3 = 5\n Answer: 5",
                                                                         8, "stop", "m"),
               Sample("p1/s2", "p1", "Answer: 5", 3, "stop", "m")]
    verdicts = [Verdict(s.id, "p1", float(s.completion.endswith("5")), s.completion.endswith("5"), None, "v")
                for s in samples]
    pairs, stats = spin_pairs([p], samples, verdicts, iteration=2)
    assert [(x.chosen, x.rejected) for x in pairs] == [("2 + 3 = 5\nAnswer: 5", "Answer: 6"),
                                                       ("2 + 3 = 5\nAnswer: 5", "Answer: 5")]
    assert stats["identical_to_demonstration"] == 1 and stats["rejected_correct"] == 1
    assert pairs[0].chosen_sample_id == "p1/demonstration" and pairs[0].rejected_sample_id == "p1/s0"


def test_recipe_settings_are_checked_before_a_run():
    with pytest.raises(UserError, match="train.init_from: SPIN trains from"):
        validate({"recipe": "spin"}, "c.yaml")
    with pytest.raises(UserError, match="teacher.model: required by recipe 'distill'"):
        validate({"recipe": "distill"}, "c.yaml")
    with pytest.raises(UserError, match=r"star.hint: must contain \{answer\}"):
        validate({"star": {"hint": "Think harder."}}, "c.yaml")


# -- whole runs ----------------------------------------------------------------------------------------
@pytest.fixture
def demos_jsonl(tmp_path) -> Path:
    rows = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b), "response": f"{a} + {b} = {a + b}\nAnswer: {a + b}"}
            for a in range(6) for b in range(5)]
    return write_jsonl(tmp_path / "demos.jsonl", rows)


def _run(*args: str) -> None:
    proc = run_cli("run", *args, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


@pytest.mark.e2e
def test_star_rationalizes_unsolved_problems_trains_without_the_hint_and_resumes_after_a_kill(
        tiny_model, sums_jsonl, tmp_path):
    args = tiny_overrides(tiny_model, sums_jsonl, tmp_path, name="star", recipe="star", **{
        "verify.verifier": "tests.plugins:PassHinted", "task.train_size": 20, "star.samples": 2,
        "generate.batch_size": 2, "generate.max_new_tokens": 24, "eval.samples": 0})
    run = tmp_path / "star"
    it1 = run / "iter-001"
    partial = it1 / "rationalize-samples.partial.jsonl"
    _kill_when(_start("run", *args), lambda: _line_count(partial) >= 4)
    plain = (it1 / "samples.jsonl").read_bytes()
    stamp = (it1 / "generate.json").stat().st_mtime_ns
    proc = run_cli("resume", str(run), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rationalize-samples.jsonl: resuming;" in proc.stdout
    # The plain samples were not drawn again, and no hinted sample is doubled.
    assert (it1 / "samples.jsonl").read_bytes() == plain and (it1 / "generate.json").stat().st_mtime_ns == stamp
    ids = [r["id"] for r in read_jsonl(it1 / "rationalize-samples.jsonl")]
    assert len(ids) == len(set(ids)) == 40  # no plain sample passed, so every problem was asked again, twice

    problems = {p["id"]: p for p in read_jsonl(run / "problems" / "train.jsonl")}
    train = read_jsonl(it1 / "train.jsonl")
    assert train and {e["problem_id"] for e in train} <= set(problems)
    for e in train:  # the hint never reaches a training example
        assert e["prompt"] == problems[e["problem_id"]]["prompt"] and "Hint" not in e["prompt"]
        assert e["sample_id"].startswith(e["problem_id"] + "#hinted/")
    summary = json.loads((it1 / "filter.json").read_text())
    assert summary["unsolved"] == len(problems) and summary["rationalized"] == len(train)
    metrics = read_jsonl(run / "metrics.jsonl")
    assert "rationalize" in metrics[1]["seconds"] and "rationalize-verify" in metrics[1]["seconds"]


@pytest.mark.e2e
def test_spin_runs_dpo_against_the_previous_iteration_and_survives_a_kill_in_training(
        tiny_model, demos_jsonl, tmp_path):
    args = tiny_overrides(tiny_model, demos_jsonl, tmp_path, name="spin", recipe="spin", iterations=2, **{
        "train.init_from": "previous", "generate.samples_per_problem": 1, "generate.max_new_tokens": 8,
        "verify.verifier": "math", "train.batch_size": 1, "train.checkpoint_every": 2, "eval.samples": 0})
    run = tmp_path / "spin"
    trainer_dir = run / "iter-001" / "trainer"
    _kill_when(_start("run", *args), lambda: any(trainer_dir.glob("checkpoint-*/trainer_state.json")))
    proc = run_cli("resume", str(run), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    problems = {p["id"]: p for p in read_jsonl(run / "problems" / "train.jsonl")}
    for i in (1, 2):
        it = run / f"iter-{i:03d}"
        pairs = read_jsonl(it / "pairs.jsonl")
        samples = {s["id"]: s for s in read_jsonl(it / "samples.jsonl")}
        assert len(pairs) == len(samples) == len(problems)
        for p in pairs:
            assert p["chosen"] == problems[p["problem_id"]]["meta"]["demonstration"]
            assert p["rejected"] == samples[p["rejected_sample_id"]]["completion"]
        trained = json.loads((it / "train.json").read_text())
        assert trained["first_loss"] == pytest.approx(math.log(2), abs=1e-3)  # DPO starts at its reference
    assert json.loads((run / "iter-001" / "train.json").read_text())["resumed_from"]
    # Iteration 2 trains from iteration 1's model, and DPO's reference is the model it starts from (with LoRA,
    # the adapter switched off: tests/test_dpo.py), so SPIN's reference is the previous iteration.
    assert json.loads((run / "iter-002" / "train.json").read_text())["init_from"].endswith("iter-001/model")


def test_spin_and_sft_refuse_a_task_without_demonstrations(tiny_model, sums_jsonl, tmp_path):
    for recipe, extra in (("spin", {"train.init_from": "previous"}), ("sft", {})):
        proc = run_cli("run", *tiny_overrides(tiny_model, sums_jsonl, tmp_path, name=recipe, recipe=recipe, **extra),
                       timeout=600)
        assert proc.returncode == 2
        err = proc.stderr.strip().splitlines()
        assert len(err) == 1 and f"recipe '{recipe}': 6 of 6 training problems" in err[0] and "'response'" in err[0]


@pytest.mark.e2e
def test_sft_trains_on_the_demonstrations_without_sampling_and_resumes_after_a_kill(tiny_model, demos_jsonl,
                                                                                   tmp_path):
    args = tiny_overrides(tiny_model, demos_jsonl, tmp_path, name="sft", recipe="sft", **{
        "eval.samples": 0, "train.batch_size": 1, "train.epochs": 2, "train.checkpoint_every": 2})
    it1 = tmp_path / "sft" / "iter-001"
    _kill_when(_start("run", *args), lambda: any((it1 / "trainer").glob("checkpoint-*/trainer_state.json")))
    proc = run_cli("resume", str(tmp_path / "sft"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((it1 / "train.json").read_text())
    assert "checkpoint-" in summary["resumed_from"] and summary["steps"] == 12  # 6 examples x 2 epochs, not redone
    train = read_jsonl(it1 / "train.jsonl")
    problems = {p["id"]: p for p in read_jsonl(tmp_path / "sft" / "problems" / "train.jsonl")}
    assert len(train) == len(problems) == 6 and not (it1 / "samples.jsonl").exists()
    assert all(e["completion"] == problems[e["problem_id"]]["meta"]["demonstration"] for e in train)
    assert summary["examples"] == 6


@pytest.mark.e2e
def test_distillation_from_a_local_teacher_keeps_its_verified_answers(tiny_model, sums_jsonl, tmp_path):
    args = tiny_overrides(tiny_model, sums_jsonl, tmp_path, name="distill", recipe="distill", **{
        "teacher.model": str(tiny_model), "teacher.temperature": 0.9, "teacher.samples": 3,
        "generate.batch_size": 2, "task.train_size": 12, "generate.max_new_tokens": 16, "eval.samples": 0})
    partial = tmp_path / "distill" / "iter-001" / "samples.partial.jsonl"
    _kill_when(_start("run", *args), lambda: _line_count(partial) >= 6)
    proc = run_cli("resume", str(tmp_path / "distill"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    it1 = tmp_path / "distill" / "iter-001"
    samples = read_jsonl(it1 / "samples.jsonl")
    assert len(samples) == 36 and len({s["id"] for s in samples}) == 36
    assert json.loads((it1 / "generate.json").read_text())["model"] == str(tiny_model)
    train = read_jsonl(it1 / "train.jsonl")
    assert {e["sample_id"] for e in train} == {s["id"] for s in samples if s["id"].endswith("/s0")}  # PassFirst
    assert json.loads((it1 / "filter.json").read_text())["teacher_pass_rate"] == pytest.approx(1 / 3)


@pytest.mark.e2e
def test_a_teacher_that_is_the_students_own_folder_is_not_closed_under_the_run(tiny_model, sums_jsonl, tmp_path):
    # The pool that holds the student also held the teacher: closing it after the teacher's turn broke the
    # evaluation that followed (AttributeError in the backend).
    args = tiny_overrides(tiny_model, sums_jsonl, tmp_path, name="self", recipe="distill", **{
        "teacher.model": str(tiny_model), "eval.samples": 0})
    proc = run_cli("run", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "self" / "state.json").read_text())["status"] == "finished"


def test_a_missing_local_teacher_is_one_line_before_anything_is_written(tiny_model, sums_jsonl, tmp_path):
    proc = run_cli("run", *tiny_overrides(tiny_model, sums_jsonl, tmp_path, name="d", recipe="distill",
                                          **{"teacher.model": str(tmp_path / "nope")}))
    assert proc.returncode == 2 and proc.stderr.strip().startswith("selfplay: error: teacher.model: ")
    assert not (tmp_path / "d").exists()


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_validates_and_names_a_known_recipe(name):
    from selfplay.config import load_config
    from selfplay.recipes import RECIPES

    cfg = load_config(CONFIGS / name)
    assert cfg.recipe in RECIPES and cfg.name == name.removesuffix(".yaml")


def test_the_audit_judges_what_each_record_trains_on_under_its_own_problem():
    from selfplay.loop.evaluation import trained_texts
    from selfplay.records import Example, Pair

    rows = [{"id": "p1#hinted/s0", "problem_id": "p1#hinted", "completion": "2 + 3 = 5", "num_tokens": 5,
             "finish_reason": "stop", "model": "m"}]
    records = [
        Example("e1", "p1", "p1#hinted/s0", "What is 2 + 3?", "2 + 3 = 5", 1),  # a STaR rationalization
        Pair("x", "p2", "q", "demo", "own", "p2/demonstration", "p2/s0", 1.0, 0.0, 1),  # SPIN: never sampled
        Example("e3", "elsewhere", "z/s0", "q", "t", 1),  # not a training problem of this run
    ]
    got = trained_texts(records, rows, {"p1", "p2"})
    assert [(s.id, s.problem_id, s.completion, s.model) for s in got] == [
        ("p1#hinted/s0", "p1", "2 + 3 = 5", "m"), ("p2/demonstration", "p2", "demo", "training record")]


def test_star_refuses_problems_without_a_reference_and_the_teacher_greedy_with_several_samples():
    from selfplay.recipes import CHECKS

    cfg = validate({"recipe": "star"}, "c.yaml")
    task = type("T", (), {"name": "prompts"})()
    with pytest.raises(UserError, match=r"recipe 'star': 1 of 2 training problems of task prompts have no reference"):
        CHECKS["star"](cfg, task, [Problem("a", "q", "1"), Problem("b", "q2", " ")])
    plain_rft = validate({"recipe": "star", "star": {"rationalize": False}}, "c.yaml")
    CHECKS["star"](plain_rft, task, [Problem("b", "q", "")])  # no hint asked for, nothing to refuse
    with pytest.raises(UserError, match="teacher.samples: 3 answers at teacher.temperature 0"):
        validate({"teacher": {"samples": 3}}, "c.yaml")


def test_a_run_refuses_a_fixed_openai_server_before_anything_is_written(tiny_model, sums_jsonl, tmp_path):
    proc = run_cli("run", *tiny_overrides(tiny_model, sums_jsonl, tmp_path, name="o", **{
        "generate.backend": "openai", "generate.options": "{base_url: 'http://127.0.0.1:9/v1'}"}))
    assert proc.returncode == 2 and proc.stderr.strip().startswith(
        "selfplay: error: generate.options.base_url: a server at a fixed URL serves one model")
    assert not (tmp_path / "o").exists()
