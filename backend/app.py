"""The HTTP app: label-studio-ml 1.0.9's Flask app with its gaps fixed.

`create_app(settings)` calls label-studio-ml's `init_app` and then replaces or
adds views (never editing site-packages):
- /setup: validates the label config per project, answers from memory (fast).
- /predict: scores with the project's already-loaded model; keyed by project id.
- /webhook: answers at once and schedules a debounced background training
  (1.0.9 would start one process per event).
- GET /versions (1.0.9 only has POST; Label Studio calls GET), /mcm/status.
- Basic auth on every route except /health, / and /webhook (see README).
"""
from __future__ import annotations

import base64
import hmac
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from flask import Flask, jsonify, request
from label_studio_ml import api as ls_api

from .label_config import LabelConfigError, parse_label_config
from .maintainer import Maintainer
from .model import SCORE_EVENTS, TRAIN_EVENTS, MinorityMinerModel
from .runtime import Runtime, register_runtime
from .settings import Settings
from .trainer import TrainingQueue

logger = logging.getLogger(__name__)

PUBLIC_PATHS = {"/", "/health", "/metrics", "/webhook"}


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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
        # Scoring of newly created tasks: one at a time, off the request thread.
        self.scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mcm-score")
        # Fill, retire, recover: see backend/maintainer.py.
        self.maintainer = Maintainer(runtime, is_busy=self.queue.is_training)

    def close(self) -> None:
        self.queue.close()
        self.maintainer.close()
        self.scorer.shutdown(wait=False)


def project_id_of(value) -> int:
    """Label Studio sends "<id>.<created_ts>" to /setup and /predict and {"id": ...} in webhooks."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool) or value is None:
        raise HttpError(400, "missing 'project' (expected a project id, '<id>.<timestamp>' or {'id': ...})")
    if isinstance(value, int):
        return value
    text = str(value).strip().split(".")[0]
    if not text.isdigit():
        raise HttpError(400, f"cannot read a project id from {value!r}")
    return int(text)


def _json_body() -> dict:
    data = request.get_json(silent=True, force=True)
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
    config = parse_label_config(data.get("schema") or data.get("label_config") or "")
    state = _state().runtime.project(project_id)
    state.config = config
    model = state.model
    return jsonify({"model_version": model.version if model else "INITIAL"})


@_handle_errors
def predict_view():
    data = _json_body()
    tasks = data.get("tasks")
    if not isinstance(tasks, list):
        raise HttpError(400, "'tasks' must be a list of Label Studio tasks")
    if any(not isinstance(t, dict) or "id" not in t for t in tasks):
        raise HttpError(400, "every task must be an object with an 'id'")
    project_id = project_id_of(data.get("project"))
    runtime = _state().runtime
    label_config = data.get("label_config")
    if label_config:
        parse_label_config(label_config)  # unsupported configs get a clear 400
    started = time.monotonic()
    model = MinorityMinerModel(label_config=label_config, runtime=runtime, project_id=project_id)
    results = model.predict(tasks) if tasks else []
    version = model.model_version
    logger.info("project %s: /predict %d tasks -> %d predictions in %.3fs", project_id, len(tasks),
                sum(1 for r in results if r), time.monotonic() - started)
    return jsonify({"results": results, "model_version": version})


@_handle_errors
def webhook_view():
    data = _json_body()
    action = data.get("action")
    if not action or not isinstance(action, str):
        raise HttpError(400, "webhook payload has no 'action'")
    if action in SCORE_EVENTS:
        return _schedule_scoring(data, action)
    if action not in TRAIN_EVENTS:
        return jsonify({"status": "ignored", "action": action,
                        "reason": f"event {action} does not trigger training"}), 200
    project_id = project_id_of(data.get("project"))
    warning = _check_annotation_labels(project_id, data)
    status = _state().queue.request(project_id, reason=action)
    body = {"status": status, "action": action, "project": project_id}
    if warning:
        body["warning"] = warning
    return jsonify(body), 201


def _schedule_scoring(data: dict, action: str):
    project_id = project_id_of(data.get("project"))
    tasks = [t for t in data.get("tasks") or [] if isinstance(t, dict) and "id" in t]
    app_state = _state()
    if app_state.runtime.project(project_id).model is None or not tasks:
        return jsonify({"status": "ignored", "action": action,
                        "reason": "no trained model yet" if tasks else "no tasks in payload"}), 200
    from .jobs import score_and_push_tasks

    def run():
        try:
            score_and_push_tasks(project_id, tasks, runtime=app_state.runtime)
        except Exception as exc:
            logger.exception("project %s: scoring %d new tasks failed: %s", project_id, len(tasks), exc)
            app_state.runtime.project(project_id).last_error = f"scoring new tasks: {exc.__class__.__name__}: {exc}"

    app_state.scorer.submit(run)
    return jsonify({"status": "scoring", "action": action, "project": project_id, "tasks": len(tasks)}), 202


def _check_annotation_labels(project_id: int, data: dict) -> str | None:
    """Warn early (the training skips it anyway) when an annotation uses a label the config lacks."""
    from .annotations import annotation_choice

    annotation = data.get("annotation")
    state = _state().runtime.project(project_id)
    config = state.config
    if config is None and isinstance(data.get("project"), dict) and data["project"].get("label_config"):
        try:
            config = parse_label_config(data["project"]["label_config"])
        except LabelConfigError:
            return None
    if not isinstance(annotation, dict) or config is None:
        return None
    label = annotation_choice(annotation, config)
    if label is not None and label not in config.classes:
        message = (f"annotation {annotation.get('id')} uses unknown label {label!r} (classes: "
                   f"{list(config.classes)}); that task will be skipped in training")
        logger.warning("project %s: %s", project_id, message)
        return message
    return None


@_handle_errors
def train_view():
    data = _json_body()
    project_id = project_id_of(data.get("project"))
    status = _state().queue.request(project_id, reason="/train")
    return jsonify({"status": status, "project": project_id}), 201


def _project_from_request() -> int:
    value = request.args.get("project")
    if value is None:
        body = request.get_json(silent=True, force=True)
        if isinstance(body, dict):
            value = body.get("project")
    return project_id_of(value)


@_handle_errors
def versions_view():
    project_id = _project_from_request()
    runtime = _state().runtime
    model = runtime.project(project_id).model
    return jsonify({"versions": runtime.store(project_id).versions(),
                    "model_version": model.version if model else "INITIAL",
                    "model_dir": runtime.settings.model_dir})


@_handle_errors
def status_view():
    project_id = _project_from_request()
    app_state = _state()
    state = app_state.runtime.project(project_id)
    meta = state.model.meta if state.model else {}
    n_scored = state.n_scored
    if not n_scored and state.model:  # after a restart: what the last re-scoring of this version recorded
        scoring = app_state.runtime.store(project_id).read_scoring()
        n_scored = scoring.get("n_scored", 0) if scoring.get("version") == state.model.version else 0
    return jsonify({
        "project": project_id,
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
    model = app_state.runtime.project(project_id).model
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
            user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
        except Exception:
            user, password = "", ""
        if hmac.compare_digest(user, settings.basic_auth_user) and \
                hmac.compare_digest(password, settings.basic_auth_pass):
            return None
    response = jsonify({"status": "error", "error": "authentication required (HTTP basic auth)"})
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Basic realm="mcm-backend"'
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
    before.insert(0, _check_basic_auth)
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
            state = runtime.project(project_id)  # load once at start, not on the first /predict
            logger.info("project %s: model %s ready", project_id, state.model.version if state.model else None)
    app.config["MCM_STATE"].maintainer.start()
    return app
