"""`selfplay serve` on a real loopback server, reading a real tiny-model run that waits for review: the token,
cross-site refusal, paths that try to leave the runs folder, escaping, clear 4xx lines, and two people deciding
at once."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading

import pytest
import requests

from selfplay.errors import UserError
from selfplay.loop import review
from tests.conftest import ROOT, run_cli, tiny_overrides
from tests.test_review import _start, _wait_for
from tests.web_helpers import TOKEN, serving, session

pytestmark = pytest.mark.e2e
SCRIPT = "<script>document.title='pwned'</script>"


@pytest.fixture(scope="module")
def waiting_run(tiny_model, tmp_path_factory):
    """runs/t: a real run paused at its review gate; one shown completion carries a script, as model text may."""
    tmp = tmp_path_factory.mktemp("web")
    data = tmp / "sums.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n"
                            for a in range(6) for b in range(5)))
    runs = tmp / "runs"
    proc = _start(["run", *tiny_overrides(tiny_model, data, runs, **{"review.every": 1, "review.poll_seconds": 0.2,
                                                                     "review.sample_size": 3})])
    request = runs / "t" / "iter-001" / review.REQUEST
    try:
        _wait_for(request, proc)
        shown = json.loads(request.read_text())
        shown["shown"][0]["completion"] = f"the answer {SCRIPT} is 4"
        request.write_text(json.dumps(shown))
        with serving(runs) as base:
            yield base, runs, proc
    finally:
        proc.kill()
        proc.communicate()


def test_every_page_needs_the_token(waiting_run):
    base, _, _ = waiting_run
    anonymous = requests.get(f"{base}/runs/t", headers={"accept": "text/html"})
    assert anonymous.status_code == 401 and "needs its token" in anonymous.text
    assert requests.get(f"{base}/?token=wrong", allow_redirects=False).status_code == 401
    api = requests.get(f"{base}/api/runs", headers={"authorization": f"Bearer {TOKEN}"})
    assert api.status_code == 200 and api.json()[0]["name"] == "t" and api.json()[0]["waiting_review"]
    s = session(base)
    home = s.get(f"{base}/")
    assert home.status_code == 200 and "waiting for review" in home.text and "review the training data" in home.text
    assert "script-src" not in home.headers["content-security-policy"]  # default-src 'none': no script runs
    assert home.headers["x-content-type-options"] == "nosniff" and home.headers["referrer-policy"] == "same-origin"


def test_model_text_is_escaped(waiting_run):
    base, _, _ = waiting_run
    page = session(base).get(f"{base}/runs/t/review").text
    assert SCRIPT not in page and "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;" in page


def test_paths_never_leave_the_runs_folder(waiting_run, tmp_path):
    base, runs, _ = waiting_run
    s = session(base)
    outside = tmp_path / "elsewhere"
    shutil.copytree(runs / "t", outside, ignore=shutil.ignore_patterns("iter-*", "*.lock"))
    (runs / "escape").symlink_to(outside, target_is_directory=True)
    report = s.get(f"{base}/runs/t/report")  # the run's own report, written after iteration 0's evaluation
    assert report.status_code == 200 and "selfplay run" in report.text
    assert "sandbox" in report.headers["content-security-policy"]  # no script of the report's would run
    (runs / "t" / "report.html").rename(tmp_path / "report.html")
    (runs / "t" / "report.html").symlink_to("/etc/passwd")
    try:
        for path in ("/runs/..", "/runs/../../etc/passwd", "/runs/%2E%2E", "/runs/..%2F..%2Fetc", "/runs/%2Fetc",
                     "//etc/passwd", "/runs/escape", "/runs/t%2F..%2F..", "/runs/t/report", "/runs/nope",
                     "/static/../../../../etc/passwd", "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd"):
            status, text = _raw_get(base, path)  # sent as written, not normalised
            assert status in (400, 404), (path, status, text[:200])
            assert "Traceback" not in text and "root:" not in text
        assert "leads outside the runs folder" in s.get(f"{base}/runs/escape").text
        assert "leads outside the runs folder" in s.get(f"{base}/runs/t/report").text
        assert "escape" not in s.get(f"{base}/").text  # the listing leaves it out too
    finally:
        (runs / "escape").unlink()
        (runs / "t" / "report.html").unlink()
        (tmp_path / "report.html").rename(runs / "t" / "report.html")


def _raw_get(base: str, path: str) -> tuple[int, str]:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("GET", path, skip_accept_encoding=True)
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.endheaders()
    r = conn.getresponse()
    return r.status, r.read().decode(errors="replace")


def test_writing_needs_the_form_token_and_this_origin(waiting_run):
    base, runs, _ = waiting_run
    s = session(base)
    form = {"action": "reject", "reason": "x", "iteration": "1"}
    assert s.post(f"{base}/runs/t/review", data=form).status_code == 403  # no csrf field
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', s.get(f"{base}/runs/t/review").text)[1]
    cross = s.post(f"{base}/runs/t/review", data={**form, "csrf": csrf}, headers={"origin": "http://evil.example"})
    assert cross.status_code == 403 and "another site" in cross.text
    fetch = s.post(f"{base}/runs/t/review", data={**form, "csrf": csrf}, headers={"sec-fetch-site": "cross-site"})
    assert fetch.status_code == 403
    assert requests.post(f"{base}/runs/t/review", data={**form, "csrf": csrf}).status_code == 401  # no cookie
    rebound = s.get(f"{base}/", headers={"host": "evil.example"})
    assert rebound.status_code == 421 and "not this app's loopback address" in rebound.text
    tunnel = requests.get(f"{base}/api/runs", headers={"host": "localhost:9000", "authorization": f"Bearer {TOKEN}"})
    assert tunnel.status_code == 200  # an SSH tunnel's local port
    assert not (runs / "t" / "iter-001" / review.DECISION).exists()  # nothing was decided


def test_bad_requests_get_a_clear_line(waiting_run):
    base, _, _ = waiting_run
    s = session(base)
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', s.get(f"{base}/runs/t/review").text)[1]
    cases = [
        (s.post(f"{base}/runs/t/review", data={"action": "dance", "csrf": csrf}), 400, "is not approve or reject"),
        (s.post(f"{base}/runs/t/review", data={"action": "approve", "csrf": csrf}), 400, "names no iteration"),
        (s.post(f"{base}/runs/t/review", data={"action": "approve", "csrf": csrf, "iteration": "1",
                                              "ex:nope": "x"}), 400, "'x' is not keep, confirm, flip or reject"),
        (s.post(f"{base}/runs/t/review", data={"action": "approve", "csrf": csrf, "iteration": "7"}), 404,
         "iteration 7 asked for no review"),
        (s.post(f"{base}/runs/t/blind/{10 ** 300}/h000", data={"choice": "left", "csrf": csrf}), 404,
         "has no blind evaluation"),
        (s.post(f"{base}/runs/t/blind/abc/h000", data={"choice": "left", "csrf": csrf}), 400, "iteration"),
        (s.post(f"{base}/runs/t/blind/1/h000", data={"choice": "left", "csrf": csrf}), 404, "no blind evaluation"),
        (s.get(f"{base}/runs/t/lineage", params={"example": "x" * 5000}), 404, "no training example"),
        (s.get(f"{base}/no/such/page"), 404, "Not Found"),
    ]
    for r, status, words in cases:
        assert r.status_code == status, (r.url, r.status_code, r.text[:300])
        assert words in r.text and "Traceback" not in r.text
    spoof = s.get(f"{base}/runs/t/review", params={"done": "iter-001: approved", "sig": "0" * 24})
    assert spoof.status_code == 200 and 'id="flash"' not in spoof.text  # a link cannot speak for the app


def test_two_people_deciding_at_once_first_stands(waiting_run):
    base, runs, proc = waiting_run
    people = [session(base), session(base)]
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', people[0].get(f"{base}/runs/t/review").text)[1]
    shown = json.loads((runs / "t" / "iter-001" / review.REQUEST).read_text())["shown"]
    forms = [{"action": "approve", "csrf": csrf, "who": "ann", "iteration": "1", f"ex:{shown[0]['id']}": "reject"},
             {"action": "reject", "csrf": csrf, "who": "bob", "reason": "no", "iteration": "1"}]
    results: dict[int, requests.Response] = {}
    barrier = threading.Barrier(2)

    def decide(n: int) -> None:
        barrier.wait()
        results[n] = people[n].post(f"{base}/runs/t/review", data=forms[n])

    threads = [threading.Thread(target=decide, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    decision = json.loads((runs / "t" / "iter-001" / review.DECISION).read_text())
    winner = 0 if decision["who"] == "ann" else 1
    assert results[winner].status_code == 200, results[winner].text[:300]
    lost = results[1 - winner]
    assert lost.status_code == 409 and "a decision cannot be changed" in lost.text
    assert f"by {decision['who']}" in lost.text
    again = people[winner].post(f"{base}/runs/t/review", data=forms[winner])
    assert again.status_code == 200 and "nothing to do" in again.text  # the same decision twice is harmless


def test_serve_binds_loopback_unless_told(tmp_path):
    (tmp_path / "runs").mkdir()
    refused = run_cli("serve", str(tmp_path / "runs"), "--host", "0.0.0.0")
    assert refused.returncode == 2 and "--allow-remote" in refused.stderr and len(refused.stderr.splitlines()) == 1
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "selfplay", "serve", str(tmp_path / "runs"), "--host", "0.0.0.0",
                             "--port", "0", "--allow-remote"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.kill()
        proc.communicate()
    assert "?token=" in lines[1] and lines[2].startswith("WARNING: bound to 0.0.0.0, not loopback")
    missing = run_cli("serve", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no such folder" in missing.stderr


def test_a_form_left_open_decides_nothing_once_the_run_moved_on(waiting_run, tmp_path):
    """Iteration 1 decided, iteration 2 now waiting: the old page's form must not decide iteration 2."""
    _, runs, _ = waiting_run
    run = tmp_path / "t"
    shutil.copytree(runs / "t", run, ignore=shutil.ignore_patterns("*.lock", review.DECISION))
    review.decide(run, "approved", who="ann", iteration=1)
    later = run / "iter-002"
    shutil.copytree(run / "iter-001", later, ignore=shutil.ignore_patterns(review.DECISION, "model", "trainer"))
    with pytest.raises(UserError, match=r"iter-001: already approved by ann .* cannot be changed"):
        review.decide(run, "rejected", who="bob", iteration=1)
    assert review.decide(run, "approved", iteration=1) == "iter-001: already approved; nothing to do"
    with pytest.raises(UserError, match="iter-003: not waiting for review; iter-002 is waiting now"):
        review.decide(run, "approved", iteration=3)
    assert not (later / review.DECISION).exists()


def test_a_broken_run_folder_is_listed_not_fatal(waiting_run):
    base, runs, _ = waiting_run
    broken = runs / "old"
    broken.mkdir()
    (broken / "config.yaml").write_text("no_such_key: 1\n")
    try:
        listing = session(base).get(f"{base}/")
        assert listing.status_code == 200 and "unreadable" in listing.text and "no_such_key" in listing.text
        assert 'href="/runs/t"' in listing.text  # the good run is still listed
    finally:
        shutil.rmtree(broken)


def test_a_run_counts_as_running_only_while_its_lock_holder_lives(tmp_path):
    from selfplay.web.runs import held

    assert not held(tmp_path)  # no lock file: never started
    (tmp_path / ".lock").write_text(str(os.getpid()))
    assert held(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(str(dead.pid))
    assert not held(tmp_path)  # killed runs leave their pid behind
