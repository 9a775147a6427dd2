"""The per-process wiring: settings, the backbone, and one owner for each long-lived concern.

A `Context` is built once per process (web app, RQ worker) and passed to the steps
of the data's path (backend/fitting.py, backend/refresh.py, ...). It holds no logic
of its own: projects and their loaded models (backend/projects.py), image ingest
(backend/ingest/pipeline.py), each project's pool (backend/pool.py), the Label Studio client
(backend/labelstudio/client.py), a Publisher per project (backend/publishing.py) and the candidate
boxes and box features of detection projects (backend/candidates.py).
"""
from __future__ import annotations

import threading

import torch

from mcm_core import MinorityMiner

from .candidates import BoxSources
from .ingest.extractor import Extractor
from .ingest.pipeline import Ingest
from .label_config import LabelConfig
from .labelstudio import client as labelstudio
from .ledger import Ledger
from .pool import Pool
from .projects import Projects
from .publishing import Publisher
from .settings import Settings


class Context:
    """Settings plus the process's projects, ingest, pools and Label Studio client."""

    def __init__(self, settings: Settings, extractor: Extractor | None = None) -> None:
        torch.set_num_threads(settings.torch_threads)  # process-wide; see MCM_TORCH_THREADS
        check_miner_options(settings)
        self.settings = settings
        self.extractor = extractor or Extractor(settings.backbone, settings.backbone_weights,
                                                 cnn_epochs=settings.cnn_epochs, num_threads=settings.torch_threads)
        self.projects = Projects(settings.model_dir, self.extractor)
        self.boxes = BoxSources(settings, self.extractor)  # detection: loads a torchvision detector now, if one is set
        auth = (lambda: labelstudio.auth_header(self.client())) \
            if settings.label_studio_url and settings.label_studio_api_key else None
        self.ingest = Ingest(settings, self.extractor, auth)
        self._client = None
        self._pools: dict[int, Pool] = {}
        self._lock = threading.Lock()

    def client(self):
        """The Label Studio client (personal access tokens are refreshed by the sdk)."""
        with self._lock:
            if self._client is None:
                self._client = labelstudio.make_client(self.settings.label_studio_url,
                                                       self.settings.label_studio_api_key)
            return self._client

    def pool(self, project_id: int, image_key: str) -> Pool:
        """The project's remembered unlabeled tasks (re-read if the image key changed)."""
        with self._lock:
            pool = self._pools.get(int(project_id))
            if pool is None or pool.image_key != image_key:
                pool = self._pools[int(project_id)] = Pool(self.settings.project_dir(project_id), image_key)
            return pool

    def pool_tasks(self, project_id: int, image_key: str) -> list[dict]:
        """The project's unlabeled tasks as last listed; listed from Label Studio the first time."""
        pool = self.pool(project_id, image_key)
        if not pool.known:
            pool.replace(labelstudio.list_unlabeled_tasks(self.client(), project_id))
        return pool.tasks()

    def publisher(self, project_id: int, config: LabelConfig) -> Publisher:
        """Pushes and retires the project's versions; tasks Label Studio no longer has leave the pool."""
        pool = self.pool(project_id, config.image_key)
        return Publisher(self.client(), project_id, self.settings.project_dir(project_id), config,
                         chunk_size=self.settings.predict_chunk, on_missing_tasks=pool.remove,
                         auto_tab=self.settings.auto_tab)

    def ledger(self, project_id: int) -> dict:
        """What is published in Label Studio for the project (see backend/publishing.py)."""
        return Ledger(self.settings.project_dir(project_id)).read()


def check_miner_options(settings: Settings) -> None:
    """MCM_MINER_OPTIONS fails at start-up, not at the first training."""
    if not settings.miner_kwargs:
        return
    try:
        MinorityMiner(num_classes=2, seed=settings.seed, **settings.miner_kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"MCM_MINER_OPTIONS={settings.miner_options!r} is not usable: {exc}") from None


_CONTEXTS: dict[Settings, Context] = {}
_CONTEXTS_LOCK = threading.Lock()


def get_context(settings: Settings) -> Context:
    """One Context per settings per process (the web app and in-process jobs share it)."""
    with _CONTEXTS_LOCK:
        context = _CONTEXTS.get(settings)
        if context is None:
            context = _CONTEXTS[settings] = Context(settings)
        return context


def register_context(context: Context) -> None:
    with _CONTEXTS_LOCK:
        _CONTEXTS[context.settings] = context
