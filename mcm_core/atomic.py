"""Crash-safe file writes: write a temp file in the target directory, fsync, then os.replace.

A reader (or a crash at any point) sees either the old file or the complete new one, never a
half-written model, cache shard or pointer. The temp file is removed when writing fails.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, BinaryIO, Callable

import numpy as np


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(handle)` on a temp file beside `path`, then atomically rename it to `path`."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_json(path: str | os.PathLike, payload: Any) -> None:
    atomic_write(path, lambda h: h.write(json.dumps(payload, indent=1, sort_keys=True).encode()))


def atomic_savez(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    atomic_write(path, lambda h: np.savez(h, **arrays))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    atomic_write(path, lambda h: torch.save(obj, h))
