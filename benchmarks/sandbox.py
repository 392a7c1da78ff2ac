"""The code sandbox: throughput against a bare subprocess, side by side, and what it does with hostile programs.

    python benchmarks/sandbox.py                 # both parts; run it with nothing else on the machine
    python benchmarks/sandbox.py --rounds 3      # throughput repeated, median reported
    python benchmarks/sandbox.py --smoke         # 8 programs, 8 HumanEval problems, 5 hostile cases: seconds

Throughput: the 160 reference solutions of builtin:code-functions, each checked against its asserts
  - bare: `python3 -I -S -c PROGRAM+TESTS` in a plain subprocess (no isolation; the verdict is the exit code,
    which the program itself controls: what an unsandboxed harness does),
  - sandbox: selfplay's Sandbox (two bubblewrap sandboxes per program, verdict computed outside),
with 1 and 2 programs at a time. Printed: programs per second and milliseconds per program. Then HumanEval's 164
canonical solutions (each must pass) and a stub returning None for each (none may).

Hostile programs: each case below through the same sandbox (default limits but a 3 s timeout and 2 s of CPU),
with the verdict, the limit it hit and the wall time, as a Markdown table. Without bubblewrap (bwrap) it stops
with one line saying how to install it, and exit status 2.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from benchmarks.smoke import add_flags, entry  # noqa: E402
from selfplay.sandbox import Limits, Sandbox, TestSpec  # noqa: E402
from selfplay.tasks.code import CodeTask  # noqa: E402
from selfplay.verifiers.code import test_spec  # noqa: E402

ADD = TestSpec("add", tests=["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add('a', 'b') == 'ab'"])
GOOD = "def add(a, b):\n    return a + b\n"

CASES = [
    ("correct solution", GOOD),
    ("wrong solution", "def add(a, b):\n    return a - b\n"),
    ("infinite loop", "def add(a, b):\n    while True:\n        pass\n"),
    ("fork bomb", "import os, time\ndef add(a, b):\n    while True:\n        try:\n            os.fork()\n"
                  "        except OSError:\n            time.sleep(0.01)\n"),
    ("memory hog (2 GiB)", "def add(a, b):\n    return len(bytearray(2 * 1024 ** 3))\n"),
    ("huge output", "def add(a, b):\n    while True:\n        print('x' * 10000)\n"),
    ("delete / write a file outside", "import os\nfor f in (lambda: os.remove('/etc/hostname'), "
     "lambda: open('/usr/x', 'w'), lambda: open('/root/x', 'w')):\n    try:\n        f()\n        print('DID IT')\n"
     "    except OSError:\n        pass\n" + GOOD),
    ("read the user's home", "def add(a, b):\n    return open('/root/.bashrc').read()\n"),
    ("open a network connection", "import socket\ndef add(a, b):\n"
     "    socket.create_connection(('1.1.1.1', 53), timeout=1)\n    return a + b\n"),
    ("kill its parent, and -1", "import os, signal\nfor t in (os.getppid(), 1, -1):\n    try:\n"
     "        os.kill(t, signal.SIGKILL)\n    except OSError:\n        pass\n" + GOOD),
    ("setsid grandchild holding the pipes", "import os, time\nif os.fork() == 0:\n    os.setsid()\n"
     "    time.sleep(60)\n" + GOOD),
    ("fill /tmp", "def add(a, b):\n    k = 0\n    while True:\n        open(f'/tmp/f{k}', 'wb')"
     ".write(b'x' * (1 << 20))\n        k += 1\n"),
    ("one file over the size limit", "def add(a, b):\n    with open('/tmp/f', 'wb') as f:\n"
     "        for _ in range(100):\n            f.write(b'x' * (1 << 20))\n"),
    ("fill /dev/shm", "def add(a, b):\n    k = 0\n    while True:\n        open(f'/dev/shm/f{k}', 'wb')"
     ".write(b'x' * (1 << 20))\n        k += 1\n"),
    ("os._exit(0) before the tests", "import os\nos._exit(0)\n" + GOOD),
    ("sys.exit(0) before the tests", "import sys\nsys.exit(0)\n" + GOOD),
    ("patch assert / the harness", "import builtins, json\nbuiltins.AssertionError = type('N', (Exception,), {})\n"
     "json.dumps = lambda *a, **k: '{\"event\": \"done\"}'\ndef add(a, b):\n    return None\n"),
    ("__eq__ always True", "class A:\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n    return A()\n"),
    ("print a fake 'all passed'", "print('{\"event\": \"done\"}')\nprint('All tests passed')\n"
     "def add(a, b):\n    return 0\n"),
    ("ignore SIGTERM, sleep past the timeout", "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
     "def add(a, b):\n    time.sleep(60)\n"),
]
# --smoke: a pass, a fail, a limit that trips, and two ways to fake a pass
SMOKE_CASES = ["correct solution", "wrong solution", "infinite loop", "os._exit(0) before the tests",
               "print a fake 'all passed'"]


def bare(code: str, tests: list[str]) -> bool:
    source = code + "\n" + "\n".join(tests) + "\n"
    p = subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", source], capture_output=True, timeout=30)
    return p.returncode == 0


def throughput(rounds: int, train_size: int = 100, eval_size: int = 60) -> None:
    split = CodeTask(train_size=train_size, eval_size=eval_size).split()
    items = [(p.meta["solution_code"], test_spec(p)) for p in split.train + split.heldout]
    print(f"{len(items)} programs (builtin:code-functions reference solutions), {rounds} round(s), median")
    print("| harness | at once | programs/s | ms per program | passed |")
    print("|---|---|---|---|---|")
    for workers in (1, 2):
        sandbox = Sandbox(Limits(workers=workers))
        for name in ("bare subprocess", "sandbox"):
            times, passed = [], 0
            for _ in range(rounds):
                start = time.perf_counter()
                if name == "sandbox":
                    passed = sum(r.passed for _, r in sandbox.run_many(items))
                else:
                    with ThreadPoolExecutor(workers) as pool:
                        passed = sum(pool.map(lambda it: bare(it[0], it[1].tests), items))
                times.append(time.perf_counter() - start)
            t = statistics.median(times)
            print(f"| {name} | {workers} | {len(items) / t:.1f} | {1000 * t / len(items) * workers:.1f} | "
                  f"{passed}/{len(items)} |")


def humaneval(size: int = 164) -> None:
    """Every HumanEval canonical solution must pass in the sandbox, and a stub returning None must not."""
    from selfplay.tasks.code import HumanEvalTask

    problems = HumanEvalTask(eval_size=size).split().heldout
    sandbox = Sandbox(Limits(workers=2))
    specs = [test_spec(p) for p in problems]
    start = time.perf_counter()
    right = dict(sandbox.run_many([(p.meta["solution_code"], s) for p, s in zip(problems, specs, strict=True)]))
    seconds = time.perf_counter() - start
    stub = dict(sandbox.run_many([(f"def {s.entry_point}(*a, **k):\n    return None\n", s) for s in specs]))
    print(f"HumanEval: {sum(r.passed for r in right.values())} of {len(problems)} canonical solutions pass "
          f"({seconds:.1f} s, 2 at once); a stub returning None passes {sum(r.passed for r in stub.values())}")


def hostile(names: list[str] | None = None) -> None:
    unknown = sorted(set(names or []) - {name for name, _ in CASES})
    if unknown:
        raise ValueError(f"no hostile case named {unknown}")
    sandbox = Sandbox(Limits(timeout=3, cpu_seconds=2, workers=1))
    print("| program | passed | status | limit hit | seconds | first reason |")
    print("|---|---|---|---|---|---|")
    for name, program in CASES:
        if names is not None and name not in names:
            continue
        result = sandbox.run(textwrap.dedent(program), ADD)
        reason = (result.error or "").replace("|", "/")[:70]
        print(f"| {name} | {'yes' if result.passed else 'no'} | {result.status} | {result.limit or '–'} | "
              f"{result.seconds:.2f} | {reason} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--part", choices=["all", "throughput", "hostile"], default="all")
    add_flags(parser, model=False)
    args = parser.parse_args()
    if args.part in ("all", "throughput"):
        if args.smoke:
            throughput(1, 4, 4)
            humaneval(8)
        else:
            throughput(args.rounds)
            humaneval()
    if args.part in ("all", "hostile"):
        hostile(SMOKE_CASES if args.smoke else None)


if __name__ == "__main__":
    entry(main)
