"""What runs inside the sandboxes. Standard library only: the parent passes this file's text to the interpreter
with `-c`, so nothing of the package has to be readable from inside.

Two processes, each in a sandbox of its own (own PID namespace, own throwaway filesystem, own uid):

    candidate  loads the untrusted program and answers calls of its entry point, one JSON line per call
    runner     holds the tests; calls the entry point through a proxy and prints each test's outcome as a
               JSON line on its stdout, which only the trusted parent reads

The untrusted code never runs in the process that decides whether a test passed: it cannot patch `assert`, the
harness or the result stream, and a fake "all tests passed" print lands in its own output, which is only shown.
Values cross between the two as plain data (None, bool, int, float, str, bytes, complex, list, tuple, dict, set,
frozenset), rebuilt from JSON by `decode`, so an object whose `__eq__` always says True never reaches a test.
"""

import ast
import builtins
import json
import os
import resource
import sys

MAX_MESSAGE = 4 << 20  # bytes in one value crossing between the sandboxes
MAX_DEPTH = 200
MAX_RSS_KB = 1 << 40
sys.set_int_max_str_digits(0)  # a right answer may be a 5,000-digit int; MAX_MESSAGE still bounds it


def encode(v, depth=0):
    if depth > MAX_DEPTH:
        raise ValueError("the value is nested too deeply to send")
    t = type(v)
    if v is None or t is bool or t is int or t is float or t is str:
        return v
    if t is list:
        return [encode(x, depth + 1) for x in v]
    if t is tuple:
        return {"t": [encode(x, depth + 1) for x in v]}
    if t is dict:
        return {"d": [[encode(k, depth + 1), encode(x, depth + 1)] for k, x in v.items()]}
    if t is set or t is frozenset:
        return {"s" if t is set else "f": [encode(x, depth + 1) for x in v]}
    if t is bytes:
        return {"b": v.decode("latin-1")}
    if t is complex:
        return {"c": [v.real, v.imag]}
    raise TypeError(f"a {t.__name__} cannot be passed between the program and its tests; only plain data "
                    "(None, bool, int, float, str, bytes, list, tuple, dict, set) can")


def decode(v, depth=0):
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    t = type(v)
    if v is None or t is bool or t is int or t is float or t is str:
        return v
    if t is list:
        return [decode(x, depth + 1) for x in v]
    if t is dict and len(v) == 1:
        ((tag, body),) = v.items()
        if tag == "b" and type(body) is str:
            return body.encode("latin-1")
        if type(body) is not list:
            raise ValueError("malformed value")
        if tag == "t":
            return tuple(decode(x, depth + 1) for x in body)
        if tag == "s":
            return {decode(x, depth + 1) for x in body}
        if tag == "f":
            return frozenset(decode(x, depth + 1) for x in body)
        if tag == "c" and len(body) == 2 and all(type(x) in (int, float) for x in body):
            return complex(body[0], body[1])
        if tag == "d":
            out = {}
            for pair in body:
                if type(pair) is not list or len(pair) != 2:
                    raise ValueError("malformed dict")
                out[decode(pair[0], depth + 1)] = decode(pair[1], depth + 1)
            return out
    raise ValueError("malformed value")


def rss_kb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def send(f, obj):
    f.write((json.dumps(obj) + "\n").encode())
    f.flush()


def receive(f):
    """One message, or None at end of stream. Raises ValueError on a message that is too long or malformed."""
    line = f.readline(MAX_MESSAGE + 1)
    if not line:
        return None
    if len(line) > MAX_MESSAGE or not line.endswith(b"\n"):
        raise ValueError(f"a message over {MAX_MESSAGE} bytes")
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"malformed message ({type(e).__name__})") from None
    if type(obj) is not dict:
        raise ValueError("malformed message")
    return obj


def _short(e, with_type=True):
    text = f"{type(e).__name__}: {e}" if str(e) and with_type else str(e) if str(e) else type(e).__name__
    if isinstance(e, OSError) and e.errno is not None:
        text += f" [errno {e.errno}]"
    return text[:500]


