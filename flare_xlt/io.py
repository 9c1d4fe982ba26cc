"""Atomic file writes: an artifact is either complete or absent, never truncated."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def replace_atomically(path: str | Path, write: Callable[[str], None]) -> None:
    """`write(temporary_path)` fills a temporary file in the target's folder, which is then synced and renamed into
    place: a reader never sees a half-written file and a crash leaves the previous version."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp creates 0600; artifacts get the usual permissions
        write(temporary)
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    replace_atomically(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    replace_atomically(path, lambda temporary: Path(temporary).write_bytes(data))


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
