"""Every command README.md and docs/guide.md show is run or checked, so a renamed flag, config key or file
breaks this suite before it breaks a reader's first try.

Commands are read from the docs' shell code blocks (every line, plus a `selfplay ...` named in a line's
comment) and from inline code in the prose that starts like a command. CHECKS says how each is checked;
a documented command that no row matches fails, with a message saying to add one.

- Commands that can run here run for real through `selfplay.cli.main`, in a folder laid out as the docs
  assume (`configs/`, `my.yaml` from `selfplay init`, `solution.py`, ...), on the tiny model with size
  overrides appended. A size override never replaces a key the command sets, except the sizes in SHRINK;
  the command's own config and overrides are validated alone first, so no size can hide a bad value.
- The run-folder commands share one run: the documented `selfplay run my.yaml ...`, 2 iterations with a
  review gate at the second, killed (SIGKILL) while it waits. review, approve and reject act on that gate
  (approve and reject each on a copy); approved, `selfplay resume` finishes it; eval, report and export use
  the finished run.
- Commands that need what this machine lacks (vLLM, a GPU, a server), or that a sentence writes with
  placeholders (`selfplay export RUN OUT`), are checked as far as they go here: the subcommand and each
  flag are in `selfplay SUB --help`, the config and overrides validate, and what the row names resolves.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from selfplay import cli
from selfplay.config import RunConfig, load_config, validate
from selfplay.errors import UserError
from tests.conftest import ROOT, tiny_overrides, write_jsonl

DOCS = ("README.md", "docs/guide.md")
SHELL = {"bash", "sh", "shell", "console"}
# Inline code that starts like one of these is a command; other inline code (keys, files, names) is not.
INLINE_COMMANDS = ("selfplay ", "python benchmarks/", "make ", "pip install ", ".venv/bin/")
SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)  # CommonMark inline code: matching backtick runs


# -- the commands, as documented ---------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    where: str  # file:line
    text: str  # as documented: continuation lines joined, comment and a trailing "..." removed
    argv: tuple[str, ...]  # the shell's words

    @property
    def args(self) -> list[str]:
        """The words after `selfplay`."""
        return list(self.argv[1:])

    @property
    def overrides(self) -> list[str]:
        return [a for a in self.args if "=" in a and not a.startswith("-")]


def _command(where: str, text: str) -> Command:
    text = re.sub(r"\s+\.\.\.$", "", " ".join(text.split()))  # "--reject ID ...": more of the same
    return Command(where, text, tuple(shlex.split(text)))


def _split_comment(line: str) -> tuple[str, str]:
    """A shell line's code and its `# comment` (a '#' outside quotes, at the start or after a space)."""
    quote = None
    for n, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (n == 0 or line[n - 1].isspace()):
            return line[:n], line[n + 1:]
    return line, ""


def _read(name: str) -> tuple[list[tuple[int, str, str]], str]:
    """A doc's fenced blocks' lines as (line number, language, text), and its prose with the blocks blanked."""
    block_lines, prose = [], []
    lang: str | None = None  # the open fence's language
    for n, line in enumerate((ROOT / name).read_text(encoding="utf-8").splitlines(), start=1):
        fence = re.match(r"\s*```([\w-]*)\s*$", line)
        prose.append("" if fence or lang is not None else line)
        if fence:
            lang = fence[1] if lang is None else None
        elif lang is not None:
            block_lines.append((n, lang, line))
    return block_lines, "\n".join(prose)


def prose_spans(name: str) -> Iterator[tuple[int, str]]:
    """Inline code in a doc's prose, as (line number, text with whitespace collapsed)."""
    text = _read(name)[1]
    for para in re.finditer(r"(?:[^\n]+\n?)+", text):  # a span never crosses a paragraph
        for m in SPAN.finditer(para[0]):
            yield text.count("\n", 0, para.start() + m.start()) + 1, " ".join(m[2].split())


def documented_commands() -> list[Command]:
    found: list[Command] = []
    for name in DOCS:
        pending, start = "", 0
        for n, lang, line in _read(name)[0]:
            if lang not in SHELL:
                continue
            if not pending:
                start = n
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            code, comment = _split_comment(pending + line)
            pending = ""
            if code.strip():
                found.append(_command(f"{name}:{start}", code))
            for m in re.finditer(r"\bselfplay [a-z]+(?: [^\s,;()]+)*", comment):
                found.append(_command(f"{name}:{start}", m[0]))
        for n, span in prose_spans(name):
            if span.startswith(INLINE_COMMANDS):
                found.append(_command(f"{name}:{n}", span))
    return found