# --- the candidate: the untrusted program ------------------------------------------------------------------


def candidate(req_fd, rep_fd):
    requests = os.fdopen(req_fd, "rb")
    replies = os.fdopen(rep_fd, "wb")
    # Sent before any of the program runs: a sandbox that never says this failed to start (an infrastructure
    # error), which no program can fake by printing what bwrap prints and exiting.
    send(replies, {"started": True})
    spec = json.loads(sys.stdin.read())
    sys.stdin = open(os.devnull)
    ns = {"__name__": "__candidate__", "__builtins__": builtins}
    try:
        exec(compile(spec["context"] + "\n" + spec["code"], "<program>", "exec"), ns)
        fn = ns.get(spec["entry_point"])
        if not callable(fn):
            raise NameError(f"the program defines no function '{spec['entry_point']}'")
    except SystemExit as e:
        send(replies, {"load_error": f"the program exited while loading (SystemExit {e.code!r})"})
        return
    except BaseException as e:  # noqa: BLE001 - whatever the program raises is its verdict
        send(replies, {"load_error": _short(e)})
        return
    send(replies, {"ready": True, "rss_kb": rss_kb()})
    while True:
        req = receive(requests)
        if req is None:
            return
        try:
            value = fn(*decode(req["args"]), **decode(req["kwargs"]))
            reply = {"value": encode(value), "rss_kb": rss_kb()}
            send(replies, reply)
        except BaseException as e:  # noqa: BLE001 - what the call (or sending its value) raised is its verdict
            send(replies, {"raise": {"type": type(e).__name__, "message": _short(e, with_type=False)},
                           "rss_kb": rss_kb()})


# --- the runner: the tests ---------------------------------------------------------------------------------


class CandidateGone(Exception):
    """The candidate process ended or broke the protocol; no later test can run."""


class CandidateError(Exception):
    """The program raised an exception that is not one of Python's built-in ones."""


class Proxy:
    def __init__(self, name, requests, replies, rss):
        self.__name__ = name
        self._requests, self._replies = requests, replies
        self.rss_kb = rss  # the program's peak memory, as its process reports it (shown, never trusted)

    def __call__(self, *args, **kwargs):
        try:
            send(self._requests, {"args": encode(list(args)), "kwargs": encode(kwargs)})
        except (BrokenPipeError, OSError):
            raise CandidateGone("the program's process ended") from None
        try:
            reply = receive(self._replies)
        except ValueError as e:
            raise CandidateGone(f"the program's process sent {e}") from None
        if reply is None:
            raise CandidateGone("the program's process ended")
        if type(reply.get("rss_kb")) is int and 0 <= reply["rss_kb"] < MAX_RSS_KB:
            self.rss_kb = max(self.rss_kb, reply["rss_kb"])
        if "value" in reply:
            try:
                return decode(reply["value"])
            except (ValueError, TypeError, RecursionError) as e:
                raise CandidateGone(f"the program's process sent a malformed value ({e})") from None
        raised = reply.get("raise")
        if type(raised) is not dict:
            raise CandidateGone("the program's process sent a malformed reply")
        name, message = str(raised.get("type")), str(raised.get("message"))[:500]
        builtin = getattr(builtins, name, None)
        # Only plain exceptions are raised again as themselves; StopIteration and StopAsyncIteration would end
        # a test's own loop or map() early (a wrong function raising them could pass all(map(f, xs))).
        if (isinstance(builtin, type) and issubclass(builtin, Exception)
                and not issubclass(builtin, (StopIteration, StopAsyncIteration))):
            raise builtin(message)
        raise CandidateError(message)


