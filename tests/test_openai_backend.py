"""The OpenAI-compatible backend against real servers on loopback.

`transformers serve` serves the tiny model (started once for the module by the backend's own launch mode);
a small stdlib HTTP server stands in for third-party servers that fail or answer nonsense on cue.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import openai  # noqa: F401 - loaded once here, not inside a test that times its calls
import pytest

from selfplay.errors import UserError
from selfplay.generation import GENERATORS, SamplingParams, build_generator, sample_batches
from selfplay.generation.openai_compat import (
    OpenAIClient,
    OpenAIGenerator,
    forget_fixed_servers,
    free_port,
    launch_command,
    openai_backend,
    request_seed,
)
from selfplay.models import placement
from selfplay.records import Problem

WHERE = placement("cpu", "float32")
TURNS = [{"role": "user", "content": "What is 1 + 2?"}, {"role": "assistant", "content": "4"},
         {"role": "user", "content": "Check that again."}]
PROBLEMS = [Problem("multi", "unused", "3", messages=TURNS)] + [
    Problem(f"p{i}", "What is 1 + 2?" + " and 3" * i, "3") for i in range(3)
]


@pytest.fixture(autouse=True)
def _fresh_fixed_servers():
    forget_fixed_servers()
    yield
    forget_fixed_servers()


@pytest.fixture(scope="module")
def served(tiny_model):
    """`transformers serve` on the tiny model, launched and stopped by the backend itself."""
    gen = openai_backend(tiny_model, WHERE, launch="transformers", startup_timeout=120, timeout=60)
    yield gen
    gen.close()


def texts(gen, problems, params, batch_size=8) -> list[list[str]]:
    return [[c.text for c in completions] for batch in gen.generate(problems, params, batch_size)
            for _, completions in batch]


def test_each_problem_gets_its_n_chat_completions_in_order(served, tiny_model):
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=5, seed=1)
    batches = list(sample_batches(served, PROBLEMS, params, batch_size=6))  # 6 // 3: two problems a batch
    assert [[s.problem_id for s in b] for b in batches] == [["multi"] * 3 + ["p0"] * 3, ["p1"] * 3 + ["p2"] * 3]
    samples = [s for b in batches for s in b]
    assert [s.id for s in samples] == [f"{p.id}/s{k}" for p in PROBLEMS for k in range(3)]
    assert all(s.model == str(tiny_model) for s in samples)
    assert all(0 < s.num_tokens <= 5 and s.finish_reason in ("stop", "length") for s in samples)
    assert all((s.finish_reason == "length") == (s.num_tokens == 5) for s in samples)
    assert set(served.client.requests_by_n) == {1}  # launch: transformers knows its server ignores n


def test_server_samples_are_the_transformers_backends_for_the_same_seed(served, tiny_model):
    """Same weights, chat template, torch seed and sampling (do_sample, temperature, top-p, no top-k): the server's
    sample of a multi-turn problem is the transformers backend's, token for token. So the turns reached the
    server, the seed was used, and launch: transformers really samples."""
    local = build_generator("transformers", tiny_model, WHERE, {})
    params = SamplingParams(n=1, temperature=1.0, max_new_tokens=8, seed=7)
    for problem in PROBLEMS[:2]:
        own_seed = SamplingParams(n=1, temperature=1.0, max_new_tokens=8, seed=request_seed(7, problem.id, 0))
        assert texts(served, [problem], params) == texts(local, [problem], own_seed), problem.id


def test_sampling_varies_and_a_seed_repeats(served):
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=6, seed=3)
    first = texts(served, PROBLEMS[1:3], params)
    for samples in first:
        assert len(set(samples)) > 1, f"the server ignored temperature 1.0: all 4 samples were {samples[0]!r}"
    assert texts(served, PROBLEMS[1:3], params) == first  # transformers serve honours seed, one request at a time
    other = texts(served, PROBLEMS[1:3], SamplingParams(n=4, temperature=1.0, max_new_tokens=6, seed=4))
    assert other != first


def test_greedy_twice_gives_the_same_text(served):
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=6)
    assert texts(served, PROBLEMS, greedy) == texts(served, PROBLEMS, greedy)


def test_a_server_that_ignores_n_and_temperature_is_noticed(served, capsys):
    """The same server at a base_url, without launch's sampling knob: it answers one greedy choice per request."""
    gen = OpenAIGenerator(base_url=served.client.base_url, concurrency=4, timeout=60)
    assert gen.model_name == str(served.model_name)  # the first id GET /models lists
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=4, seed=0)
    assert [len(s) for s in texts(gen, PROBLEMS[1:3], params)] == [4, 4]
    # One request for n=4 per problem answered with one choice, then three made up one at a time each ...
    assert gen.client.ignores_n is True and gen.client.requests_by_n == {4: 2, 1: 6}
    texts(gen, PROBLEMS[1:3], params)
    # ... and that server is not asked for n > 1 again.
    assert gen.client.requests_by_n == {4: 2, 1: 14}
    out = capsys.readouterr().out
    assert out.count("ignores n") == 1
    assert out.count("identical samples") == 1 and "generation_config" in out
    gen.close()


