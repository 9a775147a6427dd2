"""Image ingest: task image -> download -> decode -> prepared array -> feature cache -> features.

One `Ingest` per process owns the image fetcher, the per-project feature caches and
the memory of images that failed recently, so a training, a re-scoring and /predict
never download or prepare an unchanged task twice. For a frozen backbone the cache
holds feature vectors; for the trainable simple-cnn it holds prepared images and the
features of the current CNN are memoised on the loaded model.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from .extractor import Extractor
from .feature_cache import ArrayCache
from .images import ImageFetcher, ImageFetchError
from .label_config import ImageChoicesConfig
from .settings import Settings

logger = logging.getLogger(__name__)

FETCH_THREADS = 8
FAILURE_RETRY_SECONDS = 300


class Ingest:
    """Downloads, prepares and caches task images; returns their feature rows."""

    def __init__(self, settings: Settings, extractor: Extractor, auth_header: Callable[[], str] | None) -> None:
        self.settings = settings
        self.extractor = extractor
        self._auth_header = auth_header
        self._caches: dict[int, ArrayCache] = {}
        self._fetcher: ImageFetcher | None = None
        self._failed: dict[tuple[int, str], tuple[float, str]] = {}  # (task id, url) -> (when, why)
        self._lock = threading.Lock()

    def fetcher(self) -> ImageFetcher:
        with self._lock:
            if self._fetcher is None:
                s = self.settings
                self._fetcher = ImageFetcher(
                    label_studio_url=s.label_studio_url, auth_header=self._auth_header,
                    allowed_hosts=s.allowed_hosts, max_bytes=s.image_max_bytes, timeout=s.image_timeout,
                    max_pixels=s.image_max_pixels)
            return self._fetcher

    def cache(self, project_id: int) -> ArrayCache:
        with self._lock:
            cache = self._caches.get(int(project_id))
            if cache is None:
                directory = os.path.join(self.settings.project_dir(project_id), "cache", self.extractor.cache_kind)
                cache = self._caches[int(project_id)] = ArrayCache(directory)
            return cache

    def cached_arrays(self, project_id: int, tasks: Sequence[dict], config: ImageChoicesConfig,
                      ) -> tuple[list[int], list[tuple[int, str]], dict[int, str]]:
        """Make sure every task's image is in the cache.

        Returns (positions of usable tasks, their cache keys, {task id: reason}
        for skipped tasks). Missing images are downloaded in parallel and
        prepared in batches; a failing task is logged and skipped.
        """
        cache = self.cache(project_id)
        keys: list[tuple[int, str] | None] = []
        skipped: dict[int, str] = {}
        for task in tasks:
            task_id = task.get("id")
            url = (task.get("data") or {}).get(config.image_key)
            if task_id is None:
                keys.append(None)
                continue
            if not isinstance(url, str) or not url:
                skipped[int(task_id)] = f"task data has no image under key {config.image_key!r}"
                keys.append(None)
                continue
            keys.append((int(task_id), url))
        todo = [i for i in cache.missing([k for k in keys if k is not None])]
        present = [k for k in keys if k is not None]
        todo_keys = list(dict.fromkeys(present[i] for i in todo))
        # Recently failed images are not retried on every request (a dead host would cost a timeout each time).
        now = time.monotonic()
        with self._lock:
            for key in [k for k in todo_keys if k in self._failed]:
                failed_at, reason = self._failed[key]
                if now - failed_at < FAILURE_RETRY_SECONDS:
                    skipped[key[0]] = f"{reason} (failed {now - failed_at:.0f}s ago; retried after " \
                                      f"{FAILURE_RETRY_SECONDS}s)"
                else:
                    del self._failed[key]
        todo_keys = [k for k in todo_keys if k[0] not in skipped]
        if todo_keys:
            self._download_and_prepare(project_id, todo_keys, skipped)
            with self._lock:
                for key in todo_keys:
                    if key[0] in skipped:
                        self._failed[key] = (now, skipped[key[0]])
                if len(self._failed) > 100_000:  # bound the memory of a project full of dead links
                    self._failed.clear()
        ok = [i for i, k in enumerate(keys) if k is not None and k[0] not in skipped]
        for task_id, reason in skipped.items():
            logger.warning("project %s: skipping task %s: %s", project_id, task_id, reason)
        return ok, [keys[i] for i in ok], skipped

    def _download_and_prepare(self, project_id: int, keys: list[tuple[int, str]], skipped: dict[int, str],
                              batch: int = 256) -> None:
        """Fetch, decode and prepare each image in a download thread; cache the batch.

        An image is decoded inside the fetcher's pixel budget and reduced to its
        small prepared array at once, so memory stays bounded whatever the images.
        A failing task is recorded in `skipped`, never fails the others.
        """
        fetcher = self.fetcher()
        cache = self.cache(project_id)

        def load(key):
            try:
                data = fetcher.fetch_bytes(key[1], key[0])
                with fetcher.decoded(data, key[1]) as image:
                    return key, self.extractor.prepare_one(image), None
            except ImageFetchError as exc:
                return key, None, str(exc)
            except Exception as exc:  # never let one task break the batch
                return key, None, f"cannot prepare image: {exc.__class__.__name__}: {exc}"

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=FETCH_THREADS) as pool:
            for start in range(0, len(keys), batch):
                good = []
                for key, row, error in pool.map(load, keys[start:start + batch]):
                    if error is None:
                        good.append((key, row))
                    else:
                        skipped[key[0]] = error
                if good:
                    self._cache_rows(cache, good, skipped)
        logger.info("project %s: fetched and prepared %d images (%d skipped) in %.2fs", project_id,
                    len(keys), sum(1 for k in keys if k[0] in skipped), time.monotonic() - started)

    def _cache_rows(self, cache: ArrayCache, good: list, skipped: dict[int, str]) -> None:
        try:
            values = self.extractor.to_cache(np.stack([row for _, row in good]))
        except Exception:  # retry one by one so one bad row costs only its task
            rows = []
            for key, row in good:
                try:
                    rows.append((key, self.extractor.to_cache(row[None])[0]))
                except Exception as exc:
                    skipped[key[0]] = f"cannot extract features: {exc.__class__.__name__}: {exc}"
            if not rows:
                return
            good, values = rows, np.stack([value for _, value in rows])
        cache.put([key for key, _ in good], values)

    def features(self, project_id: int, keys: Sequence[tuple[int, str]], model=None,
                 trained_backbone=None) -> np.ndarray:
        """Feature rows for cached keys; for simple-cnn computed with the given / current CNN (memoised)."""
        cached = self.cache(project_id).get(list(keys))
        if not self.extractor.trainable:
            return np.asarray(cached, dtype=np.float32)
        if trained_backbone is not None:
            return self.extractor.features(cached, trained_backbone)
        if model is None:
            raise RuntimeError("simple-cnn features need a model")
        with model.memo_lock:
            memo = model.feature_memo
            missing = [i for i, k in enumerate(keys) if k not in memo]
            if missing:
                new = self.extractor.features(cached[missing], model.trained_backbone)
                base = sum(len(v) for v in model.memo_values)
                model.memo_values.append(new)
                for j, i in enumerate(missing):
                    memo[keys[i]] = base + j
                if len(model.memo_values) > 1:
                    model.memo_values[:] = [np.concatenate(model.memo_values)]
            if not keys:
                return np.zeros((0, 0), dtype=np.float32)
            values = model.memo_values[0]
            return values[np.asarray([memo[k] for k in keys], dtype=np.int64)]
