"""The guards inside real runs of the tiny model: planted contamination, a planted reward hack, a run that
degrades, stops and exports its best iteration, a rollback, and the report across one and many iterations."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from selfplay.cli import main
from selfplay.files import read_jsonl
from tests.conftest import tiny_overrides, write_jsonl

pytestmark = pytest.mark.e2e


def _eval(run, i):
    return json.loads((run / f"iter-{i:03d}" / "eval.json").read_text())


def test_planted_contamination_is_caught_and_dropped(tiny_model, tmp_path):
    # Pairs of word problems that differ only in their last words: the exact-match split check lets both
    # halves of a pair through, one may land in training and its twin in the held-out set.
    names = "Tom Ann Bob Eve Sam Zoe Max Ida Leo Mia Ned Ora".split()
    fruits = "apples pears plums figs limes kiwis dates mangos melons grapes lemons cherries".split()
    colors = "red green blue pink gray gold teal plum rust jade sand navy".split()
    places = "door gate shed barn porch yard hall attic cellar garden garage kitchen".split()
    rows = []
    for k in range(12):
        # Every run of 13 words holds a word of this pair's own, so only the twins share a 13-gram.
        name, fruit, color, place = names[k], fruits[k], colors[k], places[k]
        stem = (f"{name} keeps {k} {color} {fruit} in a basket near the {place}, and {k + 3} more {fruit} "
                f"that {name} picked by the {place}.")
        rows.append({"prompt": f"{stem} How many apples are there in total?", "answer": str(2 * k + 3), "pair": k})
        rows.append({"prompt": f"{stem} How many apples does Tom have?", "answer": str(2 * k + 3), "pair": k})
    data = write_jsonl(tmp_path / "apples.jsonl", rows)
    assert main(["run", *tiny_overrides(tiny_model, data, tmp_path, **{"train.max_length": 1024})]) == 0
    run = tmp_path / "t"
    heldout_pairs = {p["meta"]["pair"] for p in read_jsonl(run / "problems" / "heldout.jsonl")}
    train = read_jsonl(run / "problems" / "train.jsonl")
    planted = {p["id"] for p in train if p["meta"]["pair"] in heldout_pairs}
    assert planted, "the split should put some pair on both sides (the plant)"

    dropped = read_jsonl(run / "iter-001" / "contaminated.jsonl")
    assert {d["problem_id"] for d in dropped} == planted
    kept = {e["problem_id"] for e in read_jsonl(run / "iter-001" / "train.jsonl")}
    assert not kept & planted and kept == {p["id"] for p in train} - planted  # PassFirst keeps one per problem
    filt = json.loads((run / "iter-001" / "filter.json").read_text())
    assert filt["contaminated"] == len(planted) and filt["kept"] == len(kept)
    guard = _eval(run, 1)["guards"]["contamination"]
    assert guard["status"] == "caught" and guard["dropped"] == len(planted)
    assert json.loads((run / "iter-001" / "train.json").read_text())["examples"] == len(kept)
    assert "contaminated" in (run / "report.html").read_text()


def test_planted_reward_hack_trips_the_alarm_and_can_stop_the_run(tiny_model, sums_jsonl, tmp_path, capsys):
    # The run trains on a proxy that passes any long completion; the gold checker (math) sees through it.
    args = tiny_overrides(tiny_model, sums_jsonl, tmp_path, **{
        "verify.verifier": "tests.plugins:LengthProxy", "guards.stop_on_alarm": True,
    })
    assert main(["run", *args]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "t"
    guard = _eval(run, 0)["guards"]["reward_hacking"]
    assert guard["status"] == "alarm" and guard["proxy"] == "length-proxy" and guard["gold"] == "math"
    assert guard["heldout"]["proxy_pass_rate"] == 1.0 and guard["heldout"]["gold_pass_rate"] <= 0.25
    assert "ALARM reward_hacking" in out and "Stopped after iteration 0" in out
    assert not (run / "iter-001").exists()  # stopped before training on the hacked proxy
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "stopped" and "guard alarm" in state["stop_reasons"][0]
    metrics = read_jsonl(run / "metrics.jsonl")
    assert len(metrics) == 1 and metrics[0]["alarms"] and metrics[0]["reward/proxy_pass_rate"] == 1.0
    # The report renders with a single evaluated iteration.
    page = (run / "report.html").read_text()
    assert "reward hacking" in page and page.count("data:image/png;base64,") >= 4


def test_degrading_run_stops_and_exports_its_best_iteration(tiny_model, sums_jsonl, tmp_path, capsys):
    # Gold scores iteration 1's model perfect and every other model zero: quality peaks, then falls.
    args = tiny_overrides(tiny_model, sums_jsonl, tmp_path, iterations=4, **{
        "guards.gold_verifier": "tests.plugins:BestAtIterationOne", "guards.embeddings": True,
    })
    assert main(["run", *args]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "t"
    assert not (run / "iter-003").exists()  # stopped after iteration 2, under the cap of 4
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "stopped" and state["best_iteration"] == 1
    assert _eval(run, 2)["guards"]["degradation"]["status"] == "alarm"
    assert 0.0 < _eval(run, 2)["guards"]["mode_collapse"]["embedding_spread"] <= 2.0  # the packaged MiniLM ran
    assert "Stopped after iteration 2" in out and "Best iteration: 1" in out

    dest = tmp_path / "best"
    assert main(["export", str(run), str(dest)]) == 0
    note = json.loads((dest / "selfplay-export.json").read_text())
    assert note["iteration"] == 1 and note["best"] and note["value"] == 1.0
    assert (dest / "model.safetensors").read_bytes() == (run / "iter-001" / "model" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["export", str(run), str(dest)]) == 2  # never overwrites without --force
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(run), str(dest), "--iteration", "7", "--force"]) == 2

    # A resume with the same config reaches the same decision and runs nothing.
    assert main(["resume", str(run)]) == 0
    assert not (run / "iter-003").exists()
    # The report across many iterations: every guard, every plot, and the lineage table.
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    for name in ("degradation", "forgetting", "pseudo labels", "reward hacking", "mode collapse", "contamination",
                 "persistent failures"):
        assert name in page
    # Each control task's answer rate is reported beside its accuracy, and compared with iteration 0's.
    control = _eval(run, 2)["guards"]["forgetting"]["controls"]["gk"]
    assert 0.0 <= control["answer_rate"] <= 1.0 and control["answer_rate_change"] is not None
    assert "control/gk/answer_rate" in read_jsonl(run / "metrics.jsonl")[2]
    assert page.count("data:image/png;base64,") >= 5 and "http://" not in page and "<script" not in page
    assert "Lineage of the training data" in page and "iter-002" in page
    # The same figures in TensorBoard, one point per iteration, rewritten (not appended) on every report.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["report", str(run)]) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    points = events.Scalars("greedy_accuracy")
    assert [(p.step, p.value) for p in points] == [(0, 0.0), (1, 1.0), (2, 0.0)]


def test_rollback_samples_the_next_iteration_from_the_best_model(tiny_model, sums_jsonl, tmp_path):
    args = tiny_overrides(tiny_model, sums_jsonl, tmp_path, iterations=3, **{
        "guards.gold_verifier": "tests.plugins:BestAtIterationOne", "stop.on_degrade": "rollback",
        "train.init_from": "previous",
    })
    assert main(["run", *args]) == 0
    run = tmp_path / "t"
    assert _eval(run, 2)["decision"]["action"] == "rollback"
    gen = json.loads((run / "iter-003" / "generate.json").read_text())
    assert gen["model"] == str(run / "iter-001" / "model")  # not iteration 2's degraded model
    assert json.loads((run / "iter-003" / "train.json").read_text())["init_from"] == str(run / "iter-001" / "model")
    assert json.loads((run / "state.json").read_text())["best_iteration"] == 1


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian package chromium not installed")
def test_report_renders_in_headless_chromium(tiny_model, sums_jsonl, tmp_path):
    from PIL import Image

    assert main(["run", *tiny_overrides(tiny_model, sums_jsonl, tmp_path)]) == 0
    page = tmp_path / "t" / "report.html"
    shot = tmp_path / "shot.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={shot}",
         "--window-size=1300,2400", page.resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    image = Image.open(shot).convert("L")
    dark = sum(image.histogram()[:128])
    assert image.size == (1300, 2400) and dark > 20_000  # text and plots drawn, not a blank page
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.resolve().as_uri()],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout
    assert dom.count("<img") >= 5 and "Guards" in dom


def test_fresh_problems_are_kept_out_of_training(tiny_model, tmp_path):
    from selfplay.config import load_config
    from selfplay.loop.driver import open_run

    args = tiny_overrides(tiny_model, tmp_path / "unused.jsonl", tmp_path, iterations=2, **{
        "task.source": "reasoning_gym", "task.dataset": "basic_arithmetic", "task.path": "null",
        "task.train_size": 8, "task.eval_size": 6, "guards.fresh_size": 5,
    })
    assert main(["run", *args]) == 0
    run = tmp_path / "t"
    train_questions = {p["meta"]["question"] for p in read_jsonl(run / "problems" / "train.jsonl")}
    for i in (0, 1, 2):
        fresh = read_jsonl(run / f"iter-{i:03d}" / "fresh_problems.jsonl")
        assert len(fresh) == 5 and not {p["meta"]["question"] for p in fresh} & train_questions
    # A later iteration's filter drops any record that overlaps a fresh question an earlier evaluation showed.
    ctx = open_run(load_config(None, args), run, allow_change=False)
    try:
        earlier = read_jsonl(run / "iter-001" / "fresh_problems.jsonl")[0]
        assert ctx.contamination_index(2).match(f"As shown: {earlier['meta']['question']}") == earlier["id"]
        assert ctx.contamination_index(1).match(earlier["meta"]["question"]) is None  # not yet shown at iteration 1
    finally:
        ctx.rundir.unlock()
