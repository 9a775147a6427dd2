"""Per-project cache of per-task arrays, keyed by (task id, image URL).

For a frozen backbone the cached array is the feature vector; for the trainable
simple-cnn it is the prepared image (the CNN changes at every retrain, so its
cheap features are recomputed from cached images). Either way a retrain never
downloads or decodes an unchanged task again. Storage: append-only npz shards
under MODEL_DIR/<project>/cache/<kind>/, each written atomically (temp file +
os.replace), merged when there are many. A changed URL is a new key.
"""
from __future__ import annotations

import glob
import logging
import os
import tempfile
import threading
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)

Key = tuple[int, str]
MAX_SHARDS = 32


def _atomic_savez(path: str, **arrays: np.ndarray) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class ArrayCache:
    """Thread-safe (task id, url) -> array store persisted as npz shards."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._lock = threading.RLock()
        self._index: dict[Key, int] = {}
        self._shards: list[np.ndarray] = []
        self._all: np.ndarray | None = None
        self._next_shard = 0
        self._load()

    def _shard_paths(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.directory, "shard-*.npz")))

    def _load(self) -> None:
        for path in self._shard_paths():
            try:
                with np.load(path, allow_pickle=False) as data:
                    ids, urls, values = data["task_ids"], data["urls"], data["values"]
            except Exception as exc:  # a corrupt shard costs a re-download, not the backend
                logger.warning("feature cache: ignoring unreadable shard %s: %s", path, exc)
                continue
            self._append(ids, urls, values)
            number = int(os.path.basename(path)[6:-4])
            self._next_shard = max(self._next_shard, number + 1)
        if self._index:
            logger.info("feature cache %s: %d cached tasks", self.directory, len(self._index))

    def _append(self, ids: np.ndarray, urls: np.ndarray, values: np.ndarray) -> None:
        offset = sum(len(s) for s in self._shards)
        if self._shards and values.shape[1:] != self._shards[0].shape[1:]:
            logger.warning("feature cache %s: dropping shard with shape %s (expected %s)", self.directory,
                           values.shape[1:], self._shards[0].shape[1:])
            return
        self._shards.append(values)
        for row, (tid, url) in enumerate(zip(ids.tolist(), urls.tolist())):
            self._index[(int(tid), str(url))] = offset + row
        self._all = None

    def __len__(self) -> int:
        return len(self._index)

    def missing(self, keys: Sequence[Key]) -> list[int]:
        """Positions in `keys` that are not cached."""
        with self._lock:
            return [i for i, key in enumerate(keys) if key not in self._index]

    def put(self, keys: Sequence[Key], values: np.ndarray) -> None:
        if not len(keys):
            return
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys but {len(values)} values")
        ids = np.asarray([k[0] for k in keys], dtype=np.int64)
        urls = np.asarray([k[1] for k in keys], dtype=str)
        values = np.ascontiguousarray(values)
        with self._lock:
            path = os.path.join(self.directory, f"shard-{self._next_shard:06d}.npz")
            _atomic_savez(path, task_ids=ids, urls=urls, values=values)
            self._next_shard += 1
            self._append(ids, urls, values)
            if len(self._shards) > MAX_SHARDS:
                self._compact()

    def _compact(self) -> None:
        """Merge all shards into one file (new file first, then remove the old ones)."""
        keys = sorted(self._index.items(), key=lambda kv: kv[1])
        values = self._values()[[row for _, row in keys]]
        old = self._shard_paths()
        path = os.path.join(self.directory, f"shard-{self._next_shard:06d}.npz")
        _atomic_savez(path, task_ids=np.asarray([k[0] for k, _ in keys], dtype=np.int64),
                      urls=np.asarray([k[1] for k, _ in keys], dtype=str), values=values)
        self._next_shard += 1
        for p in old:
            os.unlink(p)
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
