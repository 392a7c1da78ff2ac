"""Starting the app: the token, the bind address rule, and uvicorn."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

from selfplay.errors import UserError
from selfplay.web.security import is_loopback, new_token


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve(runs_dir: Path, host: str = "127.0.0.1", port: int = 8765, allow_remote: bool = False,
          token: str | None = None) -> None:
    """Serve the runs under `runs_dir` until Ctrl-C; print the URL (with its token) first."""
    try:
        import uvicorn

        from selfplay.web.app import create_app
    except ImportError as e:
        raise UserError(f"selfplay serve needs the web extra ({e.name} is missing): pip install 'selfplay[web]'") \
            from None
    if importlib.util.find_spec("python_multipart") is None and importlib.util.find_spec("multipart") is None:
        raise UserError("selfplay serve needs the web extra (python-multipart, for its forms, is missing): "
                        "pip install 'selfplay[web]'")
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir}: no such folder (the folder that holds run folders, e.g. runs/)")
    loopback = is_loopback(host)
    if not loopback and not allow_remote:
        raise UserError(f"--host {host}: not a loopback address, so anyone who can reach this machine could open the "
                        "app; pass --allow-remote as well to bind it anyway")
    token = token or new_token()
    port = port or free_port(host)
    shown = f"[{host}]" if ":" in host else host
    print(f"selfplay serve: {runs_dir.resolve()}\n  open: http://{shown}:{port}/?token={token}", flush=True)
    if not loopback:
        print(f"WARNING: bound to {host}, not loopback: anyone on the network who has the token can decide for "
              "your runs. Traffic is plain HTTP; put it behind TLS (an SSH tunnel or a reverse proxy) on a shared "
              "network.", flush=True)
    app = create_app(runs_dir, token, port, loopback=loopback)
    uvicorn.run(app, host=host, port=port, log_level="warning")
