"""What the HTTP views share, one per app: the Context, the training queue, the TASKS_CREATED
scorer, the background maintainer, and which projects Label Studio connected here."""
from __future__ import annotations

import logging
import threading
import time

from flask import current_app

from .context import Context
from .heldout import HeldOut
from .maintainer import Maintainer
from .new_tasks import NewTaskScorer
from .pacing import TrainingQueue
from .report_source import Reports
from .settings import Settings
from .validation import HttpError

logger = logging.getLogger(__name__)


class AppState:
    """Everything the views need, one per app."""

    def __init__(self, settings: Settings, context: Context, train_fn=None) -> None:
        from .fitting import train_project

        self.settings = settings
        self.context = context
        run = train_fn or (lambda pid: train_project(pid, context))

        def on_error(pid, exc):
            context.projects.get(pid).last_error = f"{exc.__class__.__name__}: {exc}"

        def run_and_track(pid):
            state = context.projects.get(pid)
            state.training = True
            try:
                run(pid)
                state.last_error = None
            finally:
                state.training = False

        if settings.redis_url and train_fn is None:
            from .scaleout.queue import RQTrainingQueue  # training and re-scoring run in `rq worker`s
            self.queue = RQTrainingQueue(settings)
        else:
            self.queue = TrainingQueue(run_and_track, settings.debounce_seconds, on_error,
                                       min_interval=settings.retrain_min_interval, max_wait=settings.retrain_max_wait)
        self.scorer = NewTaskScorer(self._score_new_tasks)
        # The mining report (/mcm/report): each version's held-out evaluation runs in its own thread.
        self.heldout = HeldOut(context, is_busy=self.queue.is_training)
        self.reports = Reports(context, self.heldout, self.last_error)
        self.maintainer = Maintainer(context, is_busy=self.queue.is_training,  # fill, retire, recover
                                     on_settled=self.heldout.request)
        self._connected: set[int] = set()
        self._connected_lock = threading.Lock()

    def is_connected(self, project_id: int) -> bool:
        """Label Studio connected the project to this backend (/setup seen), or a model exists for it."""
        if project_id in self._connected:
            return True
        if self.context.projects.store(project_id).is_connected():
            with self._connected_lock:
                self._connected.add(project_id)
            return True
        return False

    def connect(self, project_id: int, label_studio_project: str) -> None:
        """Record the connection durably; a read-only MODEL_DIR keeps it for this process only."""
        with self._connected_lock:
            self._connected.add(project_id)
        try:
            self.context.projects.store(project_id).mark_connected({
                "project": project_id, "label_studio_project": label_studio_project[:100],
                "connected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        except OSError as exc:
            logger.warning("project %s: cannot record the connection in MODEL_DIR (%s); kept in memory",
                           project_id, exc)

    def last_error(self, project_id: int) -> str | None:
        return self.context.projects.get(project_id).last_error or self.queue.last_error(project_id)

    def require_connected(self, project_id: int) -> None:
        if not self.is_connected(project_id):
            raise HttpError(404, f"project {project_id} is not connected to this backend: Label Studio calls "
                                 "/setup when the model is connected to a project (Settings > Model); "
                                 "nothing was done")

    def _score_new_tasks(self, project_id: int, ids: list[int]) -> None:
        from .labelstudio import get_tasks
        from .refresh import score_and_push_tasks

        try:
            score_and_push_tasks(project_id, get_tasks(self.context.client(), project_id, ids), self.context)
        except Exception as exc:
            logger.exception("project %s: scoring %d new tasks failed: %s", project_id, len(ids), exc)
            self.context.projects.get(project_id).last_error = \
                f"scoring new tasks: {exc.__class__.__name__}: {exc}"

    def close(self) -> None:
        self.queue.close()
        self.maintainer.close()
        self.heldout.close()
        self.scorer.close()


def app_state() -> AppState:
    return current_app.config["MCM_STATE"]
