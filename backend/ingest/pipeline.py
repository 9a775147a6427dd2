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

from PIL import Image

from ..boxes import box_key
from ..label_config import LabelConfig
from ..labelstudio.client import describe_error
from ..settings import Settings
from .cache import ArrayCache
from .extractor import Extractor
from .fetch import ImageFetcher, ImageFetchError

logger = logging.getLogger(__name__)

FETCH_THREADS = 8
FAILURE_RETRY_SECONDS = 300


def image_keys(tasks: Sequence[dict], config: LabelConfig, skipped: dict[int, str]) -> list[tuple[int, str] | None]:
    """(task id, image URL) per task; None (and a reason in `skipped`) for a task without an image."""
    keys: list[tuple[int, str] | None] = []
    for task in tasks:
        task_id = task.get("id")
        url = (task.get("data") or {}).get(config.image_key)
        if task_id is None:
            keys.append(None)
        elif not isinstance(url, str) or not url:
            skipped[int(task_id)] = f"task data has no image under key {config.image_key!r}"
            keys.append(None)
        else:
            keys.append((int(task_id), url))
    return keys


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

    def cache(self, project_id: int, kind: str | None = None) -> ArrayCache:
        """The project's cache of `kind` (default: the extractor's; a detector's box features have their own)."""
        kind = kind or self.extractor.cache_kind
        with self._lock:
            cache = self._caches.get((int(project_id), kind))
            if cache is None:
                directory = os.path.join(self.settings.project_dir(project_id), "cache", kind)
                cache = self._caches[(int(project_id), kind)] = ArrayCache(directory)
            return cache

    def cached_arrays(self, project_id: int, tasks: Sequence[dict], config: LabelConfig,
                      ) -> tuple[list[int], list[tuple[int, str]], dict[int, str]]:
        """Make sure every task's image is in the cache.

        Returns (positions of usable tasks, their cache keys, {task id: reason}
        for skipped tasks). Missing images are downloaded in parallel and
        prepared in batches; a failing task is logged and skipped.
        """
        skipped: dict[int, str] = {}
        keys = image_keys(tasks, config, skipped)
        images = {k: [k] for k in keys if k is not None}
        self._ensure(project_id, images, skipped, self.extractor, lambda image, key: [self.extractor.prepare_one(image)])
        ok = [i for i, k in enumerate(keys) if k is not None and k[0] not in skipped]
        return ok, [keys[i] for i in ok], skipped

    def cached_box_arrays(self, project_id: int, images: Sequence[tuple[int, str, np.ndarray]], featurizer,
                          ) -> tuple[list[list[tuple[int, str]] | None], dict[int, str]]:
        """Make sure every box of every (task id, url, boxes) is in the featurizer's cache.

        Returns each image's box keys (None for a skipped image) and {task id: reason}. An image
        is downloaded once for all its missing boxes (backend/detection.py: the featurizers)."""
        skipped: dict[int, str] = {}
        rows = {(int(t), str(u)): [(int(t), box_key(u, b)) for b in boxes] for t, u, boxes in images}
        boxes_of = {(int(t), str(u)): boxes for t, u, boxes in images}
        self._ensure(project_id, rows, skipped, featurizer,
                     lambda image, key: featurizer.prepare_boxes(image, boxes_of[key]))
        return [None if int(t) in skipped else rows[(int(t), str(u))] for t, u, _ in images], skipped

    def _ensure(self, project_id: int, rows: dict[tuple[int, str], list[tuple[int, str]]], skipped: dict[int, str],
                featurizer, prepare: Callable[[Image.Image, tuple[int, str]], list[np.ndarray]]) -> None:
        """Download and prepare the images whose rows (cache keys) are not all cached yet.

        Images that failed recently are not retried on every request (a dead host would cost a
        timeout each time); failures go to `skipped` and the log."""
        cache = self.cache(project_id, featurizer.cache_kind)
        images = list(rows)
        flat = [(image, key) for image in images for key in rows[image]]
        todo_keys = list(dict.fromkeys(flat[i][0] for i in cache.missing([key for _, key in flat])))
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
            self._download_and_prepare(project_id, todo_keys, rows, skipped, cache, featurizer, prepare)
            with self._lock:
                for key in todo_keys:
                    if key[0] in skipped:
                        self._failed[key] = (now, skipped[key[0]])
                if len(self._failed) > 100_000:  # bound the memory of a project full of dead links
                    self._failed.clear()
        for task_id, reason in skipped.items():
            logger.warning("project %s: skipping task %s: %s", project_id, task_id, reason)

    def _download_and_prepare(self, project_id: int, keys: list[tuple[int, str]],
                              rows: dict[tuple[int, str], list[tuple[int, str]]], skipped: dict[int, str],
                              cache: ArrayCache, featurizer, prepare, batch: int = 256) -> None:
        """Fetch, decode and prepare each image in a download thread; cache the batch.

        An image is decoded inside the fetcher's pixel budget and reduced to its
        small prepared arrays at once, so memory stays bounded whatever the images.
        A failing task is recorded in `skipped`, never fails the others.
        """
        started = time.monotonic()
        for start in range(0, len(keys), batch):
            good = []
            for key, prepared, error in self.map_images(keys[start:start + batch], prepare):
                if error is None:
                    good.append((key, prepared))
                else:
                    skipped[key[0]] = error
            if good:
                self._cache_rows(cache, featurizer, good, rows, skipped)
        logger.info("project %s: fetched and prepared %d images (%d skipped) in %.2fs", project_id,
                    len(keys), sum(1 for k in keys if k[0] in skipped), time.monotonic() - started)

    def map_images(self, keys: Sequence[tuple[int, str]], fn: Callable[[Image.Image, tuple[int, str]], object]):
        """(key, fn(decoded image, key), None) or (key, None, reason) per (task id, url), in order.

        Download threads fetch and decode; `fn` runs inside the fetcher's pixel budget, so it
        should reduce the image to small arrays at once. A failure costs only its key."""
        fetcher = self.fetcher()

        def load(key):
            try:
                data = fetcher.fetch_bytes(key[1], key[0])
                with fetcher.decoded(data, key[1]) as image:
                    return key, fn(image, key), None
            except ImageFetchError as exc:
                return key, None, str(exc)
            except Exception as exc:  # never let one task break the batch
                return key, None, f"cannot prepare image: {describe_error(exc)}"  # e.g. the key's refresh

        with ThreadPoolExecutor(max_workers=FETCH_THREADS) as pool:
            yield from pool.map(load, keys)

    @staticmethod
    def _cache_rows(cache: ArrayCache, featurizer, good: list, rows: dict, skipped: dict[int, str]) -> None:
        """Cache the prepared rows of a batch of images; one image's bad rows cost only that image."""
        keys = [row_key for image, prepared in good for row_key in rows[image][:len(prepared)]]
        if not keys:
            return
        try:
            values = featurizer.to_cache(np.stack([row for _, prepared in good for row in prepared]))
        except Exception:  # retry image by image so one bad image costs only its task
            keys, parts = [], []
            for image, prepared in good:
                if not len(prepared):
                    continue
                try:
                    parts.append(featurizer.to_cache(np.stack(prepared)))
                    keys += rows[image][:len(prepared)]
                except Exception as exc:
                    skipped[image[0]] = f"cannot extract features: {exc.__class__.__name__}: {exc}"
            if not parts:
                return
            values = np.concatenate(parts)
        cache.put(keys, values)

    def features(self, project_id: int, keys: Sequence[tuple[int, str]], model=None,
                 trained_backbone=None, kind: str | None = None) -> np.ndarray:
        """Feature rows for cached keys; for simple-cnn computed with the given / current CNN (memoised).
        `kind`: the cache of a frozen box featurizer other than the extractor (a detector's box head)."""
        cached = self.cache(project_id, kind).get(list(keys))
        if kind is not None or not self.extractor.trainable:
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
