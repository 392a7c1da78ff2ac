"""People in the loop without a browser: the blind human evaluation inside a real run, its stop rule, the
preference rows it writes, how people's pairs join the AI's, and the first-decision-stands rule under a race."""

from __future__ import annotations

import json
import threading

import pytest

from selfplay.config import StopConfig, load_config
from selfplay.errors import UserError
from selfplay.files import create_json_once, read_jsonl
from selfplay.filters.human import combine, weigh_pairs
from selfplay.guards.stopping import decide
from selfplay.loop import human_eval, review
from selfplay.preferences import read_pairs, same_pair, train_rm
from selfplay.records import Pair
from selfplay.results import GuardResult
from tests.conftest import run_cli, tiny_overrides
from tests.test_resume import _wait_until
from tests.test_review import _start, _wait_for


def human_run_args(tiny_model, sums_jsonl, tmp_path, **extra):
    """A tiny RFT run that pauses for review and then for a blind evaluation of 4 pairs."""
    return tiny_overrides(tiny_model, sums_jsonl, tmp_path, **{
        "review.every": 1, "review.poll_seconds": 0.2, "review.sample_size": 3, "review.human_eval": 1,
        "review.human_eval_size": 4, "task.eval_size": 10, "train.learning_rate": 0.02, "train.epochs": 2,
        "generate.max_new_tokens": 8, "eval.max_new_tokens": 8, **extra})


@pytest.mark.e2e
def test_blind_evaluation_in_a_run_reaches_eval_json_and_stops_the_run(tiny_model, sums_jsonl, tmp_path):
    proc = _start(["run", *human_run_args(tiny_model, sums_jsonl, tmp_path, **{"stop.min_human_win_rate": 0.5})])
    run = tmp_path / "t"
    it = run / "iter-001"
    try:
        _wait_for(it / review.REQUEST, proc)
        review.decide(run, "approved", who="tester")
        _wait_for(it / human_eval.REQUEST, proc)
        request = json.loads((it / human_eval.REQUEST).read_text())
        assert len(request["pairs"]) == 4, request  # the tiny model's answers changed on at least 4 of 10 prompts
        assert "new" not in json.dumps(request["pairs"])  # the request does not say which side is whose
        assert human_eval.waiting(run) == it
        prog = json.loads((run / "progress.json").read_text())  # what the app's progress bars read
        assert (prog["iteration"], prog["stage"], prog["unit"]) == (1, "eval", "sample")
        assert prog["done"] == prog["total"] > 0
        key = json.loads((it / human_eval.KEY).read_text())["pairs"]
        # A person who prefers the old model every time: the new side loses each pair. Two verdicts, then the
        # run is killed (SIGKILL) while it waits; resumed, it comes back to the same pairs and keeps both.
        old_sides = {p["id"]: "right" if key[p["id"]]["new"] == "left" else "left" for p in request["pairs"]}
        for pair in request["pairs"][:2]:
            human_eval.vote(it, pair["id"], old_sides[pair["id"]], "alice", "the first model's answer is shorter")
        with pytest.raises(UserError, match="already judged .* the first verdict stands"):
            human_eval.vote(it, request["pairs"][0]["id"], "tie", "bob")
        proc.kill()
        proc.communicate()
        proc = _start(["resume", str(run)])
        resumed = proc

        def back_at_the_wait() -> bool:
            return _held(run, resumed) and "waiting for human evaluation" in (run / "state.json").read_text()

        _wait_until(proc, back_at_the_wait, poll=0.2, what="the blind evaluation's wait")
        assert json.loads((it / human_eval.REQUEST).read_text()) == request and len(human_eval.votes(it)) == 2
        for pair in request["pairs"][2:]:
            human_eval.vote(it, pair["id"], old_sides[pair["id"]], "alice")
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    found = json.loads((it / "eval.json").read_text())["guards"]["human_eval"]
    assert (found["compared"], found["wins"], found["losses"], found["win_rate"]) == (4, 0, 4, 0.0)
    assert found["ci95"][0] == 0.0 and 0.4 < found["ci95"][1] < 0.6  # Wilson at 0 of 4
    assert found["who"] == ["alice"]
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "stopped"
    assert any("people preferred this iteration's answers 0%" in r for r in state["stop_reasons"])
    rows = read_jsonl(run / human_eval.PREFERENCES)
    assert len(rows) == 4 and {r["who"] for r in rows} == {"alice"} and {r["split"] for r in rows} == {"heldout"}
    old = {s["problem_id"]: s["completion"] for s in read_jsonl(run / "iter-000" / "eval_samples.jsonl")}
    assert all(r["chosen"] == old[r["problem_id"]] for r in rows)  # the person's choice, not the new model's
    metrics = read_jsonl(run / "metrics.jsonl")
    assert metrics[-1]["human/win_rate"] == 0.0
    report = run_cli("report", str(run))
    page = (run / "report.html").read_text()
    assert report.returncode == 0 and "People (blind evaluation)" in page and "0 / 0 / 4" in page


