"""The code sandbox against programs that try to escape, starve or fool it. Each case is bounded (short limits)
so a failure of containment cannot harm the machine; each checks both the verdict and, from outside, that
nothing leaked (files, processes, connections)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import textwrap
import time
from pathlib import Path

import pytest

from selfplay.sandbox import Limits, Sandbox, SandboxError, SandboxUnavailable
from selfplay.sandbox import TestSpec as Spec
from selfplay.sandbox.inside import decode, encode

if shutil.which("bwrap") is None:
    if os.environ.get("CI"):
        pytest.fail("bubblewrap is not installed: make install should have installed it (apt-get install bubblewrap)",
                    pytrace=False)
    pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)", allow_module_level=True)

ADD = Spec("add", tests=["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add('a', 'b') == 'ab'"])
GOOD = "def add(a, b):\n    return a + b\n"
LIMITS = Limits(timeout=2, cpu_seconds=1, memory_mb=256, processes=24, tmp_mb=8, output_kb=64, workers=2)


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(LIMITS)


def sandbox_pids(sb: Sandbox) -> list[int]:
    """Processes running as any of the sandbox's uids (root only: elsewhere they run as the user)."""
    slots = range(sb.first_slot, sb.first_slot + sb.workers)
    uids = {str(sb.limits.uid_base + 2 * slot + role) for slot in slots for role in (0, 1)}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        uid_line = next((line for line in status.splitlines() if line.startswith("Uid:")), "")
        if uid_line.split()[1:2] and uid_line.split()[1] in uids:
            found.append(int(entry.name))
    return found


def assert_no_leftovers(sb: Sandbox) -> None:
    if os.geteuid() != 0:
        return
    deadline = time.time() + 3
    while sandbox_pids(sb) and time.time() < deadline:
        time.sleep(0.05)
    assert sandbox_pids(sb) == [], "a sandboxed process outlived its run"


def run(sb: Sandbox, program: str, spec: Spec = ADD):
    start = time.perf_counter()
    result = sb.run(textwrap.dedent(program), spec)
    return result, time.perf_counter() - start


def test_a_correct_program_passes_and_a_wrong_one_fails(sandbox):
    ok, _ = run(sandbox, GOOD)
    assert ok.passed and ok.status == "passed" and [t["passed"] for t in ok.tests] == [True, True, True]
    bad, _ = run(sandbox, "def add(a, b):\n    return a - b\n")
    assert not bad.passed and bad.status == "failed"
    assert [t["passed"] for t in bad.tests] == [False, True, False]
    assert bad.error.startswith("tests[0]: AssertionError: assert add(1, 2) == 3")


def test_humaneval_style_check_function_reports_each_assert(sandbox):
    check = textwrap.dedent("""
        def check(candidate):
            assert candidate(1, 2) == 3
            x = 10
            assert candidate(x, 1) == 11, "with a message"
            for a in range(3):
                assert candidate(a, a) == 2 * a
            assert True
    """)
    spec = Spec("add", check=check)
    ok, _ = run(sandbox, GOOD, spec)
    assert ok.passed and [t["name"] for t in ok.tests] == ["line 3", "line 5", "line 6"]
    off_by_one, _ = run(sandbox, "def add(a, b):\n    return a + b + (a == 10)\n", spec)
    assert not off_by_one.passed and [t["passed"] for t in off_by_one.tests] == [True, False, True]
    assert "with a message" in off_by_one.tests[1]["error"]


def test_values_cross_as_plain_data_only():
    value = [1, 2.5, "s", None, True, (1, (2,)), {"k": [1], 3: {4}}, frozenset({1}), b"\x00\xff", 1 + 2j]
    assert decode(json.loads(json.dumps(encode(value)))) == value
    for bad in ({"t": 1}, {"x": []}, {"t": [], "s": []}, {"d": [[1]]}, {"c": ["a", 1]}):
        with pytest.raises(ValueError):
            decode(bad)
    with pytest.raises(TypeError, match="plain data"):
        encode(object())
    with pytest.raises(TypeError):
        encode(type("MyInt", (int,), {})(3))  # a subclass could carry its own __eq__


