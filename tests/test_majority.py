"""Label-free self-improvement: the majority verifier, hidden labels, the pseudo-label audit and its stop rule.

Whole runs use the tiny random model (tests/conftest.py); where a test needs votes it can predict, a scripted
backend (tests/label_free_plugins.py) answers instead, and training still runs for real on the tiny model.
"""

from __future__ import annotations

import json
import secrets

import pytest

from selfplay.errors import UserError
from selfplay.files import read_json, read_jsonl
from selfplay.guards import pseudo_labels as audit
from selfplay.guards.stopping import self_consistency_ceiling
from selfplay.records import Problem, Sample
from selfplay.tasks.labels import hide_label
from selfplay.verifiers import build_verifier
from selfplay.verifiers.majority import MajorityVerifier
from selfplay.verifiers.reward import as_reward_function
from tests.conftest import run_cli, tiny_overrides, write_jsonl


def _samples(pid: str, texts: list[str]) -> list[Sample]:
    return [Sample(f"{pid}/s{k}", pid, t, 1, "stop", "m") for k, t in enumerate(texts)]


def _statuses(verdicts) -> list[str]:
    return [v.details["status"] for v in verdicts]


# -- the verifier ------------------------------------------------------------------------------------------
def test_text_majority_passes_the_agreeing_samples_and_fails_ties_and_unreadable_ones():
    v = build_verifier("majority", "contains", options={"min_agreement": 0.5})
    assert v.equal_name == "text"
    p = Problem("p", "Capital of France?", "")
    got = v.verify_many([(p, s) for s in _samples("p", [
        "Answer: Paris", "answer: the paris.", "Answer: Lyon", "I do not know", "Answer:  PARIS"])])
    assert [g.passed for g in got] == [True, True, False, False, True]
    assert _statuses(got) == ["majority", "majority", "minority", "unreadable", "majority"]
    assert got[0].details == {"majority": "Paris", "share": 0.6, "votes": 3, "samples": 5, "status": "majority"}
    # A tie for the largest class is no majority: every sample fails, and the verdicts say so.
    tie = v.verify_many([(p, s) for s in _samples("p", ["Answer: Paris", "Answer: Lyon", "nothing"])])
    assert [g.passed for g in tie] == [False, False, False]
    assert _statuses(tie) == ["tie", "tie", "unreadable"] and tie[0].details["majority"] is None


def test_min_agreement_counts_unreadable_samples_in_the_share():
    p = Problem("p", "q", "")
    texts = ["Answer: 4", "Answer: 4", "Answer: 5", "no answer here"]
    strict = MajorityVerifier(min_agreement=0.6, equal="text")
    got = strict.verify_many([(p, s) for s in _samples("p", texts)])
    assert _statuses(got) == ["below_agreement", "below_agreement", "minority", "unreadable"]
    assert not any(g.passed for g in got) and got[0].details["share"] == 0.5
    assert [g.passed for g in MajorityVerifier(min_agreement=0.5).verify_many(
        [(p, s) for s in _samples("p", texts)])] == [True, True, False, False]


def test_math_equality_groups_equal_numbers_written_differently():
    v = build_verifier("majority", "math")
    p = Problem("p", "Half of one?", "")
    got = v.verify_many([(p, s) for s in _samples("p", ["Answer: 0.50", "Answer: 1/2", "Answer: \\frac{1}{2}",
                                                           "Answer: 2", "Answer: 3"])])
    assert [g.passed for g in got] == [True, True, True, False, False] and got[0].details["votes"] == 3
    # As plain text they are three different answers and 2 and 3 tie with them: no majority at all.
    text = MajorityVerifier(equal="text").verify_many([(p, s) for s in _samples("p", ["Answer: 0.50", "Answer: 1/2"])])
    assert _statuses(text) == ["tie", "tie"]


def test_reasoning_gym_equality_uses_its_scorer_without_the_label():
    import reasoning_gym

    entry = json.loads(json.dumps(reasoning_gym.create_dataset("chain_sum", size=1, seed=3)[0], default=str))
    labelled = Problem("c", entry["question"], entry["answer"], {"entry": entry})
    hidden = hide_label(labelled)
    assert hidden.meta["entry"]["answer"] == "" and hidden.reference == ""
    v = build_verifier("majority", "reasoning_gym", options={"min_agreement": 0.5})
    assert v.equal_name == "reasoning_gym"
    # chain_sum's scorer tolerates commas and trailing decimals: "1,000.0" and "1000" are one answer.
    got = v.verify_many([(hidden, s) for s in _samples("c", ["Answer: 1,000.0", "Answer: 1000", "Answer: 999"])])
    assert [g.passed for g in got] == [True, True, False] and got[0].details["share"] == pytest.approx(2 / 3)


