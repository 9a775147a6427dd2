"""What the HTTP views share, one per app: the Context, the training queue, the TASKS_CREATED
scorer, the background maintainer, which projects are connected here (backend/connections.py), and
the first training of a project connected with labels already there (backend/onboarding.py)."""
from __future__ import annotations

import logging

from flask import current_app

from .connections import Connections, Verdict
from .context import Context
from .fitting import train_project
from .label_config import LabelConfig
from .labelstudio.client import describe_error, get_project, get_tasks, traceback_is_safe
from .maintainer import Maintainer
from .new_tasks import NewTaskScorer
from .onboarding import FirstTraining
from .pacing import TrainingScheduler
from .refresh import score_and_push_tasks
from .report.heldout import HeldOut
from .report.source import Reports
from .scaleout.scheduler import RQTrainingScheduler  # with REDIS_URL: training and re-scoring run in `rq worker`s
from .settings import Settings
from .validation import HttpError

logger = logging.getLogger(__name__)

SERVICE_KEY = "MCM_SERVICE"  # the Flask app config entry that holds the app's Service


class Service:
    """Everything the views need, one per app."""

    def __init__(self, settings: Settings, context: Context, train_fn=None) -> None:
        self.settings = settings
        self.context = context
        run = train_fn or (lambda pid: train_project(pid, context))

        def on_error(pid, exc):
            context.projects.get(pid).last_error = describe_error(exc)

        def run_and_track(pid):
            state = context.projects.get(pid)
            state.training = True
            try:
                run(pid)
                state.last_error = None
            finally:
                state.training = False

        if settings.redis_url and train_fn is None:
            self.scheduler = RQTrainingScheduler(settings)
        else:
            self.scheduler = TrainingScheduler(run_and_track, settings.debounce_seconds, on_error,
                                       min_interval=settings.retrain_min_interval, max_wait=settings.retrain_max_wait)
        self.scorer = NewTaskScorer(self._score_new_tasks)
        # The mining report (/mcm/report): each version's held-out evaluation runs in its own thread.
        self.heldout = HeldOut(context, is_busy=self.scheduler.is_training)
        self.reports = Reports(context, self.heldout, self.last_error)
        self.connections = Connections(settings, context.projects, context.client)
        self.first_training = FirstTraining(self.connections.check, self.connections.forget_refusal,
                                            self._has_model, self._count_labeled, self.scheduler.request,
                                            is_busy=self.scheduler.is_training)
        self.maintainer = Maintainer(context, is_busy=self.scheduler.is_training,  # fill, retire, recover
                                     on_settled=self.heldout.request, is_connected=self.is_connected)

    def connection(self, project_id: int) -> Verdict:
        """Whether the project is connected here (MCM_PROJECTS, or Label Studio's answer, cached)."""
        return self.connections.check(project_id)

    def is_connected(self, project_id: int) -> bool:
        return self.connection(project_id).connected

    def setup(self, project_id: int, config: LabelConfig) -> str:
        """/setup: the model version to answer. A project not (yet) known to be connected is answered from
        disk and leaves nothing behind: Label Studio calls /setup before it saves the connection, and
        anyone can call it; the next action checks with Label Studio (backend/connections.py)."""
        verdict = self.connections.on_setup(project_id)
        if verdict is not None and not verdict.connected:
            raise HttpError(verdict.status, verdict.reason)
        self.check_first_training(project_id)  # never waits: a check a few seconds later
        if verdict is None:
            return self.context.projects.store(project_id).current_version() or "INITIAL"
        state = self.context.projects.get(project_id)
        state.config = config
        return state.model.version if state.model else "INITIAL"

    def check_first_training(self, project_id: int, now: bool = False) -> str | None:
        """Schedule the "connected, labeled, no model yet?" check (backend/onboarding.py); `now` for a
        project known to be connected (/predict). None without Label Studio: training reads it."""
        if not (self.settings.label_studio_url and self.settings.label_studio_api_key):
            return None
        return self.first_training.now(project_id) if now else self.first_training.on_setup(project_id)

    def _has_model(self, project_id: int) -> bool:
        """A trained version on disk (read without loading it or creating anything)."""
        return self.context.projects.store(project_id).current_version() is not None

    def _count_labeled(self, project_id: int) -> int | None:
        """Labeled tasks as Label Studio counts them; None when its answer has no count. Label Studio 1.23's
        `num_tasks_with_annotations` leaves out annotations imported with the tasks, `finished_task_number`
        counts them: a project imported with its labels and connected on the Model page must train too."""
        project = get_project(self.context.client(), project_id)
        counts = [project.get(k) for k in ("num_tasks_with_annotations", "finished_task_number")]
        counts = [c for c in counts if isinstance(c, int) and not isinstance(c, bool)]
        return max(counts) if counts else None

    def last_error(self, project_id: int) -> str | None:
        return self.context.projects.get(project_id).last_error or self.scheduler.last_error(project_id)

    def require_connected(self, project_id: int) -> None:
        """404 for a project not connected here, 503 when that cannot be told; no state is kept for it."""
        verdict = self.connection(project_id)
        if not verdict.connected:
            raise HttpError(verdict.status, verdict.reason)

    def _score_new_tasks(self, project_id: int, ids: list[int]) -> None:
        try:
            score_and_push_tasks(project_id, get_tasks(self.context.client(), project_id, ids), self.context)
        except Exception as exc:
            logger.error("project %s: scoring %d new tasks failed: %s", project_id, len(ids), describe_error(exc),
                         exc_info=traceback_is_safe(exc))
            self.context.projects.get(project_id).last_error = f"scoring new tasks: {describe_error(exc)}"

    def close(self) -> None:
        self.first_training.close()
        self.scheduler.close()
        self.maintainer.close()
        self.heldout.close()
        self.scorer.close()


def current_service() -> Service:
    return current_app.config[SERVICE_KEY]
