"""Servers a run starts for itself: an OpenAI-compatible server command (`transformers serve`, `vllm serve`, or a
template) on a free loopback port, in its own process group under a watchdog, stopped by `close()`.

A launched server runs in its own session under a small watchdog process: close() and atexit stop it on a normal
exit, and the watchdog stops it when the run is killed outright (SIGKILL), so no server outlives its run.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selfplay.errors import UserError
from selfplay.models import Placement

SERVE_INSTALL = "pip install 'selfplay[serve]' (transformers[serving]: fastapi, uvicorn)"
# Runs the server command and stays its parent. When the run dies without closing it (SIGKILL, a crash atexit
# cannot cover), this process is orphaned, sees its parent change, and stops the server's process group.
WATCHDOG = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, lambda *_: None)  # close() signals the group: the server exits, then this
parent, server = int(sys.argv[1]), subprocess.Popen(sys.argv[2:])
while server.poll() is None:
    if os.getppid() != parent:
        os.killpg(0, signal.SIGTERM)
        try:
            server.wait(15)
        finally:
            os.killpg(0, signal.SIGKILL)
    time.sleep(0.5)
sys.exit(server.returncode if server.returncode >= 0 else 128 - server.returncode)
"""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS picks it); the server binds it a moment later."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _executable(name: str) -> str | None:
    """`name` next to this Python (the venv's console scripts), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def launch_command(launch: str, model_path: Path, host: str, port: int, where: Placement | None,
                   field: str = "generate.options") -> list[str]:
    """The argv that serves `model_path` on host:port, for 'transformers', 'vllm' or a command template."""
    if launch == "transformers":
        exe = _executable("transformers")
        if exe is None or importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
            raise UserError(f"{field}.launch: 'transformers' needs transformers serve and its server packages; "
                            f"{SERVE_INSTALL}")
        argv = [exe, "serve", str(model_path), "--host", host, "--port", str(port)]
        if where is not None:
            argv += ["--device", where.device, "--dtype", str(where.dtype).removeprefix("torch.")]
        return argv
    template = "vllm serve {model} --host {host} --port {port}" if launch == "vllm" else launch
    try:
        argv = [part.format(model=str(model_path), host=host, port=port) for part in shlex.split(template)]
    except (KeyError, IndexError, ValueError) as e:
        raise UserError(f"{field}.launch: cannot read the command {template!r} ({type(e).__name__}: {e}); "
                        "it may use the placeholders {model}, {host} and {port}") from None
    if "{port}" not in template:
        raise UserError(f"{field}.launch: the command {template!r} must serve on {{port}} (a free port chosen here)")
    exe = _executable(argv[0]) if "/" not in argv[0] else (argv[0] if os.access(argv[0], os.X_OK) else None)
    if exe is None:
        hint = (" (vllm needs its own environment, see selfplay/generation/vllm.py; then give its path: "
                "'.venv-vllm/bin/vllm serve {model} --host {host} --port {port}')" if launch == "vllm" else "")
        raise UserError(f"{field}.launch: command {argv[0]!r} not found{hint}")
    return [exe, *argv[1:]]


class ServerProcess:
    """A server command in its own process group under a watchdog, its output in a log file; `close()` stops it."""

    def __init__(self, argv: list[str], base_url: str, startup_timeout: float, field: str = "generate.options"):
        self.argv = argv
        self.base_url = base_url
        self.field = field
        self.folder = Path(tempfile.mkdtemp(prefix="selfplay-server-"))
        self.log_path = self.folder / "server.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the model is a local folder; nothing goes to the network
        with open(self.log_path, "wb") as log:
            self.process: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-c", WATCHDOG, str(os.getpid()), *argv], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
        self.pid = self.process.pid  # the watchdog's, which is also the process group's id
        atexit.register(self.close)
        try:
            self._wait_ready(startup_timeout)
        except BaseException:
            self.close(keep_log=True)
            raise

    def _wait_ready(self, startup_timeout: float) -> None:
        import openai

        deadline = time.monotonic() + startup_timeout
        # loopback: no proxy from the environment, no retries (this loop is the retry), no key
        probe = openai.OpenAI(base_url=self.base_url, api_key=lambda: "", max_retries=0, timeout=2,
                              http_client=openai.DefaultHttpxClient(trust_env=False))
        try:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise UserError(f"{self.field}.launch: the server exited with code {code} before it answered: "
                                    f"{shlex.join(self.argv)}; {self.log_tail()}")
                try:
                    probe.models.with_raw_response.list(extra_headers={"Authorization": openai.omit})
                    return
                except openai.APIError:
                    pass  # not listening yet, or still loading
                if time.monotonic() > deadline:
                    raise UserError(f"{self.field}.launch: the server did not answer GET {self.base_url}/models "
                                    f"within {startup_timeout:g} s ({self.field}.startup_timeout): "
                                    f"{shlex.join(self.argv)}; {self.log_tail()}")
                time.sleep(0.25)
        finally:
            probe.close()

    def log_tail(self, lines: int = 6) -> str:
        text = self.log_path.read_bytes()[-4000:].decode("utf-8", "replace")
        last = [s.strip() for s in text.replace("\r", "\n").splitlines() if s.strip()][-lines:]
        return f"last lines of {self.log_path}: " + (" | ".join(last) if last else "(empty)")

    def close(self, keep_log: bool = False, grace: float = 15.0) -> None:
        """SIGTERM to the process group, SIGKILL to what is left after `grace` seconds; safe to call twice."""
        process, self.process = self.process, None
        if process is None:
            return
        atexit.unregister(self.close)
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        while time.monotonic() < deadline:  # workers the server started (vLLM's engine core) may outlive it briefly
            try:
                os.killpg(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        if not keep_log:
            shutil.rmtree(self.folder, ignore_errors=True)
