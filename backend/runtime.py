"""Heavy, long-lived state of the backend, kept out of the LabelStudioMLBase object.

label-studio-ml 1.0.9 re-creates the model object on every /setup, so loading a
model there would reload weights all the time. Instead one `Runtime` per
process holds, per project: the loaded miner (+ trained CNN), its version, the
feature cache and the training status. `/predict` only reads this; a project is
loaded from disk once, at first use, and reloaded only when its `current.json`
pointer changes (a training in another process, e.g. an RQ worker).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

from .extractor import Extractor
from .features import ArrayCache
from .images import ImageFetcher, ImageFetchError
from .label_config import ImageChoicesConfig
from .model_store import ModelStore
from .pool import Pool
from .publishing import Ledger, Publisher
from .settings import Settings

logger = logging.getLogger(__name__)

FETCH_THREADS = 8
FAILURE_RETRY_SECONDS = 300


@dataclasses.dataclass
class LoadedModel:
    version: str
    miner: Any
    trained_backbone: Any | None
    meta: dict
    # simple-cnn: features of the current CNN for cached tasks, (task id, url) -> row
    feature_memo: dict = dataclasses.field(default_factory=dict)
    memo_values: list = dataclasses.field(default_factory=list)
    memo_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


@dataclasses.dataclass
class ProjectState:
    project_id: int
    lock: threading.RLock = dataclasses.field(default_factory=threading.RLock)
    model: LoadedModel | None = None
    pointer_mtime: float | None = None
    config: ImageChoicesConfig | None = None
    training: bool = False
    last_error: str | None = None
    n_scored: int = 0
    loaded: bool = False


class Runtime:
    """Per-process state: settings, backbone, projects, caches, Label Studio client."""

    def __init__(self, settings: Settings, extractor: Extractor | None = None) -> None:
        self.settings = settings
        import torch

        torch.set_num_threads(settings.torch_threads)  # process-wide; see MCM_TORCH_THREADS
        if settings.miner_kwargs:  # fail at start-up, not at the first training
            from mcm_core import MinorityMiner
            try:
                MinorityMiner(num_classes=2, seed=settings.seed, **settings.miner_kwargs)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"MCM_MINER_OPTIONS={settings.miner_options!r} is not usable: {exc}") from None
        self.extractor = extractor or Extractor(settings.backbone, settings.backbone_weights,
                                                 cnn_epochs=settings.cnn_epochs, num_threads=settings.torch_threads)
        self._projects: dict[int, ProjectState] = {}
        self._caches: dict[int, ArrayCache] = {}
        self._lock = threading.Lock()
        self._client = None
        self._fetcher: ImageFetcher | None = None
        self._failed: dict[tuple[int, str], tuple[float, str]] = {}  # (task id, url) -> (when, why)
        self._pools: dict[int, Pool] = {}

    # -- Label Studio ----------------------------------------------------------
    def ls_client(self):
        from .ls_sync import make_client
        with self._lock:
            if self._client is None:
                self._client = make_client(self.settings.label_studio_url, self.settings.label_studio_api_key)
            return self._client

    def fetcher(self) -> ImageFetcher:
        with self._lock:
            if self._fetcher is None:
                auth = None
                if self.settings.label_studio_url and self.settings.label_studio_api_key:
                    from .ls_sync import auth_header
                    auth = lambda: auth_header(self.ls_client())  # noqa: E731
                self._fetcher = ImageFetcher(
                    label_studio_url=self.settings.label_studio_url, auth_header=auth,
                    allowed_hosts=self.settings.allowed_hosts, max_bytes=self.settings.image_max_bytes,
                    timeout=self.settings.image_timeout)
            return self._fetcher

    # -- projects --------------------------------------------------------------
    def store(self, project_id: int) -> ModelStore:
        return ModelStore(self.settings.project_dir(project_id))

    def project(self, project_id: int) -> ProjectState:
        """The project's state, loading its current model from disk the first time (or when it changed)."""
        project_id = int(project_id)
        with self._lock:
            state = self._projects.get(project_id)
            if state is None:
                state = self._projects[project_id] = ProjectState(project_id)
        store = self.store(project_id)
        mtime = store.pointer_mtime()
        if not state.loaded or mtime != state.pointer_mtime:
            with state.lock:
                if not state.loaded or mtime != state.pointer_mtime:
                    self._load(state, store, mtime)
        return state

    def known_projects(self) -> list[int]:
        if not os.path.isdir(self.settings.model_dir):
            return []
        return sorted(int(d) for d in os.listdir(self.settings.model_dir)
                      if d.isdigit() and os.path.exists(os.path.join(self.settings.model_dir, d, "current.json")))

    def _load(self, state: ProjectState, store: ModelStore, mtime: float | None) -> None:
        """Load the current version; if it is unreadable, serve the newest older version that loads."""
        state.loaded = True
        state.pointer_mtime = mtime
        version = store.current_version()
        if version is None or (state.model is not None and state.model.version == version):
            return
        older = [v for v in reversed(store.versions()) if v != version]
        for candidate in [version] + older:
            if state.model is not None and state.model.version == candidate:
                return  # already serving the best loadable version
            try:
                state.model = self._read_version(store, candidate)
            except Exception as exc:
                state.last_error = f"cannot load model {candidate}: {exc.__class__.__name__}: {exc}"
                logger.error("project %s: %s", state.project_id, state.last_error)
                continue
            if candidate != version:
                logger.warning("project %s: serving older model %s because %s cannot be loaded",
                               state.project_id, candidate, version)
            return

    def _read_version(self, store: ModelStore, version: str) -> LoadedModel:
        from mcm_core import MinorityMiner

        started = time.monotonic()
        directory = store.version_dir(version)
        meta = store.read_meta(version)
        miner = MinorityMiner.load(os.path.join(directory, "miner.pt"))
        trained = None
        if self.extractor.trainable:
            trained = self.extractor.load_trained(os.path.join(directory, "backbone.pt"))
        logger.info("project %s: loaded model %s in %.2fs", meta.get("project"), version, time.monotonic() - started)
        return LoadedModel(version=version, miner=miner, trained_backbone=trained, meta=meta)

    def install(self, project_id: int, model: LoadedModel) -> None:
        """Make a model just trained in this process current without re-reading it from disk."""
        project_id = int(project_id)
        with self._lock:
            state = self._projects.setdefault(project_id, ProjectState(project_id))
        with state.lock:
            state.model = model
            state.loaded = True
            state.pointer_mtime = self.store(project_id).pointer_mtime()

    def pool(self, project_id: int, image_key: str) -> Pool:
        """The project's remembered unlabeled tasks (re-read if the image key changed)."""
        with self._lock:
            pool = self._pools.get(int(project_id))
            if pool is None or pool.image_key != image_key:
                pool = self._pools[int(project_id)] = Pool(self.settings.project_dir(project_id), image_key)
            return pool

    def publisher(self, project_id: int, config: ImageChoicesConfig) -> Publisher:
        """Pushes and retires the project's versions; tasks Label Studio no longer has leave the pool."""
        pool = self.pool(project_id, config.image_key)
        return Publisher(self.ls_client(), project_id, self.settings.project_dir(project_id), config,
                         chunk_size=self.settings.predict_chunk, on_missing_tasks=pool.remove)

    def publisher_ledger(self, project_id: int) -> dict:
        """What is published in Label Studio for the project (published.json; see backend/publishing.py)."""
        return Ledger(self.settings.project_dir(project_id)).read()

    def cache(self, project_id: int) -> ArrayCache:
        with self._lock:
            cache = self._caches.get(int(project_id))
            if cache is None:
                directory = os.path.join(self.settings.project_dir(project_id), "cache", self.extractor.cache_kind)
                cache = self._caches[int(project_id)] = ArrayCache(directory)
            return cache

    # -- features ----------------------------------------------------------------
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
        fetcher = self.fetcher()
        cache = self.cache(project_id)

        def load(key):
            try:
                return key, fetcher.fetch(key[1], key[0]), None
            except ImageFetchError as exc:
                return key, None, str(exc)
            except Exception as exc:  # never let one task break the batch
                return key, None, f"{exc.__class__.__name__}: {exc}"

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=FETCH_THREADS) as pool:
            for start in range(0, len(keys), batch):
                results = list(pool.map(load, keys[start:start + batch]))
                good = [(k, img) for k, img, err in results if err is None]
                for k, _img, err in results:
                    if err is not None:
                        skipped[k[0]] = err
                if not good:
                    continue
                try:
                    prepared = self.extractor.prepare([img for _, img in good])
                except Exception:
                    # One undecodable image can break a batch call: retry one by one.
                    prepared_rows, good_ok = [], []
                    for k, img in good:
                        try:
                            prepared_rows.append(self.extractor.prepare([img])[0])
                            good_ok.append((k, img))
                        except Exception as exc:
                            skipped[k[0]] = f"cannot prepare image: {exc.__class__.__name__}: {exc}"
                    if not good_ok:
                        continue
                    good, prepared = good_ok, np.stack(prepared_rows)
                cache.put([k for k, _ in good], prepared)
        logger.info("project %s: fetched and prepared %d images (%d skipped) in %.2fs", project_id,
                    len(keys), sum(1 for k in keys if k[0] in skipped), time.monotonic() - started)

    def features(self, project_id: int, keys: Sequence[tuple[int, str]], model: LoadedModel | None = None,
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


_RUNTIMES: dict[Settings, Runtime] = {}
_RUNTIMES_LOCK = threading.Lock()


def get_runtime(settings: Settings) -> Runtime:
    """One Runtime per settings per process (the web app and in-process jobs share it)."""
    with _RUNTIMES_LOCK:
        runtime = _RUNTIMES.get(settings)
        if runtime is None:
            runtime = _RUNTIMES[settings] = Runtime(settings)
        return runtime


def register_runtime(runtime: Runtime) -> None:
    with _RUNTIMES_LOCK:
        _RUNTIMES[runtime.settings] = runtime