def _held(run, proc) -> bool:
    """The resumed process holds the run (its pid in the lock file): the state it shows is its own."""
    return (run / ".lock").read_text().strip() == str(proc.pid)


def _pair(pid: str) -> Pair:
    return Pair(pid, "p", "q", "good", "bad", f"{pid}/s0", f"{pid}/s1", 1.0, 0.0, 1)


def test_people_flip_and_weigh_training_pairs():
    records = [_pair("a"), _pair("b"), _pair("c")]
    out, stats = weigh_pairs(records, confirmed={"a"}, flipped={"b"}, weight=3)
    by_id = {}
    for r in out:
        by_id.setdefault(r.id.split("+")[0], []).append(r)
    assert [r.chosen for r in by_id["a"]] == ["good"] * 3  # confirmed: three times, as the AI ordered it
    assert [(r.chosen, r.rejected) for r in by_id["b"]] == [("bad", "good")] * 3  # flipped: the person's order
    assert by_id["b"][0].chosen_sample_id == "b/s1"
    assert len(by_id["c"]) == 1  # not shown to a person: once
    assert stats == {"human_pairs": 2, "flipped": 1, "human_weight": 3}


def test_human_rows_join_ai_rows_for_a_reward_model(tmp_path, tiny_model):
    """A person's order replaces the AI's on the same two answers, and counts `--human-weight` times."""
    ai = [{"prompt": f"What is {a} + 1?", "chosen": str(a + 1), "rejected": str(a + 2)} for a in range(8)]
    human = [{"prompt": "What is 0 + 1?", "chosen": "2", "rejected": "1", "who": "alice", "when": "t"},
             {"prompt": "Name a colour.", "chosen": "blue", "rejected": "seven", "who": "bob", "when": "t"}]
    (tmp_path / "ai.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ai))
    (tmp_path / "human.jsonl").write_text("".join(json.dumps(r) + "\n" for r in human))
    out = tmp_path / "rm"
    cfg = load_config(None, [f"model.path={tiny_model}", "train.epochs=1", "train.batch_size=4"])
    train_rm(tmp_path / "ai.jsonl", out, cfg, heldout=0.0, human_path=tmp_path / "human.jsonl", human_weight=3)
    figures = json.loads((out / "rm_eval.json").read_text())
    assert figures["human_pairs"] == 2 and figures["ai_pairs_replaced_by_people"] == 1
    assert figures["pairs"] == 9  # 7 AI pairs left + the 2 people's, before weighting
    assert figures["trained_rows"] == 7 + 2 * 3  # each person's pair three times


def test_disagreement_between_people_gold_and_judge():
    def people(rate, lo, hi):
        return GuardResult("ok", figures={"win_rate": rate, "ci95": [lo, hi], "compared": 10, "against": 0})

    # People clearly worse; gold's interval is above the reference's accuracy; the judge wins 40 of 50.
    found = human_eval.disagreement(people(0.1, 0.02, 0.4), gold=(0.55, 0.75, 0.4), judge=(0.8, 50))
    assert found.status == "alarm" and len(found.alarms) == 2 and "reward hacking" in found.alarms[0]
    assert found.figures["directions"] == {"people": "worse", "gold": "better", "judge": "better"}
    found = human_eval.disagreement(people(0.9, 0.6, 0.98), gold=(0.1, 0.3, 0.5), judge=None)
    assert found.status == "note" and not found.alarms and "gold says worse" in found.notes[0]
    assert human_eval.disagreement(people(0.9, 0.6, 0.98), gold=(0.6, 0.8, 0.5), judge=(0.7, 100)).status == "ok"
    # An interval that holds 50% says nothing: 1 win in 4 against a gold gain is no alarm.
    found = human_eval.disagreement(people(0.25, 0.05, 0.7), gold=(0.55, 0.75, 0.4), judge=(0.51, 8))
    assert found.status == "ok" and found.figures["directions"] == {
        "people": "inconclusive", "gold": "better", "judge": "inconclusive"}


def test_an_iteration_people_reject_stops_the_run_and_is_never_the_best():
    cfg = StopConfig(min_human_win_rate=0.5)
    rows = [{"iteration": 0, "greedy_accuracy": 0.3, "greedy_ci95": [0.2, 0.4], "control": {}},
            {"iteration": 1, "greedy_accuracy": 0.6, "greedy_ci95": [0.5, 0.7], "control": {},
             "human_win_rate": 0.1, "human_win_rate_ci95": [0.02, 0.4]}]
    decision = decide(rows, cfg, max_iterations=3)
    assert decision.action == "stop" and decision.best_iteration == 0  # gold rose, people said worse
    assert "people preferred this iteration's answers 10%" in decision.reasons[0]
    rolled = decide(rows, StopConfig(min_human_win_rate=0.5, on_degrade="rollback"), max_iterations=3)
    assert rolled.action == "rollback" and rolled.best_iteration == 0
    rows[1]["human_win_rate_ci95"] = [0.02, 0.6]  # a few pairs: the interval holds 50%, so no stop
    assert decide(rows, cfg, max_iterations=3).action == "continue"
    assert decide(rows, StopConfig(min_human_win_rate=0.5, human_beyond_ci=False), 3).action == "stop"


def test_first_of_two_racing_writers_stands(tmp_path):
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def write(n: int) -> None:
        barrier.wait()
        results.append(create_json_once(tmp_path / "decision.json", {"writer": n}))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    winner = json.loads((tmp_path / "decision.json").read_text())["writer"]
    assert results[[i for i, r in enumerate(results) if r][0]] and isinstance(winner, int)
    assert [p.name for p in tmp_path.iterdir()] == ["decision.json"]  # no temporary file left behind


def test_vote_refuses_bad_input(tmp_path):
    it = tmp_path / "run" / "iter-001"
    it.mkdir(parents=True)
    with pytest.raises(UserError, match="no blind evaluation was asked for"):
        human_eval.vote(it, "h000", "left", "a")
    (it / human_eval.REQUEST).write_text(json.dumps({"iteration": 1, "against": 0, "pairs": [
        {"id": "h000", "problem_id": "p", "prompt": "q", "left": "x", "right": "y"}]}))
    with pytest.raises(UserError, match="no pair '../../etc'"):
        human_eval.vote(it, "../../etc", "left", "a")
    with pytest.raises(UserError, match="choice: 'middle' is not one of left, right, tie"):
        human_eval.vote(it, "h000", "middle", "a")
    assert human_eval.vote(it, "h000", "tie", "  a\nb  ") == "iter-001: pair h000: tie"
    assert human_eval.votes(it)["h000"]["who"] == "a b"


@pytest.mark.e2e
def test_pairs_a_person_flips_or_keeps_in_review_train_as_theirs(tiny_model, tmp_path):
    """SPIN offers its pairs for review: one flipped, one rejected, one confirmed; DPO trains the person's order,
    the person's two pairs three times each, and both become rows of human-preferences.jsonl that replace the
    same AI pairs when a reward model trains on both."""
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps({"prompt": f"What is {a} + {b}?", "answer": str(a + b),
                                         "response": f"{a} + {b} = {a + b}\nAnswer: {a + b}"}) + "\n"
                             for a in range(6) for b in range(5)))
    args = tiny_overrides(tiny_model, demos, tmp_path, name="spin", recipe="spin", **{
        "train.init_from": "previous", "generate.samples_per_problem": 1, "verify.verifier": "math",
        "train.batch_size": 2, "eval.samples": 0,
        "review.every": 1, "review.poll_seconds": 0.2, "review.sample_size": 3, "review.human_weight": 3})
    proc = _start(["run", *args])
    run = tmp_path / "spin"
    it = run / "iter-001"
    try:
        _wait_for(it / review.REQUEST, proc)
        shown = json.loads((it / review.REQUEST).read_text())["shown"]
        flipped, rejected, kept = (ex["id"] for ex in shown)
        done = run_cli("approve", str(run), "--flip", flipped, "--reject", rejected, "--confirm", kept)
        assert done.returncode == 0 and "1 pair(s) flipped, 1 pair(s) confirmed" in done.stdout, done.stderr
        out, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    train = json.loads((it / "train.json").read_text())
    assert (train["human_pairs"], train["flipped"], train["human_weight"]) == (2, 1, 3)
    assert train["examples"] == 5 + 2 * 2  # 6 pairs less the rejected one, the person's two counted 3 times
    rows = {r["id"]: r for r in read_jsonl(run / human_eval.PREFERENCES)}
    assert set(rows) == {flipped, kept} and {r["source"] for r in rows.values()} == {"review"}
    by_id = {ex["id"]: ex for ex in shown}
    assert rows[flipped]["chosen"] == by_id[flipped]["rejected"] and rows[flipped]["flipped"]  # the person's order
    assert rows[kept]["chosen"] == by_id[kept]["completion"] and not rows[kept]["flipped"]
    # The rows carry the prompt as the model saw it, so they meet the run's own AI pairs: the person's order wins.
    ai, people = read_pairs(it / "pairs.jsonl"), read_pairs(run / human_eval.PREFERENCES)
    pairs, weights, replaced = combine(ai, people, same_pair)
    assert replaced == 2 and len(pairs) == 6 and sum(weights) == 2


def test_blind_evaluation_settings_that_would_never_run_are_refused(tmp_path):
    with pytest.raises(UserError, match="stop.min_human_win_rate: set, but review.human_eval is 0"):
        load_config(None, ["stop.min_human_win_rate=0.5"])
    with pytest.raises(UserError, match=r"review.human_eval: 3 is more than iterations \(2\)"):
        load_config(None, ["review.human_eval=3", "iterations=2"])
    assert load_config(None, ["review.human_eval=2", "iterations=2", "stop.min_human_win_rate=0.5"])
