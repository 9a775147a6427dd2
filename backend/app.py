"""The HTTP app: label-studio-ml 1.0.9's Flask app with its gaps fixed.

`create_app(settings)` calls label-studio-ml's `init_app` and then replaces or
adds views (never editing site-packages):
- /setup: validates the label config per project, answers from memory (fast),
  and records that Label Studio connected the project (MODEL_DIR/<p>/connected.json).
- /predict: scores with the project's already-loaded model; keyed by project id.
- /webhook: answers at once and schedules a debounced background training
  (1.0.9 would start one process per event); acts only on connected projects;
  TASKS_CREATED reads the named tasks back from Label Studio.
- GET /versions (1.0.9 only has POST; Label Studio calls GET), /mcm/status.
- Basic auth (when configured) on every route except /health and /; a body-size
  limit on every route; input shapes checked in `validation` (400 naming the field).
"""
from __future__ import annotations

import base64
import hmac
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from flask import Flask, jsonify, request
from label_studio_ml import api as ls_api

from . import validation
from .label_config import LabelConfigError, parse_label_config
from .maintainer import Maintainer
from .model import SCORE_EVENTS, TRAIN_EVENTS, MinorityMinerModel
from .runtime import Runtime, register_runtime
from .settings import Settings
from .trainer import TrainingQueue
from .validation import HttpError

logger = logging.getLogger(__name__)

PUBLIC_PATHS = {"/", "/health", "/metrics"}
MAX_PENDING_NEW_TASKS = 1_000_000  # per project, between two scoring jobs