def test_verify_many_groups_by_problem_wherever_the_samples_sit_and_verify_alone_is_a_vote_of_one():
    v = MajorityVerifier(equal="math")
    a, b = Problem("a", "q", ""), Problem("b", "q2", "")
    said = [("a", "1"), ("b", "9"), ("a", "2"), ("b", "9"), ("a", "2"), ("b", "8")]
    items = [({"a": a, "b": b}[pid], Sample(f"{pid}/s{n // 2}", pid, f"Answer: {x}", 1, "stop", "m"))
             for n, (pid, x) in enumerate(said)]
    got = v.verify_many(items)
    assert [g.sample_id for g in got] == [s.id for _, s in items]
    assert [g.passed for g in got] == [False, True, True, True, True, False]
    alone = v.verify(a, Sample("a/s0", "a", "Answer: 1", 1, "stop", "m"))
    assert alone.passed and alone.details["share"] == 1.0


def test_bad_options_are_one_line_naming_the_field():
    with pytest.raises(UserError, match=r"^verify.options.min_agreement: a vote share from 0 to 1 \(got 1.5\)$"):
        build_verifier("majority", "math", options={"min_agreement": 1.5})
    with pytest.raises(UserError, match=r"^verify.options.equal: one of auto, math, reasoning_gym, text"):
        build_verifier("majority", "math", options={"equal": "fuzzy"})


# -- the same verifier as an online reward (TTRL), in trl's calling convention -----------------------------
def test_the_reward_adapter_scores_each_completion_by_its_own_problems_majority():
    v = build_verifier("majority", "math")
    problems = {"a": Problem("a", "What is 1 + 1?", ""), "b": Problem("b", "What is 2 + 2?", "")}
    # GRPOTrainer with num_generations=3 and two prompts per batch: each prompt's completions are consecutive, the
    # dataset's columns come as keyword lists, completions of a chat dataset are message lists.
    ids = ["a", "a", "a", "b", "b", "b", "a", "a", "a"]
    said = ["2", "2", "3", "4", "5", "4", "2", "x", "2"]
    completions = [[{"role": "assistant", "content": f"Answer: {x}" if x != "x" else "no idea"}] for x in said]
    reward = as_reward_function(v, problems)
    got = reward(prompts=[[{"role": "user", "content": problems[i].prompt}] for i in ids], completions=completions,
                 completion_ids=[[1]] * len(ids), problem_id=ids, trainer_state=None, log_extra=None, log_metric=None)
    # Problem a has 6 completions (4 say 2): its majority is 2; problem b's (2 of 3) is 4.
    assert got == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert reward.__name__ == "majority_reward"
    assert reward([], ["Answer: 4"], ["b"]) == [1.0]  # plain-text completions too


# -- the audit's pure functions ----------------------------------------------------------------------------
def _row(pid, majority, share, correct, trained=True, status="majority"):
    return {"problem_id": pid, "majority": majority, "share": share, "votes": 0, "samples": 4, "status": status,
            "correct": correct, "trained": trained}


def test_entrenchment_counts_what_became_of_the_wrong_majorities_trained_on():
    before = [_row("stay", "5", 0.75, False), _row("spread", "6", 0.5, False), _row("fix", "7", 1.0, False),
              _row("other", "8", 0.75, False), _row("right", "9", 1.0, True), _row("unsure", "1", 0.25, False),
              _row("untrained", "2", 1.0, False, trained=False), _row("tied", None, 0.0, None, status="tie")]
    after = {"stay": {"correct": False, "same": True, "earlier_share": 0.75},
             "spread": {"correct": False, "same": True, "earlier_share": 1.0},
             "fix": {"correct": True, "same": False, "earlier_share": 0.0},
             "other": {"correct": False, "same": False, "earlier_share": 0.25},
             "right": {"correct": True, "same": True, "earlier_share": 1.0},
             "unsure": {"correct": False, "same": True, "earlier_share": 1.0},
             "untrained": {"correct": False, "same": True, "earlier_share": 1.0}}
    got = audit.entrenchment(before, after, min_agreement=0.5)
    assert got == {"wrong_trained": 4, "fixed": 1, "stayed": 2, "spread": 1, "other": 1, "spread_ids": ["spread"]}