COMMANDS = documented_commands()


# -- running selfplay in-process ---------------------------------------------------------------------
@dataclass
class Result:
    rc: int
    out: str
    err: str

    def ok(self) -> Result:
        assert self.rc == 0, f"exit {self.rc}\n--- stdout\n{self.out[-3000:]}\n--- stderr\n{self.err[-3000:]}"
        return self

    def json(self) -> dict:
        return json.loads(self.out[self.out.index("{\n"):])  # a task may print a note before the JSON


def selfplay(args: list[str], cwd: Path) -> Result:
    """`selfplay ARGS` run in `cwd` by the CLI's own main, in this process (torch is imported once)."""
    out, err, here, tmp = io.StringIO(), io.StringIO(), os.getcwd(), tempfile.tempdir
    os.chdir(cwd)
    tempfile.tempdir = str(cwd)  # `selfplay eval` without --out writes to a new temporary folder: keep it here
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                rc = cli.main(list(args))
            except SystemExit as e:  # argparse: --help, or a usage error
                rc = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        os.chdir(here)
        tempfile.tempdir = tmp
    return Result(rc, out.getvalue(), err.getvalue())


def with_sizes(args: list[str], sizes: dict[str, object]) -> list[str]:
    """`args` plus the size overrides for the keys the command does not set itself (except SHRINK)."""
    own = {a.split("=", 1)[0] for a in args if "=" in a and not a.startswith("-")}
    return [*args, *(f"{k}={v}" for k, v in sizes.items() if k not in own or k in SHRINK)]


# A documented value of these is too big to run on 2 cores; it is validated alone, then shrunk to run.
SHRINK = {"task.train_size", "task.eval_size", "eval.max_new_tokens", "generate.max_new_tokens",
          "judge.max_new_tokens"}
EVAL_SIZES = {"task.train_size": 2, "task.eval_size": 2, "eval.samples": 2, "eval.pass_k": 2, "eval.max_new_tokens": 4}
SHIPPED_SIZES = {
    "iterations": 1, "task.train_size": 2, "task.eval_size": 2, "generate.samples_per_problem": 2,
    "generate.max_new_tokens": 4, "eval.samples": 0, "eval.max_new_tokens": 4, "train.epochs": 1,
    "train.batch_size": 2, "guards.control": "[]", "guards.fresh_size": 0, "guards.embeddings": False,
    "star.samples": 1, "judge.samples": 1, "judge.max_new_tokens": 4, "constitution.critique_max_new_tokens": 4,
    "constitution.revision_max_new_tokens": 4, "teacher.max_new_tokens": 4,
    "rl.steps": 1, "rl.prompts_per_step": 2, "rl.num_generations": 2,
}
# The files the docs' examples name, as a reader would have them.
FILES = {
    "solution.py": "def add(a, b):\n    return a + b\n",
    "check.py": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n",
    "asserts.py": "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n",
    "rows.jsonl": '{"prompt": "Say hi.", "response": "hi"}\n{"prompt": "Say hi.", "response": "Score: 5"}\n',
}
# The shared run pauses for review at iteration 2 (of 2), so the README's `it2/ID` is a real iteration.
GATE = ("iterations=2", "review.every=2", "review.poll_seconds=0.2", "review.sample_size=3")
GATE_ITER = "iter-002"


@dataclass
class Gate:
    cwd: Path  # the folder the command ran in
    run: Path  # the run folder, relative to cwd
    proc: subprocess.CompletedProcess