def _names(node):
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _steps(spec):
    """(source, label, kind) in order, and the set-up to run first; kind is 'test', 'uses' (calls the candidate
    but asserts nothing) or 'setup'. A list of asserts: each is a test. A `check(candidate)` function: its
    top-level statements run one by one, and each that asserts something is a test."""
    entry = spec["entry_point"]
    if spec.get("tests") is not None:
        return [(src, f"tests[{k}]", "test") for k, src in enumerate(spec["tests"])], None
    tree = ast.parse(spec["check"])
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None or not check.args.args:
        raise ValueError("the tests define no function check(candidate)")
    setup = ast.Module(body=[n for n in tree.body if n is not check], type_ignores=[])
    param = check.args.args[0].arg
    steps = []
    for n in check.body:
        asserts = [a for a in ast.walk(n) if isinstance(a, ast.Assert) and not isinstance(a.test, ast.Constant)]
        uses = bool({param, entry} & _names(n))
        # A test asserts something (`assert True` does not count); a statement that only calls the candidate
        # (r = candidate(x)) sets up the next assert, and its failure is the program's, not the tests'.
        steps.append((ast.unparse(n), f"line {n.lineno}", "test" if asserts else "uses" if uses else "setup"))
    try:
        for src, _, _ in steps:
            compile(src, "<tests>", "exec")
    except SyntaxError:  # a `return` or `yield` in the body: the whole check is one test
        steps = [(f"check({param})", "check", "test")]
        setup = tree
    return steps, (ast.unparse(setup), param)


def runner(req_fd, rep_fd):
    spec = json.loads(sys.stdin.read())
    requests = os.fdopen(req_fd, "wb")
    replies = os.fdopen(rep_fd, "rb")
    # The report has stdout to itself: whatever the tests print (values the program returned, say) goes to
    # stderr, so no printed text can pass for a report line.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(obj):
        out.write(json.dumps(obj) + "\n")
        out.flush()

    try:
        steps, setup = _steps(spec)
    except (SyntaxError, ValueError) as e:
        emit({"event": "bad_tests", "error": _short(e)})
        return
    emit({"event": "tests", "names": [label for _, label, kind in steps if kind == "test"]})
    try:
        started = receive(replies)
    except ValueError:
        started = None
    if started is None or started.get("started") is not True:
        emit({"event": "no_start"})
        return
    try:
        hello = receive(replies)
    except ValueError as e:
        hello = {"load_error": f"the program's process sent {e}"}
    if hello is None:
        emit({"event": "exited", "before": "the tests"})
        return
    if "ready" not in hello:
        emit({"event": "load_error", "error": str(hello.get("load_error", "malformed greeting"))[:500]})
        return
    rss = hello.get("rss_kb")
    proxy = Proxy(spec["entry_point"], requests, replies, rss if type(rss) is int and 0 <= rss < MAX_RSS_KB else 0)
    ns = {"__name__": "__tests__"}
    try:
        exec(compile(spec.get("context", ""), "<context>", "exec"), ns)
        ns[spec["entry_point"]] = proxy
        if setup is not None:
            exec(compile(setup[0], "<tests>", "exec"), ns)
            ns[setup[1]] = proxy
    except CandidateGone as e:
        emit({"event": "exited", "before": "the tests", "error": str(e)})
        return
    except BaseException as e:  # noqa: BLE001 - the tests' own set-up failed
        emit({"event": "bad_tests", "error": "set-up: " + _short(e)})
        return
    index, failed = 0, False
    for src, label, kind in steps:
        try:
            exec(compile(src, "<tests>", "exec"), ns)
            error = None
        except CandidateGone as e:
            emit({"event": "exited", "before": label, "error": str(e)})
            return
        except BaseException as e:  # noqa: BLE001 - a failed assert, or what the program raised
            error = _short(e)
            if isinstance(e, AssertionError) and not str(e):
                error = f"AssertionError: {src.strip().splitlines()[0][:200]}"
        if kind == "test":
            emit({"event": "test", "index": index, "passed": error is None, "error": error, "rss_kb": proxy.rss_kb})
            index += 1
            failed = failed or error is not None
        elif error is not None:
            # A step that calls the program failed because of it; a set-up step failing after a failed test may
            # only be that test's consequence. Otherwise the tests themselves are broken.
            emit({"event": "aborted" if failed or kind == "uses" else "bad_tests", "error": f"{label}: {error}"})
            return
    emit({"event": "done"})


if __name__ == "__main__":
    role, a, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    (candidate if role == "candidate" else runner)(a, b)
