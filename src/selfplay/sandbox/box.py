"""Run an untrusted program against its tests under OS isolation, and compute the verdict in the trusted parent.

Each program gets two sandboxes (see `inside.py`): the candidate, which loads the program, and the runner, which
holds the tests and reports each outcome. Both are bubblewrap sandboxes:

    --unshare-all            no network, own PID / IPC / UTS / mount / user namespaces
    --die-with-parent        and its PID namespace goes with it: a setsid grandchild cannot outlive the run
    --new-session --cap-drop ALL --clearenv
    read-only /usr (and the interpreter's prefix), a read-only root, a size-capped tmpfs on /tmp and /dev/shm

with rlimits set outside it by util-linux `prlimit` (CPU seconds, address space, processes, file size, open
files, no core files). As root the per-user process limit is not enforced at all, so as root each sandbox runs
under an unprivileged uid of its own pool slot (`setpriv`): two slots never share a process count, and a fork
bomb in one cannot starve another. The parent enforces the wall clock, kills both process groups on timeout,
and stops reading the program's output at a size cap.

Where bubblewrap is missing or cannot create namespaces, `Sandbox()` raises `SandboxUnavailable` with the
reason: there is no fallback to running without isolation.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from selfplay.errors import UserError

INSIDE = (Path(__file__).with_name("inside.py")).read_text(encoding="utf-8")
RUNNER_OUTPUT_CAP = 1 << 20
MAX_PROGRAM = 1 << 20
_PR_SET_CHILD_SUBREAPER = 36
_lock = threading.Lock()


class SandboxUnavailable(UserError):
    """No working isolation on this machine (bubblewrap missing, or namespaces refused)."""


class SandboxError(UserError):
    """A sandbox failed to start after its retries: an infrastructure error, never a verdict. The stage stops
    with the reason; the verdicts already written stay, and a resume goes on from them."""


@dataclass(frozen=True)
class Limits:
    """What one program may use. A config sets these as `verify.options` of the code verifier."""

    timeout: float = 10.0  # wall-clock seconds for loading the program and running every test
    cpu_seconds: int = 10  # CPU time of the program's process (SIGXCPU, then SIGKILL one second later)
    memory_mb: int = 512  # address space of each process
    processes: int = 16  # processes and threads of the program's uid
    file_size_mb: int = 8  # largest file the program may write
    open_files: int = 64
    tmp_mb: int = 16  # size of its /tmp and of its /dev/shm
    output_kb: int = 256  # its stdout + stderr, read up to this and then the program is stopped
    workers: int = 0  # programs checked at once; 0 = one per CPU core
    retries: int = 2  # a sandbox that fails to start is retried this many times, then the stage stops
    python: str = ""  # the interpreter inside; default /usr/bin/python3 when present, else this one's base
    uid_base: int = 60100  # as root: slot k runs its program as uid_base + 2k and its tests as uid_base + 2k + 1

    @classmethod
    def from_options(cls, options: dict[str, Any], field_name: str = "verify.options") -> Limits:
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise UserError(f"{field_name}: unknown sandbox setting(s) {', '.join(unknown)}; known: "
                            f"{', '.join(known)}")
        out = {}
        for name, value in options.items():
            want = float if known[name] == "float" else str if known[name] == "str" else int
            ok = isinstance(value, str) if want is str else (
                isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0)
            if not ok or (want is int and int(value) != value):
                raise UserError(f"{field_name}.{name}: expected a {'non-negative ' if want is not str else ''}"
                                f"{want.__name__}, got {value!r}")
            out[name] = want(value)
        limits = cls(**out)
        for name in ("timeout", "cpu_seconds", "memory_mb", "processes", "output_kb", "tmp_mb", "open_files"):
            if not getattr(limits, name):
                raise UserError(f"{field_name}.{name}: must be above 0")
        return limits


@dataclass
class TestSpec:
    """What a program is checked against: `tests` (a list of assert statements calling the entry point by its
    name) or `check` (HumanEval's `def check(candidate)`), with `context` run before both the program and the
    tests (HumanEval's prompt, whose helper functions some checks call)."""

    entry_point: str
    tests: list[str] | None = None
    check: str | None = None
    context: str = ""

    def __post_init__(self) -> None:
        if (self.tests is None) == (self.check is None):
            raise UserError("a code problem needs exactly one of 'tests' (a list of asserts) or 'check' (a "
                            "function check(candidate))")
        if not self.entry_point.isidentifier():
            raise UserError(f"entry_point: {self.entry_point!r} is not a Python name")


@dataclass
class Result:
    """One program's verdict, computed here from what the runner reported."""

    passed: bool
    status: str  # passed | failed | load_error | exited | timeout | output_limit | bad_tests
    tests: list[dict[str, Any]] = field(default_factory=list)  # {"name", "passed", "error"} in order
    limit: str | None = None  # time | cpu | memory | processes | output | file_size | disk, when one was hit
    error: str | None = None  # the first reason it did not pass
    seconds: float = 0.0
    memory_mb: float = 0.0  # peak resident memory of the program's process, as it last reported it
    exit_code: int | None = None  # the program's process; 128 + N when killed by signal N
    output: str = ""  # the start of the program's stdout and stderr, for debugging

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _interpreter(limits: Limits) -> Path:
    if limits.python:
        return Path(limits.python)
    system = Path("/usr/bin/python3")
    return system if system.is_file() else Path(getattr(sys, "_base_executable", sys.executable))


class Sandbox:
    """Checks programs in bubblewrap sandboxes, `limits.workers` at a time. Built once; probes on creation."""

    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits()
        self.bwrap = shutil.which("bwrap")
        if self.bwrap is None:
            raise SandboxUnavailable(
                "code verification needs bubblewrap (bwrap), which is not installed; on Debian or Ubuntu run "
                "'apt-get install bubblewrap' (make install does it when it can); there is no unisolated fallback")
        for tool in ("prlimit",) + (("setpriv",) if os.geteuid() == 0 else ()):
            if shutil.which(tool) is None:
                raise SandboxUnavailable(f"code verification needs util-linux's '{tool}', which is not on PATH")
        self.python = _interpreter(self.limits)
        self.root = os.geteuid() == 0
        # Not root, every slot shares the user's uid and so its process count: one at a time unless asked.
        self.workers = self.limits.workers or ((os.cpu_count() or 1) if self.root else 1)
        self._slots: queue.Queue[int] = queue.Queue()
        with _slot_lock:  # slots numbered across every Sandbox of this process, so no two share a uid
            first = _next_slot[0]
            _next_slot[0] += self.workers
        for k in range(first, first + self.workers):
            self._slots.put(k)
        self.first_slot = first
        self._probe()

    # --- the command line ---------------------------------------------------------------------------------

    def _binds(self) -> list[str]:
        args = ["--ro-bind", "/usr", "/usr"]
        for name in ("bin", "sbin", "lib", "lib32", "lib64"):
            p = Path("/") / name
            if p.is_symlink():
                args += ["--symlink", os.readlink(p), str(p)]
            elif p.is_dir():
                args += ["--ro-bind", str(p), str(p)]
        prefix = Path(os.path.realpath(self.python)).parents[1]
        if not str(prefix).startswith("/usr"):
            args += ["--ro-bind", str(prefix), str(prefix)]
        return args

    def command(self, role: str, slot: int, req_fd: int, rep_fd: int) -> list[str]:
        lim = self.limits
        mb = 1 << 20
        cmd: list[str] = []
        if self.root:
            uid = lim.uid_base + 2 * slot + (role == "runner")
            cmd += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all"]
        nproc = lim.processes if self.root else _tasks_of(os.getuid()) + lim.processes
        cmd += ["prlimit", f"--cpu={lim.cpu_seconds}:{lim.cpu_seconds + 1}", f"--as={lim.memory_mb * mb}",
                f"--nproc={nproc}", f"--fsize={lim.file_size_mb * mb}", f"--nofile={lim.open_files}",
                "--core=0", "--"]
        cmd += [self.bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
                *self._binds(), "--proc", "/proc", "--dev", "/dev",
                "--size", str(lim.tmp_mb * mb), "--tmpfs", "/tmp", "--size", str(lim.tmp_mb * mb), "--tmpfs",
                "/dev/shm", "--remount-ro", "/", "--chdir", "/tmp", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
                "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
                "--", str(self.python), "-I", "-S", "-c", INSIDE, role, str(req_fd), str(rep_fd)]
        return cmd

    def _probe(self) -> None:
        """Start one sandbox and check it is isolated, before any program is judged."""
        code = ("import os,socket\nprint(os.getuid(), os.path.exists('/root'))\n"
                "try:\n socket.create_connection(('1.1.1.1', 53), timeout=1); print('net')\n"
                "except OSError: print('nonet')")
        cmd = self.command("candidate", self.first_slot, 0, 1)
        cmd = cmd[: cmd.index("-c") + 1] + [code]
        try:
            with _Subreaping():
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SandboxUnavailable(f"the sandbox did not start ({e})") from None
        if p.returncode != 0 or "nonet" not in p.stdout:
            why = (p.stderr.strip().splitlines() or [p.stdout.strip() or f"exit {p.returncode}"])[-1]
            raise SandboxUnavailable(
                f"bubblewrap cannot build the sandbox here: {why} (it needs unprivileged user namespaces, or "
                f"root; the interpreter {self.python} must be readable by the sandbox user; set "
                "verify.options.python to another)")
        uid, home_seen = p.stdout.split()[:2]
        if (self.root and uid == "0") or home_seen == "True":
            raise SandboxUnavailable(f"the sandbox is not isolated as expected: {p.stdout.strip()!r}")

    # --- running ------------------------------------------------------------------------------------------

    def run(self, code: str, spec: TestSpec) -> Result:
        """One program against its tests, on a free pool slot. Raises SandboxError if the sandbox cannot start."""
        if len(code.encode("utf-8", "replace")) > MAX_PROGRAM:
            return Result(False, "load_error", error=f"the program is over {MAX_PROGRAM >> 20} MB; not run")
        slot = self._slots.get()
        try:
            with _Subreaping():
                for attempt in range(self.limits.retries + 1):
                    result, infra = self._run_once(code, spec, slot)
                    if infra is None:
                        return result
                    time.sleep(0.2 * (attempt + 1))
            raise SandboxError(f"the sandbox failed to start {self.limits.retries + 1} times: {infra}; nothing was "
                               "scored for this program (fix the machine, then resume the run)")
        finally:
            self._slots.put(slot)

    def run_many(self, items: Sequence[tuple[str, TestSpec]]) -> Iterator[tuple[int, Result]]:
        """(index, result) for every item, in the order they finish, `workers` at a time."""
        if not items:
            return
        with ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox") as pool:
            futures = {pool.submit(self.run, code, spec): k for k, (code, spec) in enumerate(items)}
            try:
                for fut in as_completed(futures):
                    yield futures[fut], fut.result()
            finally:
                for fut in futures:
                    fut.cancel()

    def _run_once(self, code: str, spec: TestSpec, slot: int) -> tuple[Result, str | None]:
        lim = self.limits
        start = time.perf_counter()
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            with _reaping:  # no orphan scan may take these for orphans before they are registered
                cand = subprocess.Popen(self.command("candidate", slot, req_r, rep_w), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(req_r, rep_w),
                                        start_new_session=True)
                procs.append(cand)
                _active.add(cand.pid)
                runner = subprocess.Popen(self.command("runner", slot, req_w, rep_r), stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(rep_r, req_w),
                                          start_new_session=True)
                procs.append(runner)
                _active.add(runner.pid)
        except OSError as e:
            _kill(procs)
            with _reaping:
                _active.difference_update(p.pid for p in procs)
            return Result(False, "infrastructure"), f"cannot start bwrap ({e})"
        finally:
            for fd in (req_r, req_w, rep_r, rep_w):
                os.close(fd)
        assert cand.stdin is not None and runner.stdin is not None
        streams = _Streams(cand, runner, lim.output_kb * 1024)
        _feed(runner, {"tests": spec.tests, "check": spec.check, "context": spec.context,
                       "entry_point": spec.entry_point})
        # The program gets its code only once the tests' sandbox has reported in: whatever the program then
        # does (time out, flood its output) is its own failure, never a sandbox that seems not to have started.
        reported = streams.pump(start + lim.timeout, first_event=True)
        first = streams.events()[:1]
        _feed(cand, {"code": code, "context": spec.context, "entry_point": spec.entry_point}
              if reported and first and first[0]["event"] == "tests" else None)
        timed_out = reported and not streams.pump(start + lim.timeout)
        if not reported or timed_out or streams.over_cap:
            _kill(procs)
        # The tests are over; the program's process gets a moment to see its requests end, then goes.
        runner_code = _reap(runner, 1.0)
        cand_code = _reap(cand, 1.0)
        with _reaping:
            _active.difference_update((runner.pid, cand.pid))
        _reap_orphans()
        streams.drain()
        seconds = time.perf_counter() - start
        infra = _infrastructure_failure(streams, runner_code)
        if infra:
            return Result(False, "infrastructure"), infra
        events = streams.events()
        result = _verdict(events, timed_out, streams.over_cap, cand_code, runner_code)
        result.seconds = seconds
        result.exit_code = cand_code
        rss = [e["rss_kb"] for e in events if type(e.get("rss_kb")) is int and 0 <= e["rss_kb"] < 1 << 40]
        result.memory_mb = max(rss, default=0) / 1024
        result.output = streams.cand_out[:4000].decode("utf-8", "replace")
        if result.limit is None:
            result.limit = _limit_from(result, lim)
        return result, None


def _feed(proc: subprocess.Popen[bytes], payload: dict[str, Any] | None) -> None:
    """Write a process's input and close it (None: close it empty, so it ends without doing anything)."""
    assert proc.stdin is not None
    try:
        if payload is not None:
            proc.stdin.write(json.dumps(payload).encode())
        proc.stdin.close()
    except OSError:
        pass  # it died at once; what it printed says why


def _tasks_of(uid: int) -> int:
    """Processes and threads now running as `uid`: the per-user limit counts them all, so a sandbox that is not
    root's (and so runs as its user) gets this many plus its own allowance."""
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += sum(1 for _ in (entry / "task").iterdir())
            except OSError:
                continue
    return count


class _Streams:
    """Reads the runner's report and the program's output together, to a deadline and a size cap."""

    def __init__(self, cand: subprocess.Popen[bytes], runner: subprocess.Popen[bytes], cap: int):
        self.cap = cap
        self.cand_out = bytearray()
        self.runner_out = bytearray()
        self.runner_err = bytearray()
        self.over_cap = False
        self.sel = selectors.DefaultSelector()
        for stream, buf, limit in ((cand.stdout, self.cand_out, cap + 1), (runner.stdout, self.runner_out,
                                   RUNNER_OUTPUT_CAP), (runner.stderr, self.runner_err, 65536)):
            assert stream is not None
            os.set_blocking(stream.fileno(), False)
            self.sel.register(stream, selectors.EVENT_READ, (buf, limit))

    def pump(self, deadline: float, first_event: bool = False) -> bool:
        """Read until the runner's report ends (or, with `first_event`, has its first line); False if the
        deadline came first."""
        while True:
            if first_event and b"\n" in self.runner_out:
                return True
            open_runner = any(k.fileobj is not None and k.data[0] is not self.cand_out
                              for k in self.sel.get_map().values())
            if not open_runner:
                return True
            left = deadline - time.perf_counter()
            if left <= 0:
                return False
            for key, _ in self.sel.select(min(left, 0.5)):
                if not self._read(key):
                    return True  # the program's output passed its cap
            if self.over_cap:
                return True

    def _read(self, key: selectors.SelectorKey) -> bool:
        buf, limit = key.data
        try:
            chunk = os.read(key.fd, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            self.sel.unregister(key.fileobj)
            return True
        if len(buf) < limit:
            buf += chunk[: limit - len(buf)]
        if buf is self.cand_out and len(buf) > self.cap:
            self.over_cap = True
            return False
        return True

    def drain(self) -> None:
        """After the processes are gone: whatever is left in the pipes, up to the caps."""
        for key in list(self.sel.get_map().values()):
            while key.fileobj in self.sel.get_map() and self._read(key):
                if len(key.data[0]) >= key.data[1]:
                    break
        self.sel.close()

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in bytes(self.runner_out).splitlines():
            try:
                obj = _clean(json.loads(line))
            except (ValueError, RecursionError):
                continue
            if isinstance(obj, dict) and isinstance(obj.get("event"), str):
                out.append(obj)
        return out


def _clean(value: Any) -> Any:
    """Strings as UTF-8 can carry them: a program's error text may hold a lone surrogate, which no file takes."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    return value


def _kill(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """Kill each sandbox from the inside out: its PID 1 first (its whole PID namespace goes with it), which bwrap,
    still alive, then reaps; bwrap itself only if it has not ended on its own within half a second. (When a
    sandbox ends by itself bwrap does leave its PID 1 behind, for `_Subreaping`.)"""
    for p in procs:
        try:
            children = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
        except OSError:
            children = []
        for child in children:
            try:
                os.kill(int(child), signal.SIGKILL)  # the sandbox's PID 1: its whole PID namespace goes with it
            except (ProcessLookupError, PermissionError):
                pass
    for p in procs:
        try:
            p.wait(0.5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


_reaping = threading.Lock()
_active: set[int] = set()  # bwrap processes a run is waiting on, which only their Popen may reap


_subreaper_lock = threading.Lock()
_subreaper = {"runs": 0, "thread": None}


class _Subreaping:
    """While any sandbox runs, this process is a child subreaper. bwrap leaves each sandbox's PID 1 behind as
    a zombie for the machine's init, which some container inits reap late or never, and zombies count against
    a slot uid's process limit; as the subreaper this process inherits them, and a daemon thread reaps them
    (`_reap_orphans`) twice a second. When no sandbox runs, the setting is off again, so that no other orphan
    of this process's children (a server's workers, say) comes to it. Linux only, as bubblewrap is."""

    def __enter__(self) -> None:
        with _subreaper_lock:
            if _subreaper["runs"] == 0:
                _set_subreaper(1)
            _subreaper["runs"] += 1
            if _subreaper["thread"] is None:
                def reap_forever() -> None:
                    while True:
                        time.sleep(0.5)
                        _reap_orphans()

                _subreaper["thread"] = threading.Thread(target=reap_forever, name="sandbox-reaper", daemon=True)
                _subreaper["thread"].start()

    def __exit__(self, *exc: object) -> None:
        with _subreaper_lock:
            _subreaper["runs"] -= 1
            if _subreaper["runs"] == 0:
                _set_subreaper(0)


def _set_subreaper(on: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, on, 0, 0, 0) != 0:
        raise SandboxError(f"cannot {'become' if on else 'stop being'} a child subreaper (errno {ctypes.get_errno()})")


def _reap_orphans() -> None:
    """Reap the sandboxes' orphaned bwrap processes (and nothing else) that were reparented to this process."""
    with _reaping:
        for task in Path("/proc/self/task").iterdir():
            try:
                pids = (task / "children").read_text().split()
            except OSError:
                continue
            for pid in map(int, pids):
                if pid in _active:
                    continue
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text()
                except OSError:
                    continue
                if stat.split(" ", 2)[1] == "(bwrap)":
                    try:
                        os.waitpid(pid, os.WNOHANG)
                    except ChildProcessError:
                        pass


def _reap(p: subprocess.Popen[bytes], grace: float) -> int:
    """Wait up to `grace` seconds, then kill; the exit code, as 128 + N when killed by signal N (bwrap's way)."""
    try:
        code = p.wait(grace)
    except subprocess.TimeoutExpired:
        _kill([p])
        code = p.wait()
    return 128 - code if code < 0 else code


def _infrastructure_failure(streams: _Streams, runner_code: int) -> str | None:
    """The reason, when a sandbox itself failed to start, as opposed to the program failing in it: the tests'
    sandbox reported nothing, or the program's sandbox never sent the greeting its harness sends first."""
    events = streams.events()
    if not events:  # the program had not been given its code yet: this is the sandbox's failure alone
        err = bytes(streams.runner_err).decode("utf-8", "replace").strip()
        return f"the tests' sandbox reported nothing (exit {runner_code}): {err[-300:] or 'no output'}"
    if any(e["event"] == "no_start" for e in events):
        out = bytes(streams.cand_out).decode("utf-8", "replace").strip()
        return f"the program's sandbox did not start: {out[:300] or 'no output'}"
    return None


def _verdict(events: list[dict[str, Any]], timed_out: bool, over_cap: bool, cand_code: int, runner_code: int
             ) -> Result:
    names: list[str] = next((e.get("names", []) for e in events if e["event"] == "tests"), [])
    outcome: dict[Any, dict[str, Any]] = {}
    for e in events:
        if e["event"] == "test":
            outcome.setdefault(e.get("index"), e)  # the first report of a test stands
    tests = []
    for k, name in enumerate(names):
        e = outcome.get(k)
        if e is None:
            tests.append({"name": str(name), "passed": False, "error": "not run"})
        else:
            tests.append({"name": str(name), "passed": e.get("passed") is True,
                          "error": None if e.get("passed") is True else str(e.get("error"))[:500]})
    done = any(e["event"] == "done" for e in events)
    end = next((e for e in events if e["event"] in ("load_error", "exited", "bad_tests", "aborted")), None)
    first_fail = next((t for t in tests if not t["passed"]), None)
    if timed_out:
        running = next((t["name"] for t in tests if t["error"] == "not run"), None)
        return Result(False, "timeout", tests, "time", f"timed out{f' in {running}' if running else ''}")
    if over_cap:
        return Result(False, "output_limit", tests, "output", "the program's output passed its size cap")
    if end is not None:
        status = end["event"]
        if status == "exited":
            error = (f"the program's process ended (exit {cand_code}) before {end.get('before', 'the tests')}")
        else:
            error = str(end.get("error"))[:500]
        return Result(False, "failed" if status == "aborted" else status, tests, None, error)
    if not done or runner_code != 0:
        return Result(False, "exited", tests, None, f"the test runner stopped before the end (exit {runner_code})")
    passed = bool(tests) and all(t["passed"] for t in tests)
    if not tests:
        return Result(False, "bad_tests", tests, None, "the tests call the entry point nowhere")
    return Result(passed, "passed" if passed else "failed", tests, None,
                  None if passed else f"{first_fail['name']}: {first_fail['error']}" if first_fail else None)


_SIGXCPU, _SIGKILL, _SIGXFSZ = 128 + signal.SIGXCPU, 128 + signal.SIGKILL, 128 + signal.SIGXFSZ


def _limit_from(result: Result, lim: Limits) -> str | None:
    """Which limit the program ran into, from how it ended and what it raised."""
    if result.exit_code in (_SIGXCPU, _SIGKILL) and result.status == "exited":
        return "cpu"  # SIGXCPU at the soft limit, SIGKILL a second later if it was ignored
    if result.exit_code == _SIGXFSZ:
        return "file_size"
    text = " ".join([result.error or "", *(t["error"] or "" for t in result.tests)])
    for needle, limit in (("MemoryError", "memory"), ("[errno 11]", "processes"), ("[errno 27]", "file_size"),
                          ("[errno 28]", "disk"), ("[errno 24]", "open_files")):
        if needle in text:
            return limit
    return None


_shared: dict[Limits, Sandbox] = {}
_next_slot = [0]
_slot_lock = threading.Lock()


def shared_sandbox(limits: Limits) -> Sandbox:
    """One probed Sandbox per set of limits in this process (the probe costs a sandbox start). No lock is held
    while one is built: two threads may both build one, and the first stored is kept."""
    with _lock:
        found = _shared.get(limits)
    if found is not None:
        return found
    built = Sandbox(limits)
    with _lock:
        return _shared.setdefault(limits, built)
