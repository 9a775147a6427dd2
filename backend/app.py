"""The HTTP app: a Flask app of our own serving the routes Label Studio calls (backend/routes.py).

Why our own app and not label-studio-ml's: its 1.0.9 release re-creates the model
object on every /setup, starts a process per webhook, has no GET /versions, logs
credentials at DEBUG, and pins Flask 1.1.2 / Werkzeug 2.0.2. We replaced all of its
views anyway; owning the app removes that glue (docs/architecture.md).

`create_app(settings)` builds the app and its `AppState`: the process's Context, the
training queue (in-process, or RQ when REDIS_URL is set), the TASKS_CREATED scorer,
the background maintainer, and which projects Label Studio connected here.
Before every request: basic auth (when configured, on every route but / and /health)
and a body-size limit; every view validates its input (backend/validation.py).
"""
from __future__ import annotations

import base64
import hmac
import logging
import threading
import time

from flask import Flask, current_app, jsonify, request

from .context import Context, register_context
from .maintainer import Maintainer
from .new_tasks import NewTaskScorer
from .pacing import TrainingQueue
from .settings import Settings
from .validation import HttpError

logger = logging.getLogger(__name__)

PUBLIC_PATHS = {"/", "/health", "/metrics"}


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
            from .scaleout.coordinator import RQTrainingQueue  # training and re-scoring run in `rq worker`s
            self.queue = RQTrainingQueue(settings)
        else:
            self.queue = TrainingQueue(run_and_track, settings.debounce_seconds, on_error,
                                       min_interval=settings.retrain_min_interval, max_wait=settings.retrain_max_wait)
        self.scorer = NewTaskScorer(self._score_new_tasks)
        self.maintainer = Maintainer(context, is_busy=self.queue.is_training)  # fill, retire, recover
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
        self.scorer.close()


def app_state() -> AppState:
    return current_app.config["MCM_STATE"]


def _check_basic_auth():
    settings = app_state().settings
    if not settings.basic_auth_user or request.path in PUBLIC_PATHS:
        return None
    header = request.headers.get("Authorization", "")
    if header.startswith("Basic "):
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).partition(b":")
        except ValueError:
            user, password = b"", b""
        # Bytes, not str: compare_digest refuses non-ASCII str, and that must be a 401, not a 500.
        user_ok = hmac.compare_digest(user, settings.basic_auth_user.encode("utf-8"))
        password_ok = hmac.compare_digest(password, settings.basic_auth_pass.encode("utf-8"))
        if user_ok and password_ok:
            return None
    response = jsonify({"status": "error", "error": "authentication required (HTTP basic auth)"})
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Basic realm="mcm-backend"'
    return response


def _check_body_size():
    """413 for a body over MCM_MAX_REQUEST_BYTES, before it is read (chunked bodies: read up to the limit)."""
    limit = app_state().settings.max_request_bytes
    if request.environ.get("wsgi.input_terminated"):  # chunked: Content-Length, if any, is not the body size
        body = request.stream.read(limit + 1)
        too_big = len(body) > limit
        request._cached_data = body  # what get_json reads next
    else:
        too_big = request.content_length is not None and request.content_length > limit
    if not too_big:
        return None
    response = jsonify({"status": "error", "error": f"request body larger than MCM_MAX_REQUEST_BYTES={limit}"})
    response.status_code = 413
    return response


def _log_request():
    """One redacted line per request at DEBUG: never headers or bodies (they carry credentials)."""
    logger.debug("%s %s (%s bytes)", request.method, request.path, request.content_length or 0)


def create_app(settings: Settings | None = None, context: Context | None = None, train_fn=None,
               preload: bool = True) -> Flask:
    """Build the WSGI app for `settings`. Raises at start-up on bad backbone weights or settings."""
    from .routes import routes

    settings = settings or Settings.from_env()
    context = context or Context(settings)
    register_context(context)
    app = Flask("backend")
    app.config["MCM_STATE"] = AppState(settings, context, train_fn)
    app.before_request(_check_basic_auth)
    app.before_request(_check_body_size)
    app.before_request(_log_request)
    app.register_blueprint(routes)
    if preload:
        for project_id in context.projects.known():
            try:
                state = context.projects.get(project_id)  # load once at start, not on the first /predict
            except Exception as exc:  # one broken project directory never stops the backend
                logger.exception("project %s: cannot load at start-up: %s", project_id, exc)
                continue
            logger.info("project %s: model %s ready", project_id, state.model.version if state.model else None)
    app.config["MCM_STATE"].maintainer.start()
    return app
