"""Atomic file writes: an artifact is either complete or absent, never truncated. Memory-mapped safetensors shards."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import safe_open

if TYPE_CHECKING:
    import torch


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


def replace_directory_atomically(path: str | Path, write: Callable[[Path], None]) -> None:
    """`write(staging)` fills a new folder beside `path`; its files are synced and the folder is renamed into place.

    A folder already at `path` is renamed away whole before the new one takes its place and is deleted only then, so
    a crash leaves the earlier folder (under a hidden name, at worst), never a half-written or half-deleted `path`.
    Leftovers of an interrupted call are removed by the next call for the same `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.staging")
    previous = path.with_name(f".{path.name}.previous")
    for leftover in (staging, previous):
        shutil.rmtree(leftover, ignore_errors=True)
    staging.mkdir()
    try:
        write(staging)
        for file in staging.rglob("*"):
            if file.is_file():
                with open(file, "rb+") as written:
                    os.fsync(written.fileno())
        if path.exists():
            os.replace(path, previous)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    replace_atomically(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    replace_atomically(path, lambda temporary: Path(temporary).write_bytes(data))


def save_tensors_atomic(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """A safetensors file written whole or not at all."""
    from safetensors.torch import save_file  # imported here: the text and JSON writers need no torch

    replace_atomically(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))


class TensorShards:
    """The safetensors shards of one folder, read through memory maps. Each shard is opened on first use and kept
    open: reopening it for every tensor would re-read its header each time."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._handles: dict[str, Any] = {}

    def __getstate__(self) -> dict:
        # Open handles cannot be pickled; DataLoader workers started by spawn reopen them lazily.
        return {**self.__dict__, "_handles": {}}

    def open(self, shard: str) -> Any:
        handle = self._handles.get(shard)
        if handle is None:
            handle = self._handles[shard] = safe_open(self.directory / shard, framework="pt")
        return handle

    def get(self, shard: str, key: str) -> torch.Tensor:
        return self.open(shard).get_tensor(key)

    def close(self, shard: str) -> None:
        self._handles.pop(shard, None)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