class Workspace:
    """Folders laid out as the docs assume, and the shared run in each of its states, each made once."""

    def __init__(self, root: Path, tiny: Path):
        self.root, self.tiny = root, tiny
        self.base = self.folder("base")
        (self.base / "configs").symlink_to(ROOT / "configs")
        for name, text in FILES.items():
            (self.base / name).write_text(text)
        self.sums = write_jsonl(root / "sums.jsonl", [
            {"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(6) for b in range(5)])
        selfplay(["init", "my.yaml"], self.base).ok()
        self.teacher = root / "teacher"  # a distillation teacher of its own, not the student's folder
        shutil.copytree(tiny, self.teacher)
        self.done: dict[tuple, tuple[Path, Result]] = {}
        self.gates: dict[Command, Gate] = {}

    def folder(self, prefix: str) -> Path:
        path = self.root / f"{prefix}-{len(list(self.root.glob(prefix + '-*')))}"
        path.mkdir()
        return path

    def fresh(self, state: Path) -> Path:
        """A copy of a state's folder, for a command that changes it."""
        dest = self.root / f"copy-{len(list(self.root.glob('copy-*')))}"
        shutil.copytree(state, dest, symlinks=True)
        return dest

    def once(self, state: str, args: list[str], folder: Callable[[], Path]) -> tuple[Path, Result]:
        """Run `selfplay ARGS` in the folder `folder()` gives, once per (state, args): repeats share the result."""
        key = (state, tuple(args))
        if key not in self.done:
            cwd = folder()
            self.done[key] = (cwd, selfplay(args, cwd))
        return self.done[key]

    def gate_for(self, cmd: Command) -> Gate:
        """A documented user run, in a subprocess, killed by SIGKILL once it says it waits at its review gate."""
        if cmd not in self.gates:
            cfg = doc_config(cmd, self)
            cwd = self.fresh(self.base)
            run = Path(cfg.output_dir) / cfg.name
            sizes = dict(a.split("=", 1) for a in tiny_overrides(self.tiny, self.sums, Path("runs")))
            del sizes["name"], sizes["output_dir"]  # where the documented command puts it
            args = [*with_sizes(cmd.args, sizes), *GATE]
            env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
            out, err = cwd / "stdout.txt", cwd / "stderr.txt"  # files: a full pipe would stall the run
            with out.open("w") as stdout, err.open("w") as stderr:
                proc = subprocess.Popen([sys.executable, "-m", "selfplay", *args], cwd=cwd, env=env,
                                        stdout=stdout, stderr=stderr)
                try:
                    deadline = time.monotonic() + 300
                    while ("waiting for review" not in out.read_text() and proc.poll() is None
                           and time.monotonic() < deadline):
                        time.sleep(0.2)
                finally:
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=60)
            self.gates[cmd] = Gate(cwd, run, subprocess.CompletedProcess(
                args, proc.returncode, out.read_text(), err.read_text()))
        gate = self.gates[cmd]
        assert gate.proc.returncode == -signal.SIGKILL, (
            f"`{cmd.text}` did not reach its review gate (exit {gate.proc.returncode}):\n{gate.proc.stderr[-3000:]}")
        return gate

    @cached_property
    def gate(self) -> Gate:
        """The first documented user run, at its gate: the run the other run-folder commands act on."""
        return self.gate_for(next(c for c in COMMANDS if (row := _row(c)) and row.check is check_user_run))

    @cached_property
    def approved(self) -> Path:
        cwd = self.fresh(self.gate.cwd)
        selfplay(["approve", str(self.gate.run)], cwd).ok()
        return cwd

    @cached_property
    def finished(self) -> Path:
        """The shared run approved and resumed to its end (by the same command as the documented resume)."""
        cwd, result = self.once("approved", ["resume", str(self.gate.run)], lambda: self.fresh(self.approved))
        result.ok()
        return cwd


@pytest.fixture(scope="module")
def ws(tiny_model, tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("documented"), tiny_model)


# -- shared checks -----------------------------------------------------------------------------------
def help_text(sub: str) -> str:
    result = selfplay([sub, "--help"], ROOT)
    assert result.rc == 0, f"`selfplay {sub}` is not a subcommand: {result.err.strip()}"
    return result.out


def check_flags(cmd: Command) -> None:
    """The subcommand exists and every flag the command uses is one `selfplay SUB --help` lists."""
    sub = cmd.args[0]
    text = help_text(sub)
    for flag in (a.split("=", 1)[0] for a in cmd.args if a.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"`selfplay {sub} --help` has no {flag}"


def config_path(word: str, ws: Workspace) -> Path:
    if word.startswith("configs/"):
        return ROOT / word
    if word.startswith("runs/"):
        return ws.finished / run_path(word, ws)
    return ws.base / word  # my.yaml, from `selfplay init`


def doc_config(cmd: Command, ws: Workspace) -> RunConfig | None:
    """The config a command describes, from its own config file and overrides only (no sizes)."""
    args, extra = cli.build_parser().parse_known_args(cmd.args)
    if hasattr(args, "items"):
        items = [*args.items, *extra]
        path, overrides = (items[0], items[1:]) if items and "=" not in items[0] else (None, items)
    elif args.command == "eval":
        path = args.config
        overrides = [*(cli.task_overrides(args.task) if args.task else []), *args.overrides, *extra]
    elif args.command == "train-rm":
        path, overrides = None, [*args.overrides, *extra]
    else:
        return None
    overrides = [re.sub(r"\bmypkg\.\w+:", "tests.plugins:", o) for o in overrides]  # the guide's plugin module
    try:
        return load_config(config_path(path, ws) if path else None, overrides)
    except UserError as e:
        pytest.fail(f"`{cmd.text}`: its config does not load: {e}")


def run_path(word: str, ws: Workspace) -> str:
    """`runs/NAME/...` in the docs is the shared run's folder."""
    return str(ws.gate.run.joinpath(*Path(word).parts[2:]))


def map_runs(args: list[str], ws: Workspace) -> list[str]:
    return [run_path(a, ws) if a.startswith("runs/") else a for a in args]


def frozen_value(data: dict, key: str) -> object:
    for part in key.split("."):
        data = data[part]
    return data


# -- how each kind of command is checked ---------------------------------------------------------------
def check_init(cmd: Command, ws: Workspace) -> None:
    cwd = ws.folder("init")
    selfplay(cmd.args, cwd).ok()
    assert load_config(cwd / cmd.args[1]) == load_config(None), "the starter config is not the defaults"


def check_user_run(cmd: Command, ws: Workspace) -> None:
    gate = ws.gate_for(cmd)  # it said it waits for review, and was killed there
    folder = gate.cwd / gate.run
    assert json.loads((folder / "state.json").read_text())["status"] == "waiting for review"
    assert (folder / "iter-001" / "model" / "config.json").is_file() and (folder / GATE_ITER / "train.jsonl").is_file()
    frozen = yaml.safe_load((folder / "config.yaml").read_text())
    for override in cmd.overrides:  # what the command sets is what the run froze
        key, value = override.split("=", 1)
        if key not in SHRINK:
            assert frozen_value(frozen, key) == yaml.safe_load(value), f"{key} was not applied"


def check_resume(cmd: Command, ws: Workspace) -> None:
    cwd, result = ws.once("approved", map_runs(cmd.args, ws), lambda: ws.fresh(ws.approved))
    result.ok()
    folder = cwd / ws.gate.run
    assert json.loads((folder / "state.json").read_text())["status"] == "finished"
    assert (folder / GATE_ITER / "model" / "config.json").is_file()


def check_review(cmd: Command, ws: Workspace) -> None:
    request = json.loads((ws.gate.cwd / ws.gate.run / GATE_ITER / "review.request.json").read_text())
    shown = selfplay(map_runs(cmd.args, ws), ws.gate.cwd).ok().out
    assert "waiting for a decision" in shown and all(ex["id"] in shown for ex in request["shown"])


def _decide(cmd: Command, ws: Workspace) -> tuple[dict, list[str], list[str], Result]:
    """Run a decision command on a copy of the gate: the decision recorded, the args run, the ids it rejected."""
    cwd = ws.fresh(ws.gate.cwd)
    it = cwd / ws.gate.run / GATE_ITER
    real_id = json.loads((it / "review.request.json").read_text())["shown"][0]["id"]
    args = [real_id if re.fullmatch(r"it\d+/ID", a) else a for a in map_runs(cmd.args, ws)]
    result = selfplay(args, cwd).ok()
    return json.loads((it / "review.decision.json").read_text()), args, [a for a in args if a == real_id], result


def check_approve(cmd: Command, ws: Workspace) -> None:
    decision, _, rejected, result = _decide(cmd, ws)
    assert decision["decision"] == "approved" and decision["rejected_ids"] == rejected
    if rejected:
        assert f"{len(rejected)} example(s) removed" in result.out


def check_reject(cmd: Command, ws: Workspace) -> None:
    decision, args, _, _ = _decide(cmd, ws)
    assert decision["decision"] == "rejected"
    if "--reason" in args:
        assert decision["reason"] == args[args.index("--reason") + 1]


def check_eval_run_model(cmd: Command, ws: Workspace) -> None:
    cfg = doc_config(cmd, ws)
    args = map_runs(cmd.args, ws)
    model = ws.finished / args[1]
    assert (model / "config.json").is_file(), f"{cmd.args[1]}: the test's run has no such model"
    _, result = ws.once("finished", with_sizes(args, {} if "--config" in args else EVAL_SIZES), lambda: ws.finished)
    got = result.ok().json()
    assert (ws.finished / got["model"]).resolve() == model.resolve()
    expected = cfg.task.eval_size if "--config" in args else EVAL_SIZES["task.eval_size"]
    assert got["problems"] == expected and cfg.task.label in got["task"]


def check_eval_named(cmd: Command, ws: Workspace) -> None:
    from selfplay.models import EMBEDDED, EMBEDDED_PREFIX

    cfg = doc_config(cmd, ws)
    name = cmd.args[1].removeprefix(EMBEDDED_PREFIX)
    assert name in EMBEDDED, f"{cmd.args[1]} is not an embedded model (known: {sorted(EMBEDDED)})"
    args = with_sizes([cmd.args[0], str(ws.tiny), *cmd.args[2:]], EVAL_SIZES)  # the tiny model in its place
    got = selfplay(args, ws.base).ok().json()
    assert got["problems"] == EVAL_SIZES["task.eval_size"] and got["task"] == cfg.task.label


def check_report(cmd: Command, ws: Workspace) -> None:
    _, result = ws.once("finished", map_runs(cmd.args, ws), lambda: ws.finished)
    page = Path(result.ok().out.strip().splitlines()[-1])
    page = page if page.is_absolute() else ws.finished / page
    assert page.name == "report.html" and "<html" in page.read_text()[:500].lower()


def check_export(cmd: Command, ws: Workspace) -> None:
    args = map_runs(cmd.args, ws)
    _, result = ws.once("finished", args, lambda: ws.finished)
    result.ok()
    note = json.loads((ws.finished / args[2] / "selfplay-export.json").read_text())
    state = json.loads((ws.finished / args[1] / "state.json").read_text())
    assert note["best"] and note["iteration"] == state["best_iteration"]
    assert (ws.finished / args[2] / "config.json").is_file()


def check_shipped_run(cmd: Command, ws: Workspace) -> None:
    cfg = doc_config(cmd, ws)
    out = ws.folder("shipped")
    sizes = {**SHIPPED_SIZES, "model.path": ws.tiny, "output_dir": out}
    if cfg.recipe == "distill" and cfg.teacher.is_endpoint:
        # No server here (tests/test_openai_backend.py distils from one): a local folder teaches instead.
        sizes["teacher.model"] = ws.teacher
    selfplay(with_sizes(cmd.args, sizes), ws.base).ok()
    folder = out / cfg.name
    assert json.loads((folder / "state.json").read_text())["status"] == "finished"
    assert (folder / "iter-001" / "eval.json").is_file()
    assert yaml.safe_load((folder / "config.yaml").read_text())["recipe"] == cfg.recipe


def check_launch_run(cmd: Command, ws: Workspace) -> None:
    from selfplay.generation import build_generator
    from selfplay.models import placement

    cfg = doc_config(cmd, ws)
    launch = cfg.generate.options["launch"]
    exe = shlex.split(launch)[0]
    if Path(exe).exists():
        pytest.skip(f"{exe} exists here: this check is for machines without it")
    # The options and the command line are read; only the server's executable (vLLM, on a GPU box) is missing.
    with pytest.raises(UserError, match=f"launch: command '{re.escape(exe)}' not found"):
        build_generator(cfg.generate.backend, ws.tiny, placement("cpu", "float32"), cfg.generate.options)


def check_plugin_recipe(cmd: Command, ws: Workspace) -> None:
    from selfplay import api
    from tests import plugins

    cfg = doc_config(cmd, ws)
    name = cfg.recipe.split(":")[1]
    assert api.resolve_recipe(cfg.recipe) is getattr(plugins, name)  # the guide's recipe is tests/plugins.py's


def check_judge(cmd: Command, ws: Workspace) -> None:
    doc_config(cmd, ws)
    args = with_sizes(cmd.args, {"model.path": ws.tiny, "judge.max_new_tokens": 8})
    out = selfplay(args, ws.base).ok().out
    rows = cmd.args[cmd.args.index("--file") + 1] if "--file" in cmd.args else None
    expected = len((ws.base / rows).read_text().splitlines()) if rows else cmd.args.count("--response")
    assert len(re.findall(r"^\[\d+\] score ", out, re.M)) == expected, out


def check_sandbox(cmd: Command, ws: Workspace) -> None:
    for word in cmd.args[1:]:
        if word.endswith(".py"):
            assert word in FILES, f"{word}: add the file the example means to FILES"
    verdict = selfplay(cmd.args, ws.base).ok().json()
    assert verdict["passed"] and verdict["status"] == "passed", verdict


def check_shorthand(cmd: Command, ws: Workspace) -> None:
    doc_config(cmd, ws)  # flags were checked for every command; the config and overrides validate


def check_mention(cmd: Command, ws: Workspace) -> None:
    assert cmd.args[0] in cli.COMMANDS  # and `selfplay SUB --help` works, as for every command


def check_ray_start(cmd: Command, ws: Workspace) -> None:
    exe = Path(sys.executable).parent / "ray"
    assert exe.is_file(), "Ray's CLI is not installed (pip install 'selfplay[ray]')"
    proc = subprocess.run([str(exe), "start", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for flag in (a.split("=", 1)[0] for a in cmd.argv[2:] if a.startswith("--")):
        assert flag in proc.stdout, f"ray start --help has no {flag}"


def check_ray_auth(cmd: Command, ws: Workspace) -> None:
    """The installed Ray has token authentication (2.52+), whose token `ray get-auth-token` prints."""
    exe = Path(sys.executable).parent / "ray"
    assert exe.is_file(), "Ray's CLI is not installed (pip install 'selfplay[ray]')"
    proc = subprocess.run([str(exe), "get-auth-token", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"ray get-auth-token: {proc.stderr[-2000:]}"


def check_serve(cmd: Command, ws: Workspace) -> None:
    """Start the app as documented (on a free port), open the URL it prints, and read the runs it lists."""
    import requests

    folder = ws.folder("serve")
    (folder / cmd.argv[2]).mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "selfplay", *cmd.args, "--port", "0"], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        proc.stdout.readline()
        url = proc.stdout.readline().split("open: ", 1)[1].strip()
        deadline = time.monotonic() + 60
        while True:
            try:
                page = requests.get(url, timeout=5)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
                time.sleep(0.2)
        assert page.status_code == 200 and "No run folders here yet" in page.text, page.text[:500]
    finally:
        proc.kill()
        proc.communicate()


def check_make(cmd: Command, ws: Workspace) -> None:
    target = cmd.argv[1]
    proc = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"the Makefile has no target {target!r}: {proc.stderr}"


def _pyproject_table(name: str) -> str:
    """The text of one [table] of pyproject.toml (no TOML reader before Python 3.11)."""
    text = (ROOT / "pyproject.toml").read_text()
    start = text.index(f"[{name}]\n")
    end = re.search(r"^\[", text[start + 1:], re.M)
    return text[start: start + 1 + end.start()] if end else text[start:]


def check_marker(cmd: Command, ws: Workspace) -> None:
    expression = cmd.argv[cmd.argv.index("-m") + 1]
    known = set(re.findall(r'^\s*"(\w+):', _pyproject_table("tool.pytest.ini_options"), re.M))
    for word in set(re.findall(r"\w+", expression)) - {"and", "or", "not"}:
        assert word in known, f"pytest marker {word!r} is not registered in pyproject.toml (known: {sorted(known)})"


def check_extra(cmd: Command, ws: Workspace) -> None:
    extras = set(re.findall(r"^(\w[\w-]*)\s*=", _pyproject_table("project.optional-dependencies"), re.M))
    for word in cmd.argv[2:]:
        m = re.fullmatch(r"selfplay\[([\w,-]+)\]", word)
        if m:
            for extra in m[1].split(","):
                assert extra in extras, f"pyproject.toml has no extra {extra!r} (it has: {sorted(extras)})"


def check_benchmark(cmd: Command, ws: Workspace) -> None:
    script = ROOT / cmd.argv[1]
    assert script.is_file(), f"{cmd.argv[1]} does not exist"
    proc = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for flag in (a.split("=", 1)[0] for a in cmd.argv[2:] if a.startswith("--")):
        assert flag in proc.stdout, f"{cmd.argv[1]} --help has no {flag}"


@dataclass(frozen=True)
class Row:
    pattern: str  # matched at the start of the command as documented
    how: str
    check: Callable[[Command, Workspace], None]
    runs: bool  # a whole run or a subprocess: marked e2e


CHECKS = [
    Row(r"selfplay init \S+$", "run: writes the starter config, which loads as the defaults", check_init, False),
    Row(r"selfplay run my\.yaml .*generate\.backend=openai", "config and backend options validated; the launch "
        "command is read up to its executable (vLLM on a GPU box, absent here)", check_launch_run, False),
    Row(r"selfplay run my\.yaml .*\brecipe=\S+:", "config validated; the recipe named resolves to "
        "tests/plugins.py's, which tests/test_plugins.py runs", check_plugin_recipe, False),
    Row(r"selfplay run my\.yaml", "run for real on the tiny model (2 iterations, a review gate at iteration 1), "
        "killed by SIGKILL at the gate", check_user_run, True),
    Row(r"selfplay run configs/\S+\.yaml .*\b(scale\.|train\.launcher)", "config and overrides validated (the "
        "cluster, GPUs and ranks it names are not here; tests/test_scale.py and tests/test_launch.py run Ray and "
        "accelerate for real)", check_shorthand, False),
    Row(r"ray start ", "Ray's CLI is installed and takes every flag shown", check_ray_start, False),
    Row(r"export RAY_AUTH_MODE=token$", "the installed Ray has token authentication (`ray get-auth-token`); the "
        "whole sequence was run by hand against `ray start --head` (docs/guide.md, Scale)", check_ray_auth, False),
    Row(r"selfplay run configs/\S+\.yaml .*\breview\.human_eval=", "config and overrides validated (the gates "
        "it sets run for real in tests/test_browser.py and tests/test_human.py)", check_shorthand, False),
    Row(r"selfplay serve \S+$", "run for real on a free port: the printed URL opens the runs list", check_serve, True),
    Row(r"selfplay run configs/\S+\.yaml$", "run for real: one iteration of the shipped config at tiny sizes "
        "(a distillation teacher's URL replaced by a local folder)", check_shipped_run, True),
    Row(r"selfplay resume runs/\S+$", "run for real: the killed run, approved, resumed to its end", check_resume, True),
    Row(r"selfplay eval runs/\S+/model\b", "run for real on a model of the finished run", check_eval_run_model, True),
    Row(r"selfplay eval embedded:\S+", "run for real with the tiny model in its place; the name must be an "
        "embedded model", check_eval_named, True),
    Row(r"selfplay report runs/\S+$", "run for real on the finished run", check_report, True),
    Row(r"selfplay export runs/\S+ \S+$", "run for real on the finished run", check_export, True),
    Row(r"selfplay review runs/\S+$", "run for real at the review gate", check_review, True),
    Row(r"selfplay approve runs/\S+", "run for real at the review gate (its ID: one the gate shows)", check_approve,
        True),
    Row(r"selfplay reject runs/\S+", "run for real at the review gate", check_reject, True),
    Row(r"selfplay judge configs/\S+\.yaml", "run for real: the tiny model judges", check_judge, True),
    Row(r"selfplay sandbox \S+\.py --tests", "run for real: a correct add() against the tests", check_sandbox, False),
    Row(r"selfplay [\w-]+ .*\b(RUN|OUT|MODEL|NAME)\b", "shorthand in a sentence: subcommand, flags, config and "
        "overrides", check_shorthand, False),
    Row(r"selfplay [\w-]+$", "a bare mention: the subcommand exists", check_mention, False),
    Row(r"make \w+$", "the Makefile has the target (make -n)", check_make, False),
    Row(r"\.venv/bin/pytest -m ", "the marker is registered in pyproject.toml", check_marker, False),
    Row(r"pip install \S*selfplay\[", "the extra exists in pyproject.toml", check_extra, False),
    Row(r"python benchmarks/\S+\.py", "the script exists and --help exits 0 (their --smoke runs are "
        "tests/test_benchmarks'), with every flag used", check_benchmark, False),
]


def _row(cmd: Command) -> Row | None:
    return next((r for r in CHECKS if re.match(r.pattern, cmd.text)), None)


def _param(cmd: Command):
    row = _row(cmd)
    marks = [pytest.mark.e2e] if row and row.runs else []
    return pytest.param(cmd, id=f"{cmd.where} {cmd.text}"[:100], marks=marks)


# -- the tests ---------------------------------------------------------------------------------------
def test_the_docs_show_commands_and_every_one_is_classified():
    assert {c.where.split(":")[0] for c in COMMANDS} == set(DOCS)  # the reader above still finds them
    unclassified = [f"{c.where}: {c.text}" for c in COMMANDS if _row(c) is None]
    assert not unclassified, ("documented commands this test does not know how to check; add a row to CHECKS "
                              "in tests/test_documented_commands.py:\n  " + "\n  ".join(unclassified))


@pytest.mark.parametrize("cmd", [_param(c) for c in COMMANDS])
def test_documented_command(cmd: Command, ws: Workspace):
    row = _row(cmd)
    if row is None:
        pytest.fail(f"{cmd.where}: `{cmd.text}` is not classified: add a row to CHECKS saying how to check it")
    if cmd.argv[0] == "selfplay" and len(cmd.argv) > 1:
        check_flags(cmd)
    elif cmd.argv[0] == "selfplay":
        pytest.fail(f"{cmd.where}: `{cmd.text}` names no subcommand")
    row.check(cmd, ws)


def test_config_files_named_in_the_docs_load():
    named = {m for name in DOCS for m in re.findall(r"configs/[\w.-]+\.ya?ml", (ROOT / name).read_text())}
    assert named, "the docs name no configs/ file"
    for path in sorted(named):
        assert (ROOT / path).is_file(), f"the docs name {path}, which does not exist"
        load_config(ROOT / path)


# Inline code that looks like a config key but names something else.
NOT_KEYS = {"model.generate"}  # transformers' method


def _key_exists(parts: list[str]) -> bool:
    model: type[BaseModel] = RunConfig
    for part in parts:
        field = model.model_fields.get(part)
        if field is None:
            return False
        if not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return True  # a value (options, params, a list): what lies below it is the value's own
        model = field.annotation
    return True


def test_config_keys_named_in_the_docs_exist():
    """`section.key`, `section.key=value` or `section.key: value` in inline code, or `section.key=...` in a
    shell block's comment, names a real config field."""
    sections = set(RunConfig.model_fields)
    named: list[tuple[str, str]] = []
    for name in DOCS:
        for n, span in prose_spans(name):
            key = re.match(r"([a-z_]+(?:\.[a-z_0-9]+)+)(?:$|=|:)", span)
            if key:
                named.append((f"{name}:{n}", key[1]))
        for n, lang, line in _read(name)[0]:
            if lang in SHELL:
                comment = _split_comment(line)[1]
                named += [(f"{name}:{n}", k) for k in re.findall(r"\b([a-z_]+(?:\.[a-z_0-9]+)+)=", comment)]
    checked = [(where, key) for where, key in named if key.split(".")[0] in sections and key not in NOT_KEYS
               and not re.search(r"\.(jsonl?|html|yaml|py|md)$", key)]  # a file name: eval.json, train.jsonl
    assert len(checked) > 50, checked  # the reader above still finds the keys
    missing = [f"{where}: {key}" for where, key in checked if not _key_exists(key.split("."))]
    assert not missing, "config keys in the docs that the config does not have:\n  " + "\n  ".join(missing)


def test_yaml_examples_in_the_guide_are_valid_configs():
    blocks = re.findall(r"^```yaml\n(.*?)^```", (ROOT / "docs/guide.md").read_text(encoding="utf-8"), re.S | re.M)
    assert blocks
    for block in blocks:
        validate(yaml.safe_load(block), "docs/guide.md yaml example")