def test_accuracy_calibration_and_confidently_wrong_share():
    rows = [_row("a", "1", 1.0, True), _row("b", "2", 1.0, False), _row("c", "3", 0.75, True),
            _row("d", "4", 0.25, False, trained=False), _row("e", None, 0.0, None, status="tie"),
            _row("f", None, 0.0, None, status="unreadable")]
    acc = audit.accuracy(rows, 0.5)
    assert (acc["accuracy"], acc["confident_accuracy"], acc["trained_accuracy"]) == (0.5, pytest.approx(2 / 3),
                                                                                       pytest.approx(2 / 3))
    assert (acc["ties"], acc["unreadable"], acc["with_majority"]) == (1, 1, 4)
    assert [(b["bin"], b["problems"], b["accuracy"]) for b in audit.calibration(rows)] == [
        ("<50%", 1, 0.0), ("50-75%", 0, None), ("75-100%", 1, 1.0), ("100%", 2, 0.5)]
    held = audit.confidently_wrong(rows, 0.5)
    assert (held["problems"], held["confidently_wrong"]) == (6, 1)
    assert held["confidently_wrong_share"] == pytest.approx(1 / 6)


def test_the_self_consistency_stop_rule_needs_a_rise_over_iteration_0_that_is_still_growing():
    def rows(*shares):
        return [{"iteration": i, "heldout_confidently_wrong": s} for i, s in enumerate(shares)]

    assert self_consistency_ceiling(rows(0.10, 0.12, 0.20), 0.05)[0].startswith("self-consistency ceiling: 20.0%")
    assert self_consistency_ceiling(rows(0.10, 0.20, 0.20), 0.05) == []  # above iteration 0 but no longer growing
    assert self_consistency_ceiling(rows(0.10, 0.12, 0.14), 0.05) == []  # growing, but within the allowed rise
    assert self_consistency_ceiling(rows(0.10, 0.30), None) == []


# -- hidden labels and unlabelled files ------------------------------------------------------------------------
def test_hiding_a_label_removes_the_answer_wherever_the_problem_carries_it():
    import reasoning_gym

    entry = json.loads(json.dumps(reasoning_gym.create_dataset("leg_counting", size=1, seed=0)[0], default=str))
    p = Problem("l", entry["question"], entry["answer"], {"entry": entry, "demonstration": "w", "category": "c"})
    hidden = hide_label(p)
    assert entry["answer"] not in json.dumps(hidden.meta["entry"]["metadata"])  # total_legs goes with it
    assert hidden.meta == {"entry": {**entry, "answer": "", "metadata": {
        k: v for k, v in entry["metadata"].items() if k != "total_legs"}}, "category": "c"}
    assert hidden.prompt == p.prompt and hidden.id == p.id


def test_a_code_tasks_tests_and_solution_are_labels_too():
    from selfplay.tasks.labels import has_labels

    p = Problem("c", "Write add(a, b).", "", {"entry_point": "add", "tests": ["assert add(1, 2) == 3"],
                                              "solution_code": "def add(a, b): return a + b", "demonstration": "d"})
    assert has_labels([p]) and not has_labels([hide_label(p)])  # a code task is labelled: its tests check answers
    assert hide_label(p).meta == {"entry_point": "add"}


def test_a_jsonl_file_mixing_answered_and_unanswered_lines_is_refused_naming_the_line(tmp_path):
    from selfplay.tasks.jsonl import JsonlTask

    path = write_jsonl(tmp_path / "mix.jsonl", [{"prompt": "a", "answer": "1"}, {"prompt": "b"}])
    with pytest.raises(UserError, match=r"mix.jsonl: line 2: has no 'answer' but line 1 has one"):
        JsonlTask(str(path)).load()


# -- whole runs ----------------------------------------------------------------------------------------------
def _lf(tiny_model, data, out, name, **extra):
    base = {"verify.verifier": "majority", "task.labels": "hidden", "guards.control": "[]"}
    return tiny_overrides(tiny_model, data, out, name=name, **{**base, **extra})


