"""Which model each project serves: loaded once, reloaded only when its current.json changes.

/predict reads the already-loaded model of its project from here; a training in
another process (an RQ worker) is picked up when the pointer file changes. If the
current version cannot be loaded, the newest older version that loads is served
and `last_error` says why.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading

from .ingest.extractor import Extractor
from .label_config import LabelConfig
from .validation import Skipped
from .versions import LoadedModel, ModelStore, load_version

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ProjectState:
    project_id: int
    lock: threading.RLock = dataclasses.field(default_factory=threading.RLock)
    model: LoadedModel | None = None
    pointer_mtime: float | None = None
    config: LabelConfig | None = None
    training: bool = False
    last_error: str | None = None
    n_scored: int = 0
    loaded: bool = False
    skipped: Skipped | None = None  # items read from Label Studio and skipped (/mcm/status)

    def __post_init__(self) -> None:
        if self.skipped is None:
            self.skipped = Skipped(self.project_id)


class Projects:
    """Per-process registry of ProjectState, keyed by Label Studio project id."""

    def __init__(self, model_dir: str, extractor: Extractor) -> None:
        self.model_dir = model_dir
        self.extractor = extractor
        self._projects: dict[int, ProjectState] = {}
        self._lock = threading.Lock()

    def store(self, project_id: int) -> ModelStore:
        return ModelStore(os.path.join(self.model_dir, str(int(project_id))))

    def get(self, project_id: int) -> ProjectState:
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

    def in_memory(self) -> list[int]:
        """The projects this process keeps state for (a project never acted on has none: security.md)."""
        with self._lock:
            return sorted(self._projects)

    def known(self) -> list[int]:
        """The projects with a trained version on disk."""
        if not os.path.isdir(self.model_dir):
            return []
        return sorted(int(d) for d in os.listdir(self.model_dir)
                      if d.isdigit() and os.path.exists(os.path.join(self.model_dir, d, "current.json")))

    def _load(self, state: ProjectState, store: ModelStore, mtime: float | None) -> None:
        """Load the current version; if it is unreadable, serve the newest older version that loads."""
        state.loaded = True
        state.pointer_mtime = mtime
        version, problem = store.read_pointer()
        if problem:
            state.last_error = f"{problem}; serving the newest version that loads"
            logger.error("project %s: %s", state.project_id, state.last_error)
        elif version is None or (state.model is not None and state.model.version == version):
            return
        older = [v for v in reversed(store.versions()) if v != version]
        for candidate in ([version] if version else []) + older:
            if state.model is not None and state.model.version == candidate:
                return  # already serving the best loadable version
            try:
                state.model = load_version(store, candidate, self.extractor)
            except Exception as exc:
                state.last_error = f"cannot load model {candidate}: {exc.__class__.__name__}: {exc}"
                logger.error("project %s: %s", state.project_id, state.last_error)
                continue
            if candidate != version:
                logger.warning("project %s: serving model %s because %s cannot be loaded",
                               state.project_id, candidate, version or store.pointer_path)
            return

    def install(self, project_id: int, model: LoadedModel) -> None:
        """Make a model just trained in this process current without re-reading it from disk."""
        project_id = int(project_id)
        with self._lock:
            state = self._projects.setdefault(project_id, ProjectState(project_id))
        with state.lock:
            state.model = model
            state.loaded = True
            state.pointer_mtime = self.store(project_id).pointer_mtime()
