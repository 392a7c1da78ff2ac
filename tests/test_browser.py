"""A person at a real browser (Debian's chromium, driven by Playwright) with `selfplay serve` and a real tiny-model
run: they watch the run's stage change, approve its review with one example rejected (the run trains without it),
judge 4 pairs blind (the win rate reaches eval.json), and a script planted in model output does not run.

Set SELFPLAY_SCREENSHOTS=DIR to keep the pages as PNGs (the README's screenshot comes from here)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from selfplay.loop import human_eval, review
from tests.test_human import human_run_args
from tests.test_review import _start, _wait_for
from tests.web_helpers import TOKEN, serving

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (apt-get install chromium); the browser tests need it",
                allow_module_level=True)
PLANTED = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"


def _plant(path: Path, edit) -> None:
    """Put a script into model text on disk, as a model's output could carry one."""
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _text(page, selector: str) -> str | None:
    """The text of `selector`, or None, on a page that may be reloading itself (it refreshes every second)."""
    for _ in range(50):
        try:
            found = page.query_selector(selector)
            return found.inner_text() if found is not None else None
        except playwright.Error:  # caught between two loads
            page.wait_for_timeout(50)
    raise AssertionError(f"{selector}: the page never settled")


def test_a_person_reviews_and_judges_blind_in_the_browser(tiny_model, sums_jsonl, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    shots = Path(os.environ["SELFPLAY_SCREENSHOTS"]) if os.environ.get("SELFPLAY_SCREENSHOTS") else None
    with serving(runs, refresh_seconds=1) as base, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{base}/?token={TOKEN}")
        assert "No run folders here yet" in page.inner_text("main")
        proc = _start(["run", *human_run_args(tiny_model, sums_jsonl, runs)])
        it = runs / "t" / "iter-001"
        try:
            # The list reloads itself: the person sees the stages go by until the run waits for them.
            stages = []
            deadline = time.monotonic() + 240
            while _text(page, "tr.run a.wait") != "review the training data":
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                stage = _text(page, "tr.run td.stage")
                if stage and (not stages or stages[-1] != stage):
                    stages.append(stage)
                page.wait_for_timeout(200)
            stages.append(_text(page, "tr.run td.stage"))
            assert stages[-1] == "review" and len(set(stages)) >= 2, stages  # it saw the run go from stage to stage
            _plant(it / review.REQUEST, lambda d: d["shown"][0].update(completion=f"4 {PLANTED}"))
            page.click("text=review the training data")
            assert PLANTED.split("<img")[0] in page.inner_text("table.review")  # shown as text
            first = page.get_attribute("tr.example >> nth=0", "data-id")
            page.check(f"tr.example[data-id='{first}'] input[value='reject']")
            page.fill("input[name=who]", "ann")
            if shots:
                page.screenshot(path=str(shots / "serve-review.png"), full_page=True)
            page.click("#approve")
            assert "approved, 1 example(s) removed" in page.inner_text("#flash")
            assert page.title() != "pwned"

            _wait_for(it / human_eval.REQUEST, proc, timeout=240)
            _plant(it / human_eval.REQUEST, lambda d: [p.update(left=p["left"] + PLANTED) for p in d["pairs"]])
            page.goto(f"{base}/runs/t")
            page.click("text=blind evaluation")
            key = json.loads((it / human_eval.KEY).read_text())["pairs"]
            choices = []
            for n in range(4):
                assert f"pair {n + 1} of 4" in page.inner_text("#count")
                pair_id = page.get_attribute("form", "action").rsplit("/", 1)[1]
                if n == 0:
                    assert "<script>" in page.inner_text("#left") and page.title() != "pwned"
                    if shots:
                        page.screenshot(path=str(shots / "serve-blind.png"), full_page=True)
                # Three pairs for the new model's answer, one tie: a win rate of 3.5 / 4.
                side = "tie" if n == 3 else key[pair_id]["new"]
                choices.append(side)
                page.click(f"#choose-{side}")
            assert "all 4 pairs are judged" in page.inner_text("#count")
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-3000:]
            page.goto(f"{base}/runs/t")
            assert page.inner_text("#status") == "finished"
            assert "87.5%" in page.inner_text("main")  # the people's win rate, on the run's page
            if shots:
                page.screenshot(path=str(shots / "serve-run.png"), full_page=True)
            assert page.title() != "pwned"
        finally:
            proc.kill()
            browser.close()
    found = json.loads((it / "eval.json").read_text())["guards"]["human_eval"]
    assert (found["compared"], found["wins"], found["ties"], found["win_rate"]) == (4, 3, 1, 0.875)
    assert found["who"] == ["ann"]  # the name given in review is remembered for the blind verdicts
    train = json.loads((it / "train.json").read_text())
    assert train["removed_by_review"] == 1
    assert json.loads((it / review.DECISION).read_text())["who"] == "ann"
