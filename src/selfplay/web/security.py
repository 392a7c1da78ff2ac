"""What keeps the web app safe on a shared machine: the token, cross-site refusal, the Host check, safe paths.

- Every page needs the token the app prints at start. Opening `/?token=T` once stores it in an HttpOnly,
  SameSite=Strict cookie named for the app's port; scripts may send `Authorization: Bearer T`. Cookies do not
  keep ports apart, so another server on the same host could be sent it: what protects a decision is the next
  point.
- A writing request (POST) also needs the form's `csrf` field, derived from the token, and an Origin, when the
  browser sends one, that is this app's own: a page elsewhere cannot make a person's browser decide for them.
- Bound to loopback, the app answers only requests whose Host is a loopback name (any port: an SSH tunnel
  works), so a web page cannot reach it through DNS rebinding.
- A run name in a URL is one folder name under the runs folder; whatever it resolves to (after `..` or symlinks)
  must still lie inside the runs folder.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from pathlib import Path

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


class Refused(Exception):
    """A request the app will not serve: `status` and one line saying why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def new_token() -> str:
    return secrets.token_urlsafe(24)


def cookie_name(port: int) -> str:
    return f"selfplay_token_{port}"


def sign(token: str, message: str) -> str:
    """A short signature of a message this app shows after a redirect, so a link cannot put words in its mouth."""
    return hmac.new(token.encode(), b"flash\0" + message.encode(), hashlib.sha256).hexdigest()[:24]


def csrf_for(token: str) -> str:
    return hmac.new(token.encode(), b"selfplay-csrf", hashlib.sha256).hexdigest()[:32]


def same(a: str | None, b: str) -> bool:
    return a is not None and hmac.compare_digest(a.encode(), b.encode())


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_allowed(host_header: str | None) -> bool:
    """Is the Host a loopback name? DNS rebinding puts a foreign name here. The port is not checked, so an SSH
    tunnel on another local port (ssh -L 9000:localhost:8765) works."""
    if not host_header:
        return False
    name = host_header
    if host_header.startswith("["):  # [::1] or [::1]:8765
        name = host_header[: host_header.index("]") + 1] if "]" in host_header else host_header
    elif host_header.count(":") == 1:
        name = host_header.split(":")[0]
    return name.lower() in LOOPBACK_NAMES


def run_folder(root: Path, name: str) -> Path:
    """The run folder `name` under `root`, refused when the name is not one plain folder name or leads outside."""
    if not RUN_NAME.fullmatch(name) or name in (".", ".."):
        raise Refused(404, f"no run named {name[:80]!r} (a run is one folder under the runs folder)")
    path = root / name
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise Refused(404, f"no run named {name!r} under {root}") from None
    if not real.is_relative_to(root.resolve()) or real == root.resolve():
        raise Refused(404, f"{name!r} leads outside the runs folder; it is not served")
    if not (real / "config.yaml").is_file():
        raise Refused(404, f"{name!r} is not a run folder (no config.yaml)")
    return path


def file_inside(run: Path, root: Path, relative: str) -> Path:
    """A file of a run, refused when it (or a symlink on its way) leads outside the runs folder."""
    path = run / relative
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise Refused(404, f"{relative}: not written yet") from None
    if not real.is_relative_to(root.resolve()) or not real.is_file():
        raise Refused(404, f"{relative}: leads outside the runs folder; it is not served")
    return real
