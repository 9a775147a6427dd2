"""The project's pool of unlabeled tasks, remembered between trainings.

Listing a 100k-task project's unlabeled tasks takes Label Studio 30-40 s, so a
new version is ranked on the pool as last listed (minus the tasks the training
found annotated, plus tasks Label Studio announced with TASKS_CREATED) and the
full listing runs in the background (backend/maintainer.py), at most every
MCM_POOL_RELIST_SECONDS.
Stored as MODEL_DIR/<project>/pool.npz (task ids, image URLs, when listed).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Iterable, Sequence

import numpy as np

from mcm_core.atomic import atomic_savez

class Pool:
    """Unlabeled task ids and their image URLs (thread-safe, persisted atomically)."""

    def __init__(self, project_dir: str, image_key: str) -> None:
        self.path = os.path.join(project_dir, "pool.npz")
        self.image_key = image_key
        self._lock = threading.Lock()
        self._urls: dict[int, str] = {}
        self.listed_at: float | None = None   # wall clock of the last full listing
        self._read()

    def _read(self) -> None:
        try:
            with np.load(self.path, allow_pickle=False) as data:
                ids, urls = data["task_ids"], data["urls"]
                listed = float(data["listed_at"]) if "listed_at" in data else None
                key = str(data["image_key"]) if "image_key" in data else self.image_key
        except (OSError, ValueError, KeyError):
            return  # no pool yet, or unreadable: the next listing rebuilds it
        if key != self.image_key:
            return  # the label config changed: a listing of the new key is needed
        self._urls = {int(i): str(u) for i, u in zip(ids.tolist(), urls.tolist())}
        self.listed_at = listed

    def _write(self) -> None:
        ids = np.asarray(list(self._urls), dtype=np.int64)
        urls = np.asarray([self._urls[i] for i in ids.tolist()], dtype=str)
        atomic_savez(self.path, task_ids=ids, urls=urls, listed_at=np.float64(self.listed_at or 0.0),
                     image_key=np.asarray(self.image_key))

    @property
    def known(self) -> bool:
        return self.listed_at is not None

    def stale(self, now: float, max_age: float) -> bool:
        return self.listed_at is None or now - self.listed_at >= max_age

    def tasks(self) -> list[dict]:
        """Tasks in the shape the scorer reads: {"id", "data": {image_key: url}}, by id."""
        with self._lock:
            return [{"id": i, "data": {self.image_key: self._urls[i]}} for i in sorted(self._urls)]

    def __len__(self) -> int:
        return len(self._urls)

    def __contains__(self, task_id: int) -> bool:
        return int(task_id) in self._urls

    def replace(self, tasks: Iterable[dict], listed_at: float | None = None) -> None:
        """A full listing: the pool becomes exactly these tasks."""
        urls = {}
        for task in tasks:
            url = (task.get("data") or {}).get(self.image_key)
            urls[int(task["id"])] = url if isinstance(url, str) else ""
        with self._lock:
            self._urls = urls
            self.listed_at = listed_at if listed_at is not None else time.time()
            self._write()

    def add(self, tasks: Iterable[dict]) -> None:
        with self._lock:
            for task in tasks:
                url = (task.get("data") or {}).get(self.image_key)
                self._urls[int(task["id"])] = url if isinstance(url, str) else ""
            self._write()

    def remove(self, task_ids: Sequence[int]) -> int:
        with self._lock:
            removed = sum(self._urls.pop(int(t), None) is not None for t in task_ids)
            if removed:
                self._write()
            return removed
