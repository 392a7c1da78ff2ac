"""A real `selfplay serve` on loopback for the web tests: uvicorn in a thread, on a free port, with a known token."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
import uvicorn

from selfplay.web.app import create_app
from selfplay.web.server import free_port

TOKEN = "test-token-0123456789"


@contextmanager
def serving(runs_dir: Path, refresh_seconds: int = 1) -> Iterator[str]:
    port = free_port("127.0.0.1")
    app = create_app(runs_dir, TOKEN, port, refresh_seconds=refresh_seconds)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
        time.sleep(0.05)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def session(base: str) -> requests.Session:
    """A person's browser after opening the printed URL: the token is in its cookie."""
    s = requests.Session()
    r = s.get(f"{base}/?token={TOKEN}", allow_redirects=False)
    assert r.status_code == 303 and any(c.startswith("selfplay_token_") for c in r.cookies.keys())
    return s