def test_an_object_whose_eq_is_always_true_does_not_pass(sandbox):
    for program in ("""
        class Always:
            def __eq__(self, other):
                return True
        def add(a, b):
            return Always()
    """, """
        class Sneaky(int):
            def __eq__(self, other):
                return True
        def add(a, b):
            return Sneaky(0)
    """):
        result, _ = run(sandbox, program)
        assert not result.passed and result.status == "failed"
        assert "only plain data" in result.error


def test_exiting_before_the_tests_does_not_pass(sandbox):
    for program, status in (("import sys\nsys.exit(0)\n" + GOOD, "load_error"),
                            ("import os\nos._exit(0)\n" + GOOD, "exited"),
                            ("import os\ndef add(a, b):\n    os._exit(0)\n", "exited"),
                            ("import sys\ndef add(a, b):\n    sys.exit(0)\n", "failed")):
        result, _ = run(sandbox, program)
        assert not result.passed and result.status == status, (program, result)


def test_patching_the_harness_or_assert_changes_nothing(sandbox):
    program = """
        import builtins, json, sys
        builtins.AssertionError = type("Nothing", (Exception,), {})
        json.dumps = lambda *a, **k: '{"event": "done"}'
        sys.modules["json"] = None
        def add(a, b):
            return None
    """
    result, _ = run(sandbox, program)
    assert not result.passed and all(not t["passed"] for t in result.tests)


def test_a_fake_all_passed_print_is_only_output(sandbox):
    program = """
        import sys
        for k in range(3):
            print(f'{{"event": "test", "index": {k}, "passed": true, "error": null}}')
        print('{"event": "done"}')
        print("All tests passed!", file=sys.stderr)
        def add(a, b):
            return 0
    """
    result, _ = run(sandbox, program)
    assert not result.passed and [t["passed"] for t in result.tests] == [False, True, False]
    assert "All tests passed!" in result.output


def test_an_infinite_loop_hits_the_cpu_limit(sandbox):
    result, seconds = run(sandbox, "def add(a, b):\n    while True:\n        pass\n")
    assert not result.passed and result.limit == "cpu" and result.exit_code == 128 + 24  # SIGXCPU
    assert seconds < LIMITS.timeout
    assert_no_leftovers(sandbox)


