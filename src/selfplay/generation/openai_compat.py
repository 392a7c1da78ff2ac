"""Generation backend over an OpenAI-compatible chat-completions server (`generate.backend: openai`).

A server somebody else runs (`base_url`), or one this backend starts for each model the run samples
(`launch`): `transformers serve` on CPU or one GPU, `vllm serve` on a GPU, or any command that serves
`/v1/chat/completions`. HTTP, timeouts, retries with backoff and the server's Retry-After are the official `openai`
client's (a well-kept library does this better than our own urllib client did); what servers differ in is ours.
`base_url` may list several servers of one model (one vLLM server per node): each request goes to the server
with the fewest requests in flight, a server that stops answering is taken out (one line) and its requests go to
the others, and the stage stops with one line only when none is left.

What the backend sends: one POST `{base_url}/chat/completions` per problem with the problem's turns
(`Problem.chat()`) as `messages`, `n`, `temperature` (0 is greedy), `top_p`, `max_tokens` and a `seed`
derived from (params.seed, problem id, sample index), so a sample does not change with batch size or order,
wherever the server honours `seed`. The server renders the chat template and decodes.

What servers differ in, and how it is met:
  n             many servers (transformers serve among them) answer one choice whatever `n` asks. The client
                sees the shortfall, makes up the rest with separate n=1 requests (each its own seed), prints
                one line, and asks that server for one choice per request from then on (`launch: transformers`
                does so from the start).
  temperature   transformers serve samples only when the model's generation_config sets do_sample; it
                answers greedily otherwise, whatever `temperature` says. `launch: transformers` sends
                `generation_config: {"do_sample": true, "top_k": 0}` with every request (temperature 0 still
                turns sampling off), which also matches the transformers backend's top-p over the full
                vocabulary. For such a server at a `base_url`, set that in `extra_body`. A client that gets
                identical samples for every problem at temperature > 0 prints one line saying so.
  seed          transformers serve seeds torch's global generator per request, so parallel requests re-seed
                each other mid-generation: `launch: transformers` sends one request at a time (it generates
                one at a time anyway) so seeded samples repeat. vLLM seeds each request on its own.
  token counts  `usage.completion_tokens` when the answer holds one choice; servers count the stop token
                (the transformers backend does not), so a "stop" completion counts one token more here. With
                several choices in one answer: the launched model's tokenizer counts each text; without one
                (`base_url`), usage is split evenly between them, an estimate. An answer without usage is
                counted by the tokenizer, else estimated at 4 characters a token.
  finish        "length" stays "length"; anything else ("stop", "eos", "tool_calls") is "stop".

generate.options (one of base_url / launch is required):
  base_url         the API root of a running server, e.g. http://127.0.0.1:8000/v1, or a list of them (servers
                   of the same model, spread by load). It serves one model, so a run whose later iterations
                   sample their own trained model must use `launch`.
  launch           'transformers' (`transformers serve MODEL --host 127.0.0.1 --port P --device D --dtype T`,
                   needs `pip install 'selfplay[serve]'`), 'vllm' (`vllm serve {model} --host {host} --port
                   {port}`; vllm needs its own environment, see selfplay/generation/vllm.py, then give the
                   command with its path as a template), or a command template with {model}, {host}, {port}.
                   The server starts in its own process group on a free port of 127.0.0.1 with
                   HF_HUB_OFFLINE=1, its output in a log file in a temporary folder; close() stops it.
  served_model     the model name to request (default: the first id GET {base_url}/models lists)
  api_key_env      environment variable holding the API key, sent as a Bearer token when set (OPENAI_API_KEY)
  concurrency      requests in flight at once per server (8; 1 for launch: transformers, see seed above)
  timeout          seconds a request may wait for the server's answer (600)
  retries          retries of a request after a connection error, a timeout, HTTP 408, 409, 429 or 5xx, with
                   the openai client's exponential backoff and jitter, or the server's Retry-After (3); other 4xx
                   answers are not retried; after the last, the server is taken out
  startup_timeout  seconds a launched server has to answer GET /v1/models (300)
  extra_body       fields merged into every request, for a server's own knobs (vLLM's top_k, min_p, ...)

Not covered: streaming, tool calls, logprobs (the judge's constrained mode needs a local model). Launched servers
are `servers.ServerProcess`: no server outlives its run, SIGKILL included.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from selfplay.errors import UserError
from selfplay.generation.base import sample_seed
from selfplay.generation.servers import ServerProcess, free_port, launch_command
from selfplay.interfaces import Completion, SamplingParams
from selfplay.models import Placement
from selfplay.records import Message, Problem

__all__ = ["OpenAIClient", "OpenAIGenerator", "ServerProcess", "forget_fixed_servers", "free_port",
           "launch_command", "openai_backend", "request_seed"]

OPTIONS = frozenset({
    "base_url", "launch", "served_model", "api_key_env", "concurrency", "timeout", "retries", "startup_timeout",
    "extra_body",
})
SENT_BY_CLIENT = frozenset({"model", "messages", "n", "temperature", "top_p", "max_tokens", "seed", "stream"})
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
QUOTE = 200  # characters of a bad answer quoted in an error
TRANSFORMERS_SAMPLING = json.dumps({"do_sample": True, "top_k": 0})


def request_seed(seed: int, problem_id: str, k: int) -> int:
    """The seed sent for sample k of a problem: the vLLM backend's, cut to 31 bits, which every server takes."""
    return sample_seed(seed, problem_id, k) >> 32