def test_launch_starts_a_server_and_close_leaves_no_process(tiny_model):
    gen = openai_backend(tiny_model, WHERE, launch="transformers", startup_timeout=120, timeout=60)
    pid = gen.server.pid
    os.killpg(pid, 0)  # running, in a process group of its own
    [[(_, [completion])]] = list(gen.generate(PROBLEMS[:1], SamplingParams(max_new_tokens=3), 8))
    assert 0 < completion.num_tokens <= 3
    gen.close()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    gen.close()  # twice is fine


def test_a_launched_server_dies_with_a_run_killed_by_sigkill(tmp_path):
    """atexit does not run on SIGKILL; the watchdog around the server sees its parent go and stops the server."""
    (tmp_path / "tmp").mkdir()  # where the killed run's server log stays
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "models").write_text(json.dumps({"data": [{"id": "static"}]}))  # enough to look ready
    launch = f"{sys.executable} -m http.server {{port}} --bind {{host}} --directory {{model}}"
    run = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path\n"
         "from selfplay.generation.openai_compat import OpenAIGenerator\n"
         f"gen = OpenAIGenerator(launch={launch!r}, model_path=Path({str(tmp_path)!r}), startup_timeout=30)\n"
         "print(gen.server.pid, gen.client.model, flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp_path / "tmp")},
    )
    try:
        pid, model = run.stdout.readline().split()
        assert model == "static"
        os.killpg(int(pid), 0)  # the server's group is up
    finally:
        run.kill()
        run.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(int(pid), 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(int(pid), signal.SIGKILL)
    pytest.fail(f"the server's process group {pid} outlived the run killed by SIGKILL")


def test_a_launch_command_that_fails_or_hangs_is_one_line_with_its_log(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the logs of failed starts are kept: keep them here
    exits = f"{sys.executable} -c \"print('no server here'); raise SystemExit(3)\" {{model}} {{host}} {{port}}"
    with pytest.raises(UserError, match=r"generate.options.launch: the server exited with code 3") as e:
        openai_backend(tmp_path, WHERE, launch=exits)
    assert "no server here" in str(e.value) and "\n" not in str(e.value)
    assert f"last lines of {tmp_path}" in str(e.value)

    hangs = f"{sys.executable} -c \"import time; time.sleep(60)\" {{port}}"
    start = time.monotonic()
    with pytest.raises(UserError, match=r"did not answer .* within 1 s \(generate.options.startup_timeout\)"):
        openai_backend(tmp_path, WHERE, launch=hangs, startup_timeout=1)
    assert time.monotonic() - start < 20

    with pytest.raises(UserError, match="generate.options.launch: command 'no-such-server' not found"):
        openai_backend(tmp_path, WHERE, launch="no-such-server {model} --port {port}")
    with pytest.raises(UserError, match=r"generate.options.launch: .*placeholders \{model\}"):
        openai_backend(tmp_path, WHERE, launch="serve {model} --port {port} --gpu {gpu}")


def test_an_unreachable_server_is_one_line_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(UserError, match=rf"{url}/models: no answer after 2 tries \(Connection refused\)") as e:
        OpenAIGenerator(base_url=url, retries=1, timeout=2)
    assert "\n" not in str(e.value) and time.monotonic() - start < 5
    gen = OpenAIGenerator(base_url=url, served_model="m", retries=0, timeout=2)
    with pytest.raises(UserError, match=rf"{url}/chat/completions: no answer after 1 try \(Connection refused\)"):
        texts(gen, PROBLEMS[:1], SamplingParams())


def answer(*texts: str, finish: str = "stop", tokens: int | None = 3) -> tuple[int, dict, bytes]:
    choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": finish}
               for i, t in enumerate(texts)]
    body = {"id": "x", "object": "chat.completion", "choices": choices}
    if tokens is not None:
        body["usage"] = {"prompt_tokens": 9, "completion_tokens": tokens, "total_tokens": 9 + tokens}
    return 200, {}, json.dumps(body).encode()


@contextlib.contextmanager
def scripted(*answers: tuple[int, dict, bytes]):
    """A stand-in for a third-party server: GET /v1/models lists 'served-x'; the k-th POST gets answers[k] (the
    last one repeats). Yields its base URL and the POST bodies and headers it received."""
    seen: list[tuple[dict, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self._reply(200, {}, json.dumps({"object": "list", "data": [{"id": "served-x"}]}).encode())

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((body, {k.lower(): v for k, v in self.headers.items()}))  # HTTP names: any case
            self._reply(*answers[min(len(seen), len(answers)) - 1])

        def _reply(self, status: int, headers: dict, payload: bytes):
            self.send_response(status)
            for key, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", seen
    finally:
        server.shutdown()
        server.server_close()


def test_requests_carry_the_sampling_settings_turns_and_key(monkeypatch):
    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-test")
    with scripted(answer("a", "b", tokens=7)) as (url, seen):
        gen = OpenAIGenerator(base_url=url + "/", api_key_env="TEST_OPENAI_KEY", extra_body={"top_k": 20})
        assert gen.model_name == "served-x"
        params = SamplingParams(n=2, temperature=0.7, top_p=0.9, max_new_tokens=11, seed=5)
        [[(problem, completions)]] = list(gen.generate(PROBLEMS[:1], params, 8))
        body, headers = seen[0]
        assert body == {"model": "served-x", "messages": TURNS, "n": 2, "temperature": 0.7, "top_p": 0.9,
                        "max_tokens": 11, "seed": request_seed(5, "multi", 0), "top_k": 20}
        assert headers["authorization"] == "Bearer sk-test"
        # Two choices, one usage total, no tokenizer: an even split.
        assert [(c.text, c.num_tokens, c.finish_reason) for c in completions] == [("a", 4, "stop"), ("b", 3, "stop")]
        monkeypatch.delenv("TEST_OPENAI_KEY")
        list(OpenAIGenerator(base_url=url).generate(PROBLEMS[:1], SamplingParams(temperature=0.0), 8))
        body, headers = seen[-1]
        assert "authorization" not in headers and body["temperature"] == 0.0 and "n" not in body


def test_a_server_failing_with_503_is_retried_until_it_answers():
    busy = (503, {}, b'{"error": {"message": "overloaded"}}')
    with scripted(busy, (503, {"Retry-After": "0"}, b"busy"), answer("fine", finish="length", tokens=4)) as (url, seen):
        gen = OpenAIGenerator(base_url=url, served_model="m", retries=3, timeout=5)
        assert texts(gen, PROBLEMS[:1], SamplingParams()) == [["fine"]]
        assert len(seen) == 3
    with scripted(busy) as (url, seen):
        gen = OpenAIGenerator(base_url=url, served_model="m", retries=1, timeout=5)
        with pytest.raises(UserError, match=r"no answer after 2 tries \(HTTP 503 'overloaded'\)"):
            texts(gen, PROBLEMS[:1], SamplingParams())


def test_a_refused_request_is_not_retried_and_shows_the_servers_message():
    refused = (400, {}, json.dumps({"error": {"message": "temperature must be <= 2"}}).encode())
    with scripted(refused) as (url, seen):
        gen = OpenAIGenerator(base_url=url, served_model="m", retries=3, timeout=5)
        with pytest.raises(UserError, match=r"refused the request: HTTP 400 'temperature must be <= 2'"):
            texts(gen, PROBLEMS[:1], SamplingParams())
        assert len(seen) == 1


@pytest.mark.parametrize(("reply", "match"), [
    ((200, {}, b"<html>" + b"x" * 500), r"answered with something that is not JSON: '<html>x+\.\.\.'$"),
    ((200, {}, b'{"id": "x", "object": "chat.completion"}'), r"answered without choices: .*chat\.completion"),
    ((200, {}, b'{"choices": [{"message": {"role": "assistant"}, "finish_reason": "stop"}]}'),
     r"choice 0 has no text content"),
])
def test_a_nonsense_answer_is_one_line_naming_the_url(reply, match):
    with scripted(reply) as (url, seen):
        gen = OpenAIGenerator(base_url=url, served_model="m", timeout=5)
        with pytest.raises(UserError, match=match) as e:
            texts(gen, PROBLEMS[:1], SamplingParams())
    message = str(e.value)
    assert message.startswith(f"{url}/chat/completions") and "\n" not in message and len(message) < 400


def test_a_fixed_server_refuses_a_second_model(tmp_path):
    with scripted(answer("x")) as (url, _):
        first, second = tmp_path / "iteration-0", tmp_path / "iteration-1"
        build_generator("openai", first, WHERE, {"base_url": url}).close()
        openai_backend(first, WHERE, base_url=url).close()  # the same model again is fine
        with pytest.raises(UserError, match=(
            rf"generate.options.base_url: the server at {url} serves one fixed model, but the run now needs "
            rf"{second}; use generate.options.launch")):
            openai_backend(second, WHERE, base_url=url)


@pytest.mark.parametrize(("options", "match"), [
    ({}, r"generate.options: the openai backend needs exactly one of base_url .* got neither"),
    ({"base_url": "http://h/v1", "launch": "vllm"}, r"generate.options: .* got both"),
    ({"base_url": "127.0.0.1:8000"}, r"generate.options.base_url: expected an http\(s\) URL"),
    ({"base_url": "http://h:8000/v1/chat/completions"}, r"generate.options.base_url: expected .* API root"),
    ({"launch": ""}, r"generate.options.launch: expected 'transformers', 'vllm' or a command"),
    ({"launch": "vllm", "concurrency": 0}, r"generate.options.concurrency: expected a whole number .* got 0"),
    ({"launch": "vllm", "timeout": "fast"}, r"generate.options.timeout: expected seconds > 0, got 'fast'"),
    ({"launch": "vllm", "retries": -1}, r"generate.options.retries: expected a whole number >= 0"),
    ({"launch": "vllm", "startup_timeout": True}, r"generate.options.startup_timeout: expected seconds"),
    ({"launch": "vllm", "extra_body": ["top_k"]}, r"generate.options.extra_body: expected a mapping"),
    ({"launch": "vllm", "extra_body": {"n": 4}}, r"generate.options.extra_body: n set by the run itself"),
    ({"launch": "vllm", "served_model": 3}, r"generate.options.served_model: expected a model name"),
    ({"launch": "vllm", "concurency": 2}, r"generate.options: the openai backend does not take concurency "
                                          r"\(did you mean concurrency\?\)"),
    ({"launch": "{model} {host}"}, r"generate.options.launch: the command .* must serve on \{port\}"),
])
def test_bad_options_are_one_line_naming_the_key(tmp_path, options, match):
    assert GENERATORS["openai"] is openai_backend
    with pytest.raises(UserError, match=match) as e:
        build_generator("openai", tmp_path, WHERE, options)
    assert "\n" not in str(e.value)


def test_the_client_alone_lists_models_and_chats():
    """What the distillation recipe's teacher uses, without the Generator around it."""
    with scripted(answer("hello", tokens=2)) as (url, seen):
        client = OpenAIClient(url, timeout=5)
        assert client.models() == ["served-x"] and client.model == "served-x"
        [c] = client.chat([{"role": "user", "content": "hi"}], SamplingParams(max_new_tokens=3), n=1, seed=9)
        assert (c.text, c.num_tokens, c.finish_reason) == ("hello", 2, "stop")
        assert seen[0][0]["seed"] == 9
        client.close()


def test_launch_vllm_builds_its_command_line(tmp_path, monkeypatch):
    """vllm cannot run here (no GPU); its command line is what can be checked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vllm").write_text("#!/bin/sh\n")
    (bin_dir / "vllm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    model = Path("/models/my model")
    assert launch_command("vllm", model, "127.0.0.1", 8123, WHERE)[1:] == [
        "serve", "/models/my model", "--host", "127.0.0.1", "--port", "8123"]
    argv = launch_command("transformers", model, "127.0.0.1", 8123, WHERE)
    assert argv[0] == str(Path(sys.executable).parent / "transformers")
    assert argv[1:] == ["serve", "/models/my model", "--host", "127.0.0.1", "--port", "8123",
                        "--device", "cpu", "--dtype", "float32"]


@pytest.mark.e2e
def test_distillation_from_a_loopback_endpoint_with_the_student_evaluated_through_launched_servers(
        served, tiny_model, sums_jsonl, tmp_path):
    """The teacher is the module's `transformers serve` at its URL; the run's own evaluation goes through
    `generate.backend: openai` with `launch: transformers`: a server for the base model, one for the student."""
    from selfplay.files import read_jsonl
    from tests.conftest import run_cli, tiny_overrides

    url = served.client.base_url
    proc = run_cli("run", *tiny_overrides(tiny_model, sums_jsonl, tmp_path, name="d", recipe="distill", **{
        "teacher.model": url, "teacher.max_new_tokens": 6, "generate.backend": "openai",
        "generate.options": "{launch: transformers, startup_timeout: 120}", "eval.samples": 0,
        "guards.control": "[]", "guards.fresh_size": 0}), timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    it1 = tmp_path / "d" / "iter-001"
    samples = read_jsonl(it1 / "samples.jsonl")
    assert len(samples) == 6 and {s["model"] for s in samples} == {served.model_name}
    assert json.loads((it1 / "generate.json").read_text())["model"] == url
    train = read_jsonl(it1 / "train.jsonl")  # PassFirst keeps each problem's one (greedy) answer
    assert [e["completion"] for e in train] == [s["completion"] for s in samples]
    assert (it1 / "model" / "model.safetensors").is_file()
    evaluated = read_jsonl(it1 / "eval_samples.jsonl")  # the trained student, answered by its own server
    assert len(evaluated) == 4 and all(r["model"] == str(it1 / "model") for r in evaluated)


def test_requests_spread_over_several_servers_and_one_that_stops_answering_is_taken_out(capsys):
    """Two servers of one model: each request goes to the less busy one; one that keeps failing (503 after the
    client's retries) is taken out with one line and its requests go to the other; none left is one line."""
    busy = (503, {}, b'{"error": {"message": "overloaded"}}')
    with scripted(answer("a")) as (good, seen_good), scripted(answer("b")) as (other, seen_other):
        gen = OpenAIGenerator(base_url=[good, other], served_model="m", retries=0, timeout=5, concurrency=2)
        assert gen.client.concurrency == 4  # per server
        texts(gen, PROBLEMS * 3, SamplingParams())
        assert seen_good and seen_other  # both took requests
        gen.close()
    with scripted(answer("a")) as (good, seen_good), scripted(busy) as (bad, seen_bad):
        gen = OpenAIGenerator(base_url=[bad, good], served_model="m", retries=0, timeout=5, concurrency=2)
        assert texts(gen, PROBLEMS * 3, SamplingParams()) == [["a"]] * 12  # every problem answered, once
        out = capsys.readouterr().out
        assert out.count(f"{bad} stopped answering (no answer after 1 try: HTTP 503 'overloaded'); its requests "
                         "go to the other 1 server(s)") == 1
        assert len(seen_good) == 12 and len(seen_bad) >= 1
        gen.close()
    with scripted(busy) as (one, _), scripted(busy) as (two, _):
        gen = OpenAIGenerator(base_url=[one, two], served_model="m", retries=0, timeout=5)
        with pytest.raises(UserError, match=rf"none of the 2 servers answers chat/completions after 1 try \({one}: "
                                            r"HTTP 503 'overloaded'; .*: HTTP 503 'overloaded'\)") as e:
            texts(gen, PROBLEMS[:1], SamplingParams())
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=r"generate.options.base_url: expected .* or a list of distinct ones"):
        OpenAIGenerator(base_url=[good, good + "/"], served_model="m")


@pytest.mark.e2e
def test_two_transformers_servers_one_killed_in_the_middle_of_a_stage_give_one_servers_samples(
        served, tiny_model, capsys):
    """Two real `transformers serve` servers of the tiny model behind one base_url list; one is SIGKILLed after
    the first batch. The stage finishes on the other, and every sample is the one a single server gives
    (seeded per request)."""
    from selfplay.generation.openai_compat import TRANSFORMERS_SAMPLING, ServerProcess

    servers = []
    try:
        for _ in range(2):
            port = free_port()
            url = f"http://127.0.0.1:{port}/v1"
            servers.append(ServerProcess(launch_command("transformers", tiny_model, "127.0.0.1", port, WHERE), url,
                                         120))
        gen = OpenAIGenerator(base_url=[s.base_url for s in servers], concurrency=1, timeout=60, retries=1,
                              extra_body={"generation_config": TRANSFORMERS_SAMPLING})
        gen.client.ignores_n = True  # as launch: transformers knows
        params = SamplingParams(n=2, temperature=1.0, max_new_tokens=5, seed=11)
        problems = [Problem(f"q{i}", f"What is {i} + {i}?", str(2 * i)) for i in range(8)]
        got = []
        for batch in gen.generate(problems, params, batch_size=4):
            got += [[c.text for c in completions] for _, completions in batch]
            if len(got) == 2:
                os.killpg(servers[1].pid, signal.SIGKILL)
        assert len(got) == 8
        assert got == texts(served, problems, params)
        assert f"{servers[1].base_url} stopped answering" in capsys.readouterr().out
        gen.close()
    finally:
        for s in servers:
            s.close()