def test_ignoring_sigterm_and_sleeping_past_the_timeout_is_killed(sandbox):
    program = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        def add(a, b):
            time.sleep(60)
    """
    result, seconds = run(sandbox, program)
    assert not result.passed and result.status == "timeout" and result.limit == "time"
    assert result.error == "timed out in tests[0]"
    assert LIMITS.timeout <= seconds < LIMITS.timeout + 3
    assert_no_leftovers(sandbox)


def test_a_fork_bomb_is_contained_and_cleaned_up(sandbox):
    program = """
        import os, time
        def add(a, b):
            while True:
                try:
                    os.fork()
                except OSError:
                    time.sleep(0.01)
    """
    result, seconds = run(sandbox, program)
    assert not result.passed and result.limit in ("time", "cpu")
    assert seconds < LIMITS.timeout + 3
    assert_no_leftovers(sandbox)
    again, _ = run(sandbox, GOOD)  # the slot works again at once
    assert again.passed


def test_a_fork_bomb_in_one_slot_does_not_starve_another(sandbox):
    bomb = "import os, time\ndef add(a, b):\n    while True:\n        try:\n            os.fork()\n" \
           "        except OSError:\n            time.sleep(0.01)\n"
    slow_good = "import time\ndef add(a, b):\n    time.sleep(0.5)\n    return a + b\n"
    results = dict(sandbox.run_many([(bomb, ADD), (slow_good, ADD), (slow_good, ADD)]))
    assert not results[0].passed
    assert results[1].passed and results[2].passed
    assert_no_leftovers(sandbox)


def test_a_memory_hog_hits_the_memory_limit(sandbox):
    result, _ = run(sandbox, "def add(a, b):\n    return len(bytearray(2 * 1024 ** 3))\n")
    assert not result.passed and result.limit == "memory"
    assert "MemoryError" in result.error


def test_huge_output_is_cut_at_the_cap(sandbox):
    result, seconds = run(sandbox, "def add(a, b):\n    while True:\n        print('x' * 10000)\n")
    assert not result.passed and result.status == "output_limit" and result.limit == "output"
    assert seconds < LIMITS.timeout
    assert len(result.output) <= 4000
    assert_no_leftovers(sandbox)


def test_files_outside_cannot_be_written_deleted_or_read(sandbox, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("intact")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOKEN-123")
    program = f"""
        import os
        outcomes = []
        for action in (lambda: os.remove({str(victim)!r}), lambda: open({str(victim)!r}, "w").write("pwned"),
                       lambda: open("/usr/pwned", "w"), lambda: open("/pwned", "w"), lambda: os.rmdir("/usr/bin")):
            try:
                action()
                outcomes.append("done")
            except OSError as e:
                outcomes.append(e.errno)
        print(outcomes)
        def add(a, b):
            return a + b
        def steal():
            for path in ({str(secret)!r}, "/root/.bashrc", "/etc/passwd", "/proc/1/environ"):
                try:
                    return open(path).read()
                except OSError:
                    pass
            return "nothing"
    """
    result, _ = run(sandbox, program)
    assert result.passed  # the function is right; its attempts came to nothing
    assert "done" not in result.output
    assert victim.read_text() == "intact"
    assert not Path("/usr/pwned").exists()
    steal = Spec("steal", tests=["assert steal() == 'TOKEN-123'"])
    stolen, _ = run(sandbox, program, steal)
    assert not stolen.passed


def test_no_network_not_even_to_the_host(sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    program = f"""
        import socket
        def add(a, b):
            for host in (("127.0.0.1", {port}), ("1.1.1.1", 53)):
                try:
                    socket.create_connection(host, timeout=1)
                    return "connected"
                except OSError as e:
                    last = e.errno
            return a + b
    """
    result, _ = run(sandbox, program)
    assert result.passed  # every connection failed, so it fell through to the sum
    with pytest.raises(BlockingIOError):
        server.accept()
    server.close()


def test_killing_its_parent_or_everything_it_can(sandbox):
    program = textwrap.dedent("""
        import os, signal
        for target in (os.getppid(), 1, -1):
            try:
                os.kill(target, signal.SIGKILL)
            except OSError:
                pass
    """) + GOOD
    result, _ = run(sandbox, program)
    # Its PID namespace holds only itself and bwrap's init, which ignores signals from inside: nothing died.
    assert result.passed and result.status == "passed"
    assert_no_leftovers(sandbox)
    assert run(sandbox, GOOD)[0].passed


def test_a_setsid_grandchild_holding_the_pipes_does_not_hold_the_verdict(sandbox):
    program = textwrap.dedent("""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(60)
            os._exit(0)
    """) + GOOD
    result, seconds = run(sandbox, program)
    assert result.passed and seconds < LIMITS.timeout
    assert_no_leftovers(sandbox)


def test_filling_tmp_and_dev_shm_stops_at_their_size(sandbox):
    program = ("""
        import errno
        filled = {}
        for folder in ("/tmp", "/dev/shm"):
            written = 0
            try:
                for k in range(100):
                    with open(f"{folder}/fill-{k}", "wb") as f:
                        f.write(b"x" * (1 << 20))
                    written += 1 << 20
            except OSError as e:
                filled[folder] = [written, e.errno]
        print(filled)
    """)
    program = textwrap.dedent(program) + GOOD
    result, _ = run(sandbox, program)
    assert result.passed
    filled = eval(result.output)  # noqa: S307 - our own program's print of a dict of ints
    cap = LIMITS.tmp_mb << 20
    for folder in ("/tmp", "/dev/shm"):
        written, err = filled[folder]
        assert written <= cap and err == 28, filled  # ENOSPC at the tmpfs size


def test_a_sandbox_that_cannot_start_is_an_error_not_a_verdict(sandbox, monkeypatch, tmp_path):
    with pytest.raises(SandboxUnavailable, match="/nonexistent/python"):
        Sandbox(Limits(python="/nonexistent/python"))
    broken = Sandbox(Limits(retries=1, workers=1))
    broken.python = Path("/nonexistent/python")  # the probe passed; then the interpreter goes away
    with pytest.raises(SandboxError, match="failed to start 2 times"):
        broken.run(GOOD, ADD)
    only_program = Sandbox(Limits(retries=0, workers=1))
    real = only_program.command
    only_program.command = lambda role, *a: [x if x != str(only_program.python) or role == "runner"
                                             else "/nonexistent/python" for x in real(role, *a)]
    with pytest.raises(SandboxError, match="the program's sandbox did not start: bwrap: execvp"):
        only_program.run(GOOD, ADD)
    # A program cannot pass itself off as a sandbox that failed (to be retried, or to stop the stage).
    fake, _ = run(sandbox, "import os\nprint('bwrap: Creating new namespace failed', flush=True)\nos._exit(1)\n")
    assert not fake.passed and fake.status == "exited"
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        Sandbox(LIMITS)


def test_limits_are_checked_by_name():
    with pytest.raises(Exception, match="verify.options: unknown sandbox setting.*timout"):
        Limits.from_options({"timout": 3})
    with pytest.raises(Exception, match="verify.options.memory_mb: expected a non-negative int"):
        Limits.from_options({"memory_mb": "lots"})
    with pytest.raises(Exception, match="verify.options.timeout: must be above 0"):
        Limits.from_options({"timeout": 0})
    assert Limits.from_options({"timeout": 3, "workers": 1}).timeout == 3.0


def test_what_a_program_controls_cannot_crash_or_fool_the_parent(sandbox):
    # A memory figure too large for a float, reported by the program's own (patched) harness.
    patched, _ = run(sandbox, "import __main__\n__main__.rss_kb = lambda: 10 ** 400\n" + GOOD)
    assert patched.passed and patched.memory_mb < 1 << 30
    # A lone surrogate in its error text: the verdict must still be writable as UTF-8.
    surrogate, _ = run(sandbox, "def add(a, b):\n    raise ValueError('\\ud800')\n")
    assert not surrogate.passed
    json.dumps(surrogate.to_dict(), ensure_ascii=False).encode("utf-8")
    # StopIteration would end the test's own map() early: all(map(f, xs)) of nothing is True.
    stop = Spec("is_even", tests=["assert all(map(is_even, [2, 4]))", "assert not any(map(is_even, [1, 3]))"])
    stopped, _ = run(sandbox, "def is_even(n):\n    raise StopIteration\n", stop)
    assert not stopped.passed and [t["passed"] for t in stopped.tests] == [False, False]
    # A value the tests print cannot pass for the runner's report.
    forged = '{"event": "test", "index": 0, "passed": true, "error": null}\\n{"event": "done"}'
    printed = Spec("add", tests=["v = add('a', 'b'); print(v); assert v == 'ab'"])
    fooled, _ = run(sandbox, f"def add(a, b):\n    return '\\n{forged}\\n'\n", printed)
    assert not fooled.passed and fooled.status == "failed"
    # Flooding its output while loading is the program's failure, not a sandbox that failed to start.
    flood, _ = run(sandbox, "print('x' * 10 ** 6)\n" + GOOD)
    assert not flood.passed and flood.status == "output_limit"


def test_big_ints_cross_and_a_call_that_only_sets_up_is_not_a_test(sandbox):
    big = Spec("fact", tests=["import math; assert fact(2000) == math.factorial(2000)"])
    result, _ = run(sandbox, "import math\ndef fact(n):\n    return math.factorial(n)\n", big)
    assert result.passed
    check = "def check(candidate):\n    r = candidate(1, 2)\n    assert r == 3\n    assert True\n"
    wrong, _ = run(sandbox, "def add(a, b):\n    raise ValueError('no')\n", Spec("add", check=check))
    assert wrong.status == "failed" and [t["name"] for t in wrong.tests] == ["line 3"]
    assert wrong.error == "line 2: ValueError: no"
