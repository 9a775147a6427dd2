"""Per-project cache of per-task arrays, keyed by (task id, image URL).

For a frozen backbone the cached array is the feature vector; for the trainable
simple-cnn it is the prepared image (the CNN changes at every retrain, so its
cheap features are recomputed from cached images). Either way a retrain never
downloads or decodes an unchanged task again. Storage: append-only npz shards
under MODEL_DIR/<project>/cache/<kind>/, each written atomically (temp file +
os.replace), merged when there are many. A changed URL is a new key.

Several processes (the web process, RQ workers) may share one directory: every
writer names its shards uniquely (number + pid + random), a merge holds an
exclusive file lock and deletes only the shards it merged, and a lookup that
misses first picks up shards other processes wrote since.
"""
from __future__ import annotations

import fcntl
import glob
import logging
import os
import re
import uuid
import threading
from typing import Sequence

import numpy as np

from mcm_core.atomic import atomic_savez

logger = logging.getLogger(__name__)

Key = tuple[int, str]
MAX_SHARDS = 32
_SHARD_NUMBER = re.compile(r"^shard-(\d+)")


class ArrayCache:
    """Thread-safe (task id, url) -> array store persisted as npz shards."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._lock = threading.RLock()
        self._index: dict[Key, int] = {}
        self._shards: list[np.ndarray] = []
        self._all: np.ndarray | None = None
        self._next_shard = 0
        self._loaded: set[str] = set()
        self._writer = f"{os.getpid()}{uuid.uuid4().hex[:6]}"  # unique shard names per writer process
        self._load()

    def _shard_paths(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.directory, "shard-*.npz")))

    def _load(self) -> None:
        """Read the shards not read yet (also those other processes wrote since)."""
        for path in self._shard_paths():
            if path in self._loaded:
                continue
            self._loaded.add(path)
            try:
                with np.load(path, allow_pickle=False) as data:
                    ids, urls, values = data["task_ids"], data["urls"], data["values"]
            except Exception as exc:  # a corrupt shard costs a re-download, not the backend
                logger.warning("feature cache: ignoring unreadable shard %s: %s", path, exc)
                continue
            self._append(ids, urls, values)
            number = _SHARD_NUMBER.match(os.path.basename(path))
            if number:
                self._next_shard = max(self._next_shard, int(number.group(1)) + 1)
        if self._index:
            logger.info("feature cache %s: %d cached tasks", self.directory, len(self._index))

    def _append(self, ids: np.ndarray, urls: np.ndarray, values: np.ndarray) -> None:
        offset = sum(len(s) for s in self._shards)
        if self._shards and values.shape[1:] != self._shards[0].shape[1:]:
            logger.warning("feature cache %s: dropping shard with shape %s (expected %s)", self.directory,
                           values.shape[1:], self._shards[0].shape[1:])
            return
        keys = [(int(tid), str(url)) for tid, url in zip(ids.tolist(), urls.tolist())]
        new = [row for row, key in enumerate(keys) if key not in self._index]
        if not new:
            return
        if len(new) < len(keys):  # e.g. another process's merge of shards already read
            values, keys = values[new], [keys[row] for row in new]
        self._shards.append(values)
        for row, key in enumerate(keys):
            self._index[key] = offset + row
        self._all = None

    def __len__(self) -> int:
        return len(self._index)

    def missing(self, keys: Sequence[Key]) -> list[int]:
        """Positions in `keys` that are not cached."""
        with self._lock:
            missing = [i for i, key in enumerate(keys) if key not in self._index]
            if missing:
                self._load()
                missing = [i for i in missing if keys[i] not in self._index]
            return missing

    def put(self, keys: Sequence[Key], values: np.ndarray) -> None:
        if not len(keys):
            return
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys but {len(values)} values")
        ids = np.asarray([k[0] for k in keys], dtype=np.int64)
        urls = np.asarray([k[1] for k in keys], dtype=str)
        values = np.ascontiguousarray(values)
        with self._lock:
            path = os.path.join(self.directory, f"shard-{self._next_shard:06d}-{self._writer}.npz")
            try:
                atomic_savez(path, task_ids=ids, urls=urls, values=values)
            except OSError as exc:
                # A read-only or full disk costs persistence, not the predictions: keep the rows in memory.
                logger.warning("feature cache %s: cannot write a shard (%s); %d entries kept in memory only",
                               self.directory, exc, len(keys))
                self._append(ids, urls, values)
                return
            self._loaded.add(path)
            self._next_shard += 1
            self._append(ids, urls, values)
            if len(self._shards) > MAX_SHARDS:
                try:
                    self._compact()
                except OSError as exc:
                    logger.warning("feature cache %s: cannot merge shards (%s); kept as they are", self.directory, exc)

    def _compact(self) -> None:
        """Merge the shards this process read into one file (new file first, then remove those).

        Under an exclusive lock file, so two processes never merge at once; shards
        written by others meanwhile are not touched (they were not merged).
        """
        keys = sorted(self._index.items(), key=lambda kv: kv[1])
        values = self._values()[[row for _, row in keys]]
        os.makedirs(self.directory, exist_ok=True)
        with open(os.path.join(self.directory, ".merge.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            old = [p for p in self._shard_paths() if p in self._loaded]
            path = os.path.join(self.directory, f"shard-{self._next_shard:06d}-{self._writer}.npz")
            atomic_savez(path, task_ids=np.asarray([k[0] for k, _ in keys], dtype=np.int64),
                          urls=np.asarray([k[1] for k, _ in keys], dtype=str), values=values)
            self._loaded.add(path)
            self._next_shard += 1
            for p in old:
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
        self._index = {key: i for i, (key, _) in enumerate(keys)}
        self._shards = [values]
        self._all = values

    def _values(self) -> np.ndarray:
        if self._all is None:
            self._all = self._shards[0] if len(self._shards) == 1 else np.concatenate(self._shards)
            self._shards = [self._all]
        return self._all

    def get(self, keys: Sequence[Key]) -> np.ndarray:
        """Stacked arrays for `keys` (all must be cached)."""
        with self._lock:
            rows = [self._index[key] for key in keys]
            if not rows:
                return np.zeros((0,), dtype=np.float32)
            return self._values()[np.asarray(rows, dtype=np.int64)]
