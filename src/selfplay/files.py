"""Crash-safe file I/O: atomic writes, strict JSONL reading, and an append-only log that survives SIGKILL.

Every file a run depends on is written to a temporary name in the same folder, fsynced, and renamed into
place, so a reader sees either the old file or the whole new one. Long stages append to a `.partial`
file instead; on resume a torn last line (power loss, disk full) is detected and cut off, never kept.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from selfplay.errors import UserError, WriteError


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that a crash leaves either the old file or the complete new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)  # a failed write leaves nothing behind; the old file is untouched
        raise WriteError(path, e) from None
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
    atomic_write_text(path, "".join(lines))
    return len(lines)


def create_json_once(path: Path, data: Any) -> bool:
    """Write `data` to `path` only if no file is there; True if this call wrote it, False if one already was.

    The file appears whole or not at all (a complete temporary file is linked into place, and a link never
    replaces), so of two processes that race, the first stands and the second learns it lost.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    except OSError as e:
        raise WriteError(path, e) from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return True


def atomic_replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written folder into place, replacing any stale copy left by an earlier crash."""
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_number, object) for each non-blank line; a malformed line is an error naming its number."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: line {lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise UserError(f"{path}: line {lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [obj for _, obj in iter_jsonl(path)]


def recover_partial_jsonl(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """Read an append-only `.partial` log after a crash.

    Returns the complete rows and whether a torn last line was found and cut off. A malformed line
    that is not the last one means the file was damaged some other way, and is an error.
    """
    if not path.exists():
        return [], False
    data = path.read_bytes()
    lines = data.split(b"\n")
    # After a clean append the data ends with "\n", so the last element is empty.
    tail = lines.pop()
    rows: list[dict[str, Any]] = []
    for lineno, raw in enumerate(lines, start=1):
        try:
            rows.append(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{path}: line {lineno}: malformed JSON in the middle of the file") from None
    return rows, bool(tail.strip())


class JsonlAppender:
    """Append JSON lines durably: each `write_many` call is flushed and fsynced before it returns."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = open(self.path, "a", encoding="utf-8")

    def write_many(self, rows: Iterable[dict[str, Any]]) -> None:
        try:
            self._f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            # A partly written line is cut off on resume (recover_partial_jsonl), so nothing whole is lost.
            raise WriteError(self.path, e) from None

    def close(self) -> None:
        try:
            self._f.close()
        except OSError as e:
            raise WriteError(self.path, e) from None

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