def _quote(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return repr(text[:QUOTE] + ("..." if len(text) > QUOTE else ""))


def _server_message(raw: bytes) -> str:
    """The error message inside a failed answer: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or text."""
    try:
        answer = json.loads(raw)
    except ValueError:
        return _quote(raw)
    if isinstance(answer, dict):
        error = answer.get("error", answer.get("detail", answer.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            return _quote(error if isinstance(error, str) else json.dumps(error))
    return _quote(raw)


def _reason(e: BaseException) -> str:
    """Why a connection failed, in a few words ('Connection refused', 'timed out'), from the SDK's error chain."""
    import openai

    if isinstance(e, openai.APITimeoutError):
        return "timed out"
    seen: BaseException | None = e
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    inner = e.__cause__ or e
    return re.sub(r"^\[Errno \d+\] ", "", str(inner)) or type(inner).__name__


class _Unanswered(Exception):
    """A server that gave no usable answer after the SDK's retries: unreachable, timed out, 429 or 5xx."""


class _Server:
    """One server of a client's list: its official SDK client, the requests it holds now, and why it is out."""

    def __init__(self, url: str, api_key: str | None, timeout: float, retries: int):
        import openai

        self.url = url.rstrip("/")
        loopback = urllib.parse.urlsplit(self.url).hostname in LOOPBACK
        # A proxy from the environment must not see loopback requests (a launched server); others keep it.
        self.sdk = openai.OpenAI(base_url=self.url, api_key=api_key or (lambda: ""), timeout=timeout,
                                 max_retries=retries, http_client=openai.DefaultHttpxClient(trust_env=not loopback))
        self.busy = 0
        self.out: str | None = None  # why it stopped answering, once it has

    def close(self) -> None:
        self.sdk.close()


class OpenAIClient:
    """Chat completions from one or more OpenAI-compatible servers serving the same model, over the official
    `openai` client (HTTP, timeouts, retries with backoff and Retry-After). Each request goes to the server with the
    fewest requests in flight; a server that stops answering is taken out and its requests go to the others; the
    stage stops with one line only when none is left. On top: servers that ignore `n`, and token counts."""

    def __init__(
        self, base_url: str | Sequence[str], model: str | None = None, *, api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8, timeout: float = 600.0, retries: int = 3, extra_body: Mapping[str, Any] | None = None,
        count_tokens: Callable[[str], int] | None = None,
    ):
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        self.api_key = os.environ.get(api_key_env) or None
        self.servers = [_Server(u, self.api_key, timeout, retries) for u in urls]
        self.base_url = ", ".join(s.url for s in self.servers)  # how messages name the server(s)
        self.per_server = concurrency
        self.concurrency = concurrency * len(self.servers)  # threads: `concurrency` requests in flight per server
        self.timeout = timeout
        self.retries = retries
        self.extra_body = dict(extra_body or {})
        self.count_tokens = count_tokens
        self.ignores_n: bool | None = None  # learnt from the first answer to a request for n > 1
        self.requests_by_n: Counter[int] = Counter()  # requests answered, by the n they asked for
        self.said_same = False
        self._lock = threading.Condition()  # guards busy/out; notified when a request ends
        self._turn = 0  # where the search for the least busy server starts, so ties rotate
        self._pool: ThreadPoolExecutor | None = None
        try:
            self.model = model or self.models()[0]
        except BaseException:
            for server in self.servers:
                server.close()
            raise

    # -- one request, on the least busy server that still answers --------------------------------------------
    def _pick(self) -> _Server | None:
        """The least busy server that still answers, once it has fewer than `concurrency` requests in flight (after
        a server is taken out, the others keep their own limit); None when none is left."""
        with self._lock:
            while True:
                live = [s for s in self.servers if s.out is None]
                if not live:
                    return None
                self._turn += 1
                order = live[self._turn % len(live):] + live[: self._turn % len(live)]
                server = min(order, key=lambda s: s.busy)
                if server.busy < self.per_server:
                    server.busy += 1
                    return server
                self._lock.wait()

    def _request(self, server: _Server, path: str, call: Callable[[Any, dict[str, Any]], Any]) -> Any:
        """One request through the SDK (which retries it); the parsed JSON answer."""
        import openai

        url = f"{server.url}/{path}"
        headers = {} if self.api_key else {"Authorization": openai.omit}  # no key: no Authorization header
        try:
            raw = call(server.sdk, headers)
        except openai.APIStatusError as e:
            message = _server_message(e.response.content)
            if e.status_code in (408, 409, 429) or e.status_code >= 500:
                raise _Unanswered(f"HTTP {e.status_code} {message}") from None
            hint = " (is base_url the API root, like http://HOST:8000/v1?)" if e.status_code == 404 else ""
            raise UserError(f"{url} refused the request: HTTP {e.status_code} {message}{hint}") from None
        except openai.APIConnectionError as e:  # APITimeoutError too
            raise _Unanswered(_reason(e)) from None
        content = raw.http_response.content
        try:
            return json.loads(content)
        except ValueError:
            raise UserError(f"{url} answered with something that is not JSON: {_quote(content)}") from None

    def _send(self, path: str, call: Callable[[Any, dict[str, Any]], Any]) -> tuple[_Server, Any]:
        while True:
            server = self._pick()
            if server is None:
                raise self._none_left(path)
            try:
                return server, self._request(server, path, call)
            except _Unanswered as e:
                self._take_out(server, str(e))
            finally:
                with self._lock:
                    server.busy -= 1
                    self._lock.notify_all()

    def _tries(self) -> str:
        return f"{self.retries + 1} tries" if self.retries else "1 try"

    def _take_out(self, server: _Server, why: str) -> None:
        with self._lock:
            if server.out is not None:
                return
            server.out = why
            left = [s for s in self.servers if s.out is None]
            self._lock.notify_all()  # a request waiting for a slot may now find none left
        if left:
            print(f"{server.url} stopped answering (no answer after {self._tries()}: {why}); its requests go to "
                  f"the other {len(left)} server(s)", flush=True)

    def _none_left(self, path: str) -> UserError:
        if len(self.servers) == 1:
            server = self.servers[0]
            return UserError(f"{server.url}/{path}: no answer after {self._tries()} ({server.out})")
        why = "; ".join(f"{s.url}: {s.out}" for s in self.servers)
        return UserError(f"none of the {len(self.servers)} servers answers {path} after {self._tries()} ({why})")

    # -- the API ---------------------------------------------------------------------------------------------
    def models(self) -> list[str]:
        """The model ids the server lists at GET {base_url}/models (the first server that answers)."""
        server, answer = self._send("models", lambda sdk, h: sdk.models.with_raw_response.list(extra_headers=h))
        data = answer.get("data") if isinstance(answer, dict) else None
        ids = [m["id"] for m in data or [] if isinstance(m, dict) and isinstance(m.get("id"), str)]
        if not ids:
            raise UserError(f"{server.url}/models lists no model ids: {_quote(json.dumps(answer))}; set served_model")
        return ids

    def chat(self, messages: list[Message], params: SamplingParams, n: int, seed: int) -> list[Completion]:
        """One request asking for `n` choices; returns the choices the server gave (maybe fewer than `n`)."""
        fields: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": params.temperature,
                                  "top_p": params.top_p, "max_tokens": params.max_new_tokens, "seed": seed}
        if n > 1:
            fields["n"] = n
        extra = self.extra_body or None
        server, answer = self._send("chat/completions", lambda sdk, h: sdk.chat.completions.with_raw_response.create(
            **fields, extra_body=extra, extra_headers=h))
        with self._lock:
            self.requests_by_n[n] += 1
        return self._completions(answer, f"{server.url}/chat/completions")

    def _completions(self, answer: Any, url: str) -> list[Completion]:
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{url} answered without choices: {_quote(json.dumps(answer))}")
        texts, finishes = [], []
        for i, choice in enumerate(choices):
            message = choice.get("message") if isinstance(choice, dict) else None
            content = message.get("content") if isinstance(message, dict) else None
            finish = choice.get("finish_reason") if isinstance(choice, dict) else None
            if content is None and finish == "length":
                content = ""  # a reasoning server that spent the whole budget thinking
            if not isinstance(content, str):
                raise UserError(f"{url}: choice {i} has no text content: {_quote(json.dumps(choice))}")
            texts.append(content)
            finishes.append("length" if finish == "length" else "stop")
        usage = answer.get("usage")
        used = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if not isinstance(used, int) or isinstance(used, bool):
            used = None
        if used is not None and len(texts) == 1:
            counts = [used]
        elif self.count_tokens is not None:
            counts = [self.count_tokens(t) for t in texts]
        elif used is not None:  # several choices, one total: an even split (documented as an estimate)
            counts = [used // len(texts) + (i < used % len(texts)) for i in range(len(texts))]
        else:
            counts = [math.ceil(len(t) / 4) for t in texts]
        return [Completion(t, c, f) for t, c, f in zip(texts, counts, finishes, strict=True)]

    def _map(self, calls: list[tuple[list[Message], int, int]], params: SamplingParams) -> list[list[Completion]]:
        """Run (messages, n, seed) requests `concurrency` at a time; answers in the order of `calls`."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="openai-client")
        futures = [self._pool.submit(self.chat, messages, params, n, seed) for messages, n, seed in calls]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    def sample(
        self, conversations: Sequence[list[Message]], params: SamplingParams, seeds: Sequence[Sequence[int]]
    ) -> list[list[Completion]]:
        """Exactly `params.n` completions per conversation, sample k drawn with seeds[i][k]; all sent concurrently."""
        n = params.n
        out: list[list[Completion]] = [[] for _ in conversations]
        one_each = n == 1 or self.ignores_n
        wanted = [(i, k) for i in range(len(conversations)) for k in (range(n) if one_each else [0])]
        calls = [(conversations[i], 1 if one_each else n, seeds[i][k]) for i, k in wanted]
        for (i, _), got in zip(wanted, self._map(calls, params), strict=True):
            out[i].extend(got)
        if n > 1 and not one_each:
            short = [i for i, got in enumerate(out) if len(got) < n]
            if short and not self.ignores_n:
                print(f"{self.base_url} answered {len(out[short[0]])} of the {n} choices asked for (it ignores n); "
                      "asking it for one choice per request from now on", flush=True)
            self.ignores_n = bool(short)
            wanted = [(i, k) for i in short for k in range(len(out[i]), n)]
            calls = [(conversations[i], 1, seeds[i][k]) for i, k in wanted]
            for (i, _), got in zip(wanted, self._map(calls, params), strict=True):
                out[i].extend(got)
        if (params.temperature > 0 and n > 1 and len(conversations) * n >= 4 and not self.said_same
                and all(len({c.text for c in got}) == 1 for got in out)):
            self.said_same = True
            print(f"{self.base_url} gave identical samples of every problem at temperature {params.temperature}; "
                  "it may ignore temperature (transformers serve does unless the model's generation_config sets "
                  f"do_sample: send extra_body generation_config: '{TRANSFORMERS_SAMPLING}')", flush=True)
        return [got[:n] for got in out]

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        for server in self.servers:
            server.close()


def _token_counter(model_path: Path) -> Callable[[str], int] | None:
    """Counts tokens with the launched model's own tokenizer; None when the folder has none transformers reads."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    except Exception:  # counts then come from the server's usage; the server itself reports a broken folder
        return None
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _check_options(field: str, base_url: Any, launch: Any, served_model: Any, api_key_env: Any, concurrency: Any,
                   timeout: Any, retries: Any, startup_timeout: Any, extra_body: Any) -> None:
    """One line per wrong value, naming `{field}.<key>`."""

    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    if (base_url is None) == (launch is None):
        raise UserError(f"{field}: the openai backend needs exactly one of base_url (a running server's "
                        "http://HOST:PORT/v1) and launch ('transformers', 'vllm' or a command with {model} {host} "
                        f"{{port}}); got {'both' if base_url is not None else 'neither'}")
    problems = {
        "base_url": base_url is not None and not (
            (urls := [base_url] if isinstance(base_url, str) else base_url if isinstance(base_url, list) else [])
            and all(isinstance(u, str) and u.startswith(("http://", "https://"))
                    and not u.rstrip("/").endswith("/chat/completions") for u in urls)
            and len({u.rstrip("/") for u in urls}) == len(urls)
        ) and "an http(s) URL of the API root, such as http://127.0.0.1:8000/v1, or a list of distinct ones",
        "launch": launch is not None and not (isinstance(launch, str) and launch.strip())
        and "'transformers', 'vllm' or a command template with {model}, {host} and {port}",
        "served_model": served_model is not None and not (isinstance(served_model, str) and served_model)
        and "a model name the server serves",
        "api_key_env": not (isinstance(api_key_env, str) and api_key_env) and "an environment variable's name",
        "concurrency": concurrency is not None and not (
            isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency >= 1
        ) and "a whole number of requests >= 1",
        "timeout": not (number(timeout) and timeout > 0) and "seconds > 0",
        "retries": not (isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0)
        and "a whole number >= 0",
        "startup_timeout": not (number(startup_timeout) and startup_timeout > 0) and "seconds > 0",
        "extra_body": extra_body is not None and not (
            isinstance(extra_body, dict) and all(isinstance(k, str) for k in extra_body)
        ) and "a mapping of request fields",
    }
    values = dict(base_url=base_url, launch=launch, served_model=served_model, api_key_env=api_key_env,
                  concurrency=concurrency, timeout=timeout, retries=retries, startup_timeout=startup_timeout,
                  extra_body=extra_body)
    for key, expected in problems.items():
        if expected:
            raise UserError(f"{field}.{key}: expected {expected}, got {values[key]!r}")
    taken = sorted(SENT_BY_CLIENT & set(extra_body or {}))
    if taken:
        raise UserError(f"{field}.extra_body: {', '.join(taken)} set by the run itself (generate's sampling "
                        "settings and the model); extra_body is for other fields")
    try:
        json.dumps(extra_body)
    except (TypeError, ValueError) as e:
        raise UserError(f"{field}.extra_body: not JSON ({e})") from None


class OpenAIGenerator:
    """The Generator interface over an OpenAI-compatible server; the module docstring gives the options."""

    def __init__(
        self, *, base_url: str | list[str] | None = None, launch: str | None = None, model_path: Path | None = None,
        served_model: str | None = None, api_key_env: str = "OPENAI_API_KEY", concurrency: int | None = None,
        timeout: float = 600.0, retries: int = 3, startup_timeout: float = 300.0,
        extra_body: Mapping[str, Any] | None = None, where: Placement | None = None, field: str = "generate.options",
    ):
        _check_options(field, base_url, launch, served_model, api_key_env, concurrency, timeout, retries,
                       startup_timeout, extra_body)
        self.server: ServerProcess | None = None
        body = dict(extra_body or {})
        count_tokens, ignores_n = None, None
        if launch is not None:
            if model_path is None:
                raise UserError(f"{field}.launch: a launched server needs the model folder to serve")
            port = free_port()
            argv = launch_command(launch, Path(model_path), "127.0.0.1", port, where, field)
            base_url = f"http://127.0.0.1:{port}/v1"
            if launch == "transformers":
                body = {"generation_config": TRANSFORMERS_SAMPLING, **body}
                concurrency = concurrency or 1
                ignores_n = True
            count_tokens = _token_counter(Path(model_path))
        try:
            if launch is not None:
                self.server = ServerProcess(argv, base_url, startup_timeout, field)
            self.client = OpenAIClient(
                base_url, served_model, api_key_env=api_key_env, concurrency=concurrency or 8, timeout=timeout,
                retries=retries, extra_body=body, count_tokens=count_tokens,
            )
        except BaseException:
            if self.server is not None:
                self.server.close(keep_log=True)
            raise
        self.client.ignores_n = ignores_n
        self.model_name = str(model_path) if launch is not None else self.client.model

    def generate(
        self, problems: Sequence[Problem], params: SamplingParams, batch_size: int
    ) -> Iterator[list[tuple[Problem, list[Completion]]]]:
        """`batch_size // n` problems at a time, sent concurrently, yielded in the given order with n samples each."""
        per_batch = max(1, batch_size // params.n)
        for start in range(0, len(problems), per_batch):
            chunk = problems[start : start + per_batch]
            seeds = [[request_seed(params.seed, p.id, k) for k in range(params.n)] for p in chunk]
            results = self.client.sample([p.chat() for p in chunk], params, seeds)
            yield list(zip(chunk, results, strict=True))

    def close(self) -> None:
        """Stop the client's threads and the launched server, if any; safe to call twice."""
        self.client.close()
        server, self.server = self.server, None
        if server is not None:
            server.close()


_FIXED_SERVERS: dict[str, str] = {}  # base_url -> the first model path the run asked it for


def forget_fixed_servers() -> None:
    """Forget which model each base_url was first asked for (a new run in the same process; tests)."""
    _FIXED_SERVERS.clear()


def openai_backend(model_path: Path, where: Placement, **options: Any) -> OpenAIGenerator:
    """Factory for `generate.backend: openai`; `options` are the generate.options listed in the module docstring."""
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        close = difflib.get_close_matches(unknown[0], OPTIONS, n=1)
        raise UserError(f"generate.options: the openai backend does not take {', '.join(unknown)}"
                        + (f" (did you mean {close[0]}?)" if close else f" (it takes {', '.join(sorted(OPTIONS))})"))
    base_url = options.get("base_url")
    if isinstance(base_url, str | list) and options.get("launch") is None:
        urls = [base_url] if isinstance(base_url, str) else base_url
        key, path = ", ".join(str(u).rstrip("/") for u in urls), os.path.abspath(model_path)
        first = _FIXED_SERVERS.get(key)
        if first is not None and first != path:
            raise UserError(f"generate.options.base_url: the server at {key} serves one fixed model, but the run "
                            f"now needs {model_path}; use generate.options.launch to serve each iteration's model")
        gen = OpenAIGenerator(**options)
        _FIXED_SERVERS[key] = path
        return gen
    return OpenAIGenerator(model_path=Path(model_path), where=where, **options)