class NewTaskScorer:
    """Scores the tasks of TASKS_CREATED events off the request thread, one job per project at a time.

    Ids that arrive while a project's job waits are merged into it, so a burst of
    events costs one job per project, and the pending state is bounded by the
    connected projects.
    """

    def __init__(self, run: Callable[[int, list[int]], None]) -> None:
        self._run = run
        self._pending: dict[int, set[int]] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mcm-score")

    def submit(self, project_id: int, ids: list[int]) -> None:
        with self._lock:
            pending = self._pending.get(project_id)
            new_job = pending is None
            if new_job:
                pending = self._pending[project_id] = set()
            pending.update(ids[:max(0, MAX_PENDING_NEW_TASKS - len(pending))])
        if new_job:
            self._executor.submit(self._drain, project_id)

    def _drain(self, project_id: int) -> None:
        with self._lock:
            ids = sorted(self._pending.pop(project_id, ()))
        if ids:
            self._run(project_id, ids)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until the jobs submitted so far ran (tests, shutdown)."""
        self._executor.submit(lambda: None).result(timeout=timeout)

    def close(self) -> None:
        self._executor.shutdown(wait=False)


class AppState:
    """Everything the views need; swapped as a whole by create_app."""

    def __init__(self, settings: Settings, runtime: Runtime, train_fn=None) -> None:
        from .jobs import train_project

        self.settings = settings
        self.runtime = runtime
        run = train_fn or (lambda pid: train_project(pid, runtime=runtime))

        def on_error(pid, exc):
            runtime.project(pid).last_error = f"{exc.__class__.__name__}: {exc}"

        def run_and_track(pid):
            state = runtime.project(pid)
            state.training = True
            try:
                run(pid)
                state.last_error = None
            finally:
                state.training = False

        if settings.redis_url and train_fn is None:
            # Scale-out: training and re-scoring run as RQ jobs in `rq worker` processes.
            from .distributed import RQTrainingQueue
            self.queue = RQTrainingQueue(settings)
        else:
            self.queue = TrainingQueue(run_and_track, settings.debounce_seconds, on_error,
                                       min_interval=settings.retrain_min_interval,
                                       max_wait=settings.retrain_max_wait)
        self.scorer = NewTaskScorer(self._score_new_tasks)
        # Fill, retire, recover: see backend/maintainer.py.
        self.maintainer = Maintainer(runtime, is_busy=self.queue.is_training)
        self._connected: set[int] = set()
        self._connected_lock = threading.Lock()

    def is_connected(self, project_id: int) -> bool:
        """Label Studio connected the project to this backend (/setup seen), or a model exists for it."""
        if project_id in self._connected:
            return True
        if self.runtime.store(project_id).is_connected():
            with self._connected_lock:
                self._connected.add(project_id)
            return True
        return False

    def connect(self, project_id: int, label_studio_project: str) -> None:
        """Record the connection durably; a read-only MODEL_DIR keeps it for this process only."""
        with self._connected_lock:
            self._connected.add(project_id)
        try:
            self.runtime.store(project_id).mark_connected({
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
        from .jobs import score_and_push_tasks
        from .ls_tasks import get_tasks

        try:
            tasks = get_tasks(self.runtime.ls_client(), project_id, ids)
            score_and_push_tasks(project_id, tasks, runtime=self.runtime)
        except Exception as exc:
            logger.exception("project %s: scoring %d new tasks failed: %s", project_id, len(ids), exc)
            self.runtime.project(project_id).last_error = f"scoring new tasks: {exc.__class__.__name__}: {exc}"

    def close(self) -> None:
        self.queue.close()
        self.maintainer.close()
        self.scorer.close()


def project_id_of(value) -> int:
    """Label Studio sends "<id>.<created_ts>" to /setup and /predict and {"id": ...} in webhooks."""
    return validation.project_id(value)


def _json_body() -> dict:
    try:
        data = request.get_json(silent=True, force=True)
    except RecursionError:
        data = None
    if data is None:
        raise HttpError(400, "request body is not valid JSON")
    if not isinstance(data, dict):
        raise HttpError(400, f"request body must be a JSON object, got {type(data).__name__}")
    return data


def _state() -> AppState:
    return ls_api._server.config["MCM_STATE"]


def _handle_errors(view):
    def wrapped(*args, **kwargs):
        try:
            return view(*args, **kwargs)
        except HttpError as exc:
            return jsonify({"status": "error", "error": exc.message}), exc.status
        except LabelConfigError as exc:
            return jsonify({"status": "error", "error": str(exc)}), 400
        except Exception as exc:  # unexpected: answer clearly, keep serving
            logger.exception("%s %s failed", request.method, request.path)
            return jsonify({"status": "error", "error": f"{exc.__class__.__name__}: {exc}"}), 500
    wrapped.__name__ = view.__name__
    return wrapped


# --- views -------------------------------------------------------------------------------------

@_handle_errors
def setup_view():
    data = _json_body()
    project_id = project_id_of(data.get("project"))
    schema = validation.optional_text(data, "schema") or validation.optional_text(data, "label_config")
    config = parse_label_config(schema or "")
    app_state = _state()
    app_state.connect(project_id, str(data.get("project")))
    state = app_state.runtime.project(project_id)
    state.config = config
    model = state.model
    return jsonify({"model_version": model.version if model else "INITIAL"})


@_handle_errors
def predict_view():
    data = _json_body()
    tasks = validation.tasks(data.get("tasks"))
    project_id = project_id_of(data.get("project"))
    label_config = validation.optional_text(data, "label_config")
    if label_config:
        parse_label_config(label_config)  # unsupported configs get a clear 400
    app_state = _state()
    if not app_state.is_connected(project_id):  # nothing to serve, and no state kept for it
        return jsonify({"results": [[] for _ in tasks], "model_version": "INITIAL"})
    started = time.monotonic()
    model = MinorityMinerModel(label_config=label_config, runtime=app_state.runtime, project_id=project_id)
    results = model.predict(tasks) if tasks else []
    version = model.model_version
    logger.info("project %s: /predict %d tasks -> %d predictions in %.3fs", project_id, len(tasks),
                sum(1 for r in results if r), time.monotonic() - started)
    return jsonify({"results": results, "model_version": version})


@_handle_errors
def webhook_view():
    data = _json_body()
    action = validation.webhook(data)
    if action not in SCORE_EVENTS and action not in TRAIN_EVENTS:
        return jsonify({"status": "ignored", "action": action,
                        "reason": f"event {action} does not trigger training"}), 200
    project_id = project_id_of(data.get("project"))
    app_state = _state()
    if action in SCORE_EVENTS:
        ids = validation.task_ids(data.get("tasks") if data.get("tasks") is not None else [])
        app_state.require_connected(project_id)
        return _schedule_scoring(app_state, project_id, ids, action)
    app_state.require_connected(project_id)
    status = app_state.queue.request(project_id, reason=action)
    return jsonify({"status": status, "action": action, "project": project_id}), 201


def _schedule_scoring(app_state: AppState, project_id: int, ids: list[int], action: str):
    """Queue the named tasks; their data is read from Label Studio, never taken from the payload."""
    if not ids or app_state.runtime.project(project_id).model is None:
        return jsonify({"status": "ignored", "action": action,
                        "reason": "no trained model yet" if ids else "no tasks in payload"}), 200
    app_state.scorer.submit(project_id, ids)
    return jsonify({"status": "scoring", "action": action, "project": project_id, "tasks": len(ids)}), 202


@_handle_errors
def train_view():
    data = _json_body()
    project_id = project_id_of(data.get("project"))
    app_state = _state()
    app_state.require_connected(project_id)
    status = app_state.queue.request(project_id, reason="/train")
    return jsonify({"status": status, "project": project_id}), 201


def _project_from_request() -> int:
    value = request.args.get("project")
    if value is None:
        try:
            body = request.get_json(silent=True, force=True)
        except RecursionError:
            body = None
        if isinstance(body, dict):
            value = body.get("project")
    return project_id_of(value)


@_handle_errors
def versions_view():
    project_id = _project_from_request()
    app_state = _state()
    model = app_state.runtime.project(project_id).model if app_state.is_connected(project_id) else None
    return jsonify({"versions": app_state.runtime.store(project_id).versions(),
                    "model_version": model.version if model else "INITIAL",
                    "model_dir": app_state.runtime.settings.model_dir})


@_handle_errors
def status_view():
    project_id = _project_from_request()
    app_state = _state()
    if not app_state.is_connected(project_id):  # answer without keeping any state for it
        return jsonify({"project": project_id, "connected": False, "model_version": None, "trained_at": None,
                        "n_labeled": 0, "labeled_per_class": {}, "tail_classes": [], "n_scored": 0,
                        "training": False,
                        "last_error": app_state.queue.last_error(project_id)})
    state = app_state.runtime.project(project_id)
    meta = state.model.meta if state.model else {}
    n_scored = state.n_scored
    if not n_scored and state.model:  # after a restart: what the last re-scoring of this version recorded
        scoring = app_state.runtime.store(project_id).read_scoring()
        n_scored = scoring.get("n_scored", 0) if scoring.get("version") == state.model.version else 0
    return jsonify({
        "project": project_id,
        "connected": True,
        "model_version": state.model.version if state.model else None,
        "trained_at": meta.get("trained_at"),
        "n_labeled": meta.get("n_labeled", 0),
        "labeled_per_class": meta.get("labeled_per_class", {}),
        "tail_classes": meta.get("tail_classes", []),
        "n_scored": n_scored,
        "published_version": app_state.runtime.publisher_ledger(project_id).get("current"),
        "label_studio_orders_by_other_version": app_state.maintainer.foreign_version.get(project_id),
        "next_training_in_s": _next_training_in(app_state.queue, project_id),
        "training": app_state.queue.is_training(project_id),
        "last_error": state.last_error or app_state.queue.last_error(project_id),
        # RQ scale-out: training_state (queued/running/idle), rq_queue, scoring_version, n_scored
        **(app_state.queue.status_fields(project_id) if hasattr(app_state.queue, "status_fields") else {}),
    })


def _next_training_in(queue, project_id: int) -> float | None:
    wait = queue.next_start(project_id) if hasattr(queue, "next_start") else None
    return None if wait is None else round(wait, 1)


@_handle_errors
def is_training_view():
    project_id = _project_from_request()
    app_state = _state()
    model = app_state.runtime.project(project_id).model if app_state.is_connected(project_id) else None
    return jsonify({"is_training": app_state.queue.is_training(project_id), "backend": "thread",
                    "model_version": model.version if model else "INITIAL"})


def health_view():
    app_state = _state()
    return jsonify({"status": "UP", "model_class": MinorityMinerModel.__name__,
                    "backbone": app_state.settings.backbone, "model_dir": app_state.settings.model_dir})


def _check_basic_auth():
    settings = _state().settings
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
    limit = _state().settings.max_request_bytes
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
    logger.debug("%s %s (%s bytes)", request.method, request.path, request.content_length or 0)


_INSTALL_LOCK = threading.Lock()


def _install_routes(app: Flask) -> None:
    """Replace 1.0.9's views and add ours; done once per process (the app object is global)."""
    if app.config.get("MCM_ROUTES_INSTALLED"):
        return
    app.view_functions["_setup"] = setup_view
    app.view_functions["_predict"] = predict_view
    app.view_functions["webhook"] = webhook_view
    app.view_functions["_train"] = train_view
    app.view_functions["get_version"] = versions_view
    app.view_functions["_is_training"] = is_training_view
    app.view_functions["health"] = health_view
    app.add_url_rule("/versions", "mcm_versions_get", versions_view, methods=["GET"])
    app.add_url_rule("/mcm/status", "mcm_status", status_view, methods=["GET"])
    # 1.0.9 logs every request's headers (credentials included) and body at DEBUG: replace with a redacted line.
    before = app.before_request_funcs.setdefault(None, [])
    before[:] = [f for f in before if f is not ls_api.log_request_info]
    before[:0] = [_check_basic_auth, _check_body_size]
    before.append(_log_request)
    app.config["MCM_ROUTES_INSTALLED"] = True


def create_app(settings: Settings | None = None, runtime: Runtime | None = None, train_fn=None,
               preload: bool = True) -> Flask:
    """Build (or re-point) the WSGI app for `settings`. Raises at start-up on bad backbone weights."""
    settings = settings or Settings.from_env()
    runtime = runtime or Runtime(settings)
    register_runtime(runtime)
    with _INSTALL_LOCK:
        app = ls_api.init_app(MinorityMinerModel, model_dir=settings.model_dir)
        _install_routes(app)
        previous = app.config.get("MCM_STATE")
        if previous is not None:
            previous.close()
        app.config["MCM_STATE"] = AppState(settings, runtime, train_fn)
    if preload:
        for project_id in runtime.known_projects():
            try:
                state = runtime.project(project_id)  # load once at start, not on the first /predict
            except Exception as exc:  # one broken project directory never stops the backend
                logger.exception("project %s: cannot load at start-up: %s", project_id, exc)
                continue
            logger.info("project %s: model %s ready", project_id, state.model.version if state.model else None)
    app.config["MCM_STATE"].maintainer.start()
    return app