def test_gold_verifiers_and_label_hungry_recipes_are_refused_with_hidden_labels(tiny_model, sums_jsonl, tmp_path):
    proc = run_cli("run", *_lf(tiny_model, sums_jsonl, tmp_path, "g", **{"verify.verifier": "auto"}))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "selfplay: error: task.labels: hidden: verify.verifier 'auto' reads the answers; use 'majority' or 'judge'"]
    proc = run_cli("run", *_lf(tiny_model, sums_jsonl, tmp_path, "s", recipe="star"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "selfplay: error: task.labels: hidden: recipe 'star' gives the answer as a hint (rationalization); set "
        "star.rationalize: false, or use recipe 'rft'"]
    assert not (tmp_path / "g").exists() and not (tmp_path / "s").exists()


@pytest.mark.e2e
def test_canary_no_hidden_label_reaches_anything_the_run_writes_but_the_label_file(tiny_model, tmp_path):
    canaries = {n: f"CANARY-{secrets.token_hex(8)}" for n in range(24)}
    data = write_jsonl(tmp_path / "canary.jsonl", [
        {"prompt": f"Say the code word number {n}.", "answer": c, "solution": f"It is {c}.", "response": f"{c}!"}
        for n, c in canaries.items()])
    out = tmp_path / "runs"
    # The backend writes into every completion what it was handed about the problem: a leaked label shows.
    proc = run_cli("run", *_lf(tiny_model, data, out, "c", iterations=2,
                               **{"generate.backend": "tests.label_free_plugins:echo_backend"}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = out / "c"
    train = read_jsonl(run / "problems" / "train.jsonl")
    labels = {row["id"]: row["reference"] for row in read_jsonl(run / "problems" / "train-labels.jsonl")}
    hidden = {labels[row["id"]] for row in train}
    assert len(hidden) == 6 and all(h.startswith("CANARY-") for h in hidden)
    assert (run / "iter-001" / "train.jsonl").stat().st_size > 0  # the run trained on its majority
    allowed = {run / "problems" / "train-labels.jsonl"}
    leaks = sorted({str(path.relative_to(run)) for path in run.rglob("*") if path.is_file() and path not in allowed
                    for c in hidden if c.encode() in path.read_bytes()})
    assert leaks == []
    assert all(row["reference"] == "" and "solution" not in row["meta"] and "demonstration" not in row["meta"]
               for row in train)
    # The audit used the hidden labels: every majority ("7") is wrong, and iteration 2 saw them stay.
    second = read_json(run / "iter-002" / "eval.json")["guards"]["pseudo_labels"]
    assert second["status"] == "alarm" and second["train"]["accuracy"] == 0.0
    assert second["entrenchment"]["wrong_trained"] == 6 and second["entrenchment"]["stayed"] == 6


@pytest.mark.e2e
def test_a_label_free_run_audits_pseudo_labels_and_counts_entrenchment(tiny_model, sums_jsonl, tmp_path):
    out = tmp_path / "runs"
    proc = run_cli("run", *_lf(tiny_model, sums_jsonl, out, "e", iterations=2, **{
        "generate.backend": "tests.label_free_plugins:voter_backend", "generate.samples_per_problem": 4,
        "stop.max_drop": "null", "stop.drop_beyond_ci": "false"}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = out / "e"
    first = read_json(run / "iter-001" / "eval.json")["guards"]["pseudo_labels"]
    assert first["train"]["accuracy"] == 0.0 and first["train"]["trained"] == 6  # the base model is wrong everywhere
    assert first["status"] == "alarm" and "training the model on its own mistakes" in first["alarms"][0]
    assert {b["bin"]: b["problems"] for b in first["calibration"]}["75-100%"] + {
        b["bin"]: b["problems"] for b in first["calibration"]}["100%"] == 6
    assert read_json(run / "iter-000" / "eval.json")["guards"]["pseudo_labels"]["heldout"][
        "confidently_wrong_share"] == 1.0
    a = [int(read_jsonl(run / "problems" / "train-labels.jsonl")[k]["meta"]["question"].split()[2]) for k in range(6)]
    second = read_json(run / "iter-002" / "eval.json")["guards"]["pseudo_labels"]
    assert second["entrenchment"] == {
        "wrong_trained": 6, "fixed": sum(x % 3 == 1 for x in a), "stayed": sum(x % 3 == 0 for x in a),
        "spread": sum(x % 3 == 0 for x in a), "other": sum(x % 3 == 2 for x in a),
        "spread_ids": second["entrenchment"]["spread_ids"]}
    assert json.loads((run / "iter-001" / "verify.json").read_text())["statuses"]["unreadable"] > 0
    report = (run / "report.html").read_text()
    assert "<h2>Pseudo-labels</h2>" in report and "Most pseudo-labels are wrong" in report
    # `selfplay eval` scores the held-out answers as the run did: by the gold checker, not by a vote of one.
    proc = run_cli("eval", str(run / "iter-002" / "model"), "--config", str(run / "config.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.rindex("}") + 1])
    assert "scored_by" not in figures and figures["greedy_accuracy"] == read_json(
        run / "iter-002" / "eval.json")["metrics"]["greedy_accuracy"]


@pytest.mark.e2e
def test_the_run_stops_at_its_self_consistency_ceiling(tiny_model, sums_jsonl, tmp_path):
    out = tmp_path / "runs"
    proc = run_cli("run", *_lf(tiny_model, sums_jsonl, out, "x", iterations=2, **{
        "generate.backend": "tests.label_free_plugins:voter_backend", "generate.options": "{script: ceiling}",
        "stop.max_drop": "null", "stop.drop_beyond_ci": "false"}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = read_json(out / "x" / "state.json")
    assert state["status"] == "stopped" and not (out / "x" / "iter-002").exists()
    assert [r.split(":")[0] for r in state["stop_reasons"]] == ["self-consistency ceiling"]
    assert "Stopped after iteration 1: self-consistency ceiling: 100.0% of held-out problems" in proc.stdout


@pytest.mark.e2e
def test_a_file_of_questions_only_runs_label_free_and_says_nothing_can_be_audited(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "questions.jsonl", [{"prompt": f"What is {a} + {a + 1}?"} for a in range(20)])
    out = tmp_path / "runs"
    args = tiny_overrides(tiny_model, data, out, name="q", **{"verify.verifier": "majority", "guards.control": "[]"})
    proc = run_cli("run", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("nothing can be audited against gold") == 1
    assert "the file has no answers, so no worked example can be shown" in proc.stdout
    run = out / "q"
    assert not (run / "problems" / "exemplar.jsonl").exists()
    ev = read_json(run / "iter-001" / "eval.json")
    assert ev["metrics"]["scored_by"] == "agreement with the model's own sampled majority (no labels)"
    assert ev["guards"]["pseudo_labels"]["status"] == "n/a"
    assert ev["guards"]["pseudo_labels"]["notes"][0] == "no labels: nothing can be audited against gold"
    assert ev["guards"]["reward_hacking"]["status"] == "n/a"
    assert "No labels: nothing can be audited against gold" in (run / "report.html").read_text()
    proc = run_cli("eval", str(run / "iter-001" / "model"), "--config", str(run / "config.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"scored_by": "agreement with the model' in proc.stdout  # no labels: the model's own sampled majority
    # The gold-reading default is refused in one line: there is nothing for it to read.
    proc = run_cli("run", *tiny_overrides(tiny_model, data, out, name="q2", **{"verify.verifier": "auto"}))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "selfplay: error: task jsonl:questions.jsonl has no answers: verify.verifier 'auto' reads them; use "
        "'majority' or 'judge'"]


def test_the_verify_stage_hands_a_group_verifier_whole_problems_and_rejudges_a_half_judged_one(tmp_path):
    from selfplay.files import atomic_write_jsonl
    from selfplay.loop import stages
    from selfplay.records import to_dict

    problems = [Problem(p, "q", "") for p in ("a", "b", "c")]
    said = {"a": ["1", "1", "2"], "b": ["5", "6", "6"], "c": ["7", "8", "9"]}
    samples = [s for p in problems for s in _samples(p.id, [f"Answer: {x}" for x in said[p.id]])]
    atomic_write_jsonl(tmp_path / "samples.jsonl", (to_dict(s) for s in samples))
    # Killed after judging a/s0 alone (a wrong verdict of one): the resumed stage judges problem a again whole.
    v = MajorityVerifier(equal="text")
    atomic_write_jsonl(tmp_path / "verdicts.partial.jsonl", [to_dict(v.verify(problems[0], samples[0])) | {
        "passed": False}])
    summary = stages.verify(tmp_path, problems, v, batch_size=2)
    got = {row["sample_id"]: row["passed"] for row in read_jsonl(tmp_path / "verdicts.jsonl")}
    assert got == {"a/s0": True, "a/s1": True, "a/s2": False, "b/s0": False, "b/s1": True, "b/s2": True,
                   "c/s0": False, "c/s1": False, "c/s2": False}
    assert summary["statuses"] == {"majority": 4, "minority": 2, "tie": 3} and summary["resumed_samples"] == 0
