"""The publishing ledger: each version's life in Label Studio (MODEL_DIR/<project>/published.json),
and the lock that lets one process at a time publish, fill or retire a project."""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from typing import Iterator

from mcm_core.atomic import atomic_write_json

logger = logging.getLogger(__name__)


class Ledger:
    """published.json: {"current": version, "versions": {version: {...}}}, updated under a file lock.

    Per version: published_at, superseded_at, pushed (ranks pushed), pool, retired_at,
    nothing_to_score_at (found no unlabeled task: not published; wall-clock seconds), so the life
    of every version survives restarts and is shared by the web process and RQ workers.
    """

    def __init__(self, project_dir: str) -> None:
        self.project_dir = project_dir
        self.path = os.path.join(project_dir, "published.json")
        self._lock = threading.Lock()

    def read(self) -> dict:
        try:
            with open(self.path) as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {"current": None, "versions": {}}
        except ValueError:
            logger.error("%s is unreadable; starting a new ledger (old versions are adopted again)", self.path)
            return {"current": None, "versions": {}}
        if not isinstance(data, dict) or not isinstance(data.get("versions"), dict):
            return {"current": None, "versions": {}}
        return data

    @contextlib.contextmanager
    def editing(self) -> Iterator[dict]:
        """Read-modify-write under an in-process lock and an exclusive file lock."""
        os.makedirs(self.project_dir, exist_ok=True)
        with self._lock, open(os.path.join(self.project_dir, ".published.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.read()
            yield data
            atomic_write_json(self.path, data)


@contextlib.contextmanager
def project_lock(project_dir: str, blocking: bool = True) -> Iterator[bool]:
    """One publisher per project across processes; yields False if busy and not blocking."""
    os.makedirs(project_dir, exist_ok=True)
    with open(os.path.join(project_dir, ".publish.lock"), "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
