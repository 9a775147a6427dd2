"""The routes Label Studio calls (and two of ours), each validating its input first.

- POST /setup: validates the label config, answers the current version from memory
  (Label Studio waits 3 s); never asks Label Studio whether the project is connected
  (backend/connections.py: the other routes act only on connected projects); schedules the
  background check that starts a labeled project's first training (backend/onboarding.py).
- POST /predict: one entry per task from the already-loaded model ([] for a task
  that cannot be scored); never reads weights per request. A connected project without a
  model gets [] per task, a "message", and its first training requested (backend/onboarding.py).
- POST /webhook: START_TRAINING schedules a paced training (backend/pacing.py);
  TASKS_CREATED scores the named tasks, read back from Label Studio; other events
  are acknowledged and ignored. Answers at once (Label Studio waits 1 s).
- POST /train, GET /is_training, GET|POST /versions, GET /health and /,
  GET /mcm/status (what the backend knows about a project).
- GET /mcm/report (HTML page; ?format=json), GET /mcm/report/<figure>.png: the mining
  report of a connected project (backend/report/source.py, docs/report.md).
"""
from __future__ import annotations

import logging
import time

import httpx
from flask import Blueprint, Response, jsonify, request
from label_studio_sdk.core.api_error import ApiError
from werkzeug.exceptions import HTTPException

from . import validation
from .label_config import LabelConfigError, parse_label_config
from .labelstudio.client import LabelStudioError, describe_error, traceback_is_safe
from .prefill import prefill_summary
from .publishing import has_nothing_to_score
from .ranking import published_scores
from .report.document import FIGURES, Report
from .report.figures import png
from .report.page import render_html
from .scoring import predict_tasks, tab_order
from .service import Service, current_service
from .task_kinds import kind_of
from .validation import HttpError, Skipped

logger = logging.getLogger(__name__)

# Events that (re)train a project: only START_TRAINING, which Label Studio sends for the "Start
# Training" button and, when the Model page's "Start model training on annotation submission" is
# on, after every N annotations (project.min_annotations_to_start_training). The annotation
# webhooks themselves are ignored, so what that page shows is what happens.
TRAIN_EVENTS = ("START_TRAINING",)
# Tasks created after a training are scored with the current model at once.
SCORE_EVENTS = ("TASKS_CREATED",)

routes = Blueprint("mcm", __name__)


@routes.errorhandler(HttpError)
def _http_error(exc: HttpError):
    return jsonify({"status": "error", "error": exc.message}), exc.status


@routes.errorhandler(LabelConfigError)
def _config_error(exc: LabelConfigError):
    return jsonify({"status": "error", "error": str(exc)}), 400


@routes.errorhandler(HTTPException)
def _werkzeug_error(exc: HTTPException):
    return jsonify({"status": "error", "error": exc.description}), exc.code


@routes.errorhandler(Exception)
def _unexpected(exc: Exception):  # answer clearly, keep serving; never Label Studio's headers (describe_error)
    logger.error("%s %s failed: %s", request.method, request.path, describe_error(exc),
                 exc_info=traceback_is_safe(exc))
    return jsonify({"status": "error", "error": describe_error(exc)[:500]}), 500


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


def _project_from_request() -> int:
    value = request.args.get("project")
    if value is None:
        try:
            body = request.get_json(silent=True, force=True)
        except RecursionError:
            body = None
        if isinstance(body, dict):
            value = body.get("project")
    return validation.project_id(value)


@routes.post("/setup")
def setup():
    data = _json_body()
    project_id = validation.project_id(data.get("project"))
    schema = validation.optional_text(data, "schema") or validation.optional_text(data, "label_config")
    config = parse_label_config(schema or "")
    service = current_service()
    kind_of(config).check_configured(service.context)  # a clear 400 where the user connects
    return jsonify({"model_version": service.setup(project_id, config)})


@routes.post("/predict")
def predict():
    data = _json_body()
    tasks = validation.tasks(data.get("tasks"))
    project_id = validation.project_id(data.get("project"))
    label_config = validation.optional_text(data, "label_config")
    if label_config:
        parse_label_config(label_config)  # unsupported configs get a clear 400
    service = current_service()
    connection = service.connection(project_id)
    if connection.status == 503:  # cannot tell whether Label Studio connected it: say why
        raise HttpError(503, connection.reason)
    model = service.context.projects.get(project_id).model if connection.connected else None
    if model is None and connection.connected and tasks:
        return jsonify(_no_model_yet(service, project_id, len(tasks)))
    if model is None or not tasks:  # nothing to serve (and no state kept for an unknown project)
        return jsonify({"results": [[] for _ in tasks], "model_version": model.version if model else "INITIAL"})
    started = time.monotonic()
    context = service.context
    published = published_scores(context.projects.store(project_id).ranking_path(model.version))
    predictions, _skipped = predict_tasks(project_id, tasks, context, model, published)
    by_task = {p.pop("task"): p for p in predictions}
    # Label Studio accepts a list of predictions per task and stores none for an empty list: a task
    # that cannot be scored gets [], and the list keeps the length Label Studio matches tasks by.
    results = [by_task.get(task.get("id"), []) for task in tasks]
    logger.info("project %s: /predict %d tasks -> %d predictions in %.3fs", project_id, len(tasks), len(by_task),
                time.monotonic() - started)
    return jsonify({"results": results, "model_version": model.version})


NO_MODEL_MESSAGE = ("No model yet for project {project}: {what}. When it is trained the backend pushes its "
                    "predictions to Label Studio itself and creates the 'Tail classes first' tab; reload the Data "
                    "Manager in a minute. (Label Studio shows no message for 'Retrieve Predictions'.)")


def _no_model_yet(service: Service, project_id: int, n_tasks: int) -> dict:
    """/predict of a connected project without a model: train first (checked in the background: it
    needs labels) and say so. Label Studio 1.23 shows nothing for an answer to 'Retrieve Predictions',
    error or not (docs/backend.md), so the answer is a normal one with no prediction, and the log says why."""
    if service.scheduler.is_training(project_id):
        what = "its first training is running"
    else:
        service.check_first_training(project_id, now=True)
        what = "a first training was requested (it needs labels of at least 2 classes)"
    message = NO_MODEL_MESSAGE.format(project=project_id, what=what)
    logger.info("project %s: /predict of %d task(s) without a model: %s", project_id, n_tasks, what)
    return {"results": [[] for _ in range(n_tasks)], "model_version": "INITIAL", "status": "no_model",
            "message": message}


@routes.post("/webhook")
def webhook():
    data = _json_body()
    action = validation.webhook(data)
    if action not in SCORE_EVENTS and action not in TRAIN_EVENTS:
        return jsonify({"status": "ignored", "action": action,
                        "reason": f"event {action} does not trigger training"}), 200
    project_id = validation.project_id(data.get("project"))
    service = current_service()
    service.require_connected(project_id)
    if action in SCORE_EVENTS:
        ids = validation.task_ids(data.get("tasks") if data.get("tasks") is not None else [])
        return _schedule_scoring(service, project_id, ids, action)
    status = service.scheduler.request(project_id, reason=action)
    return jsonify({"status": status, "action": action, "project": project_id}), 201


def _schedule_scoring(service: Service, project_id: int, ids: list[int], action: str):
    """Queue the named tasks; their data is read from Label Studio, never taken from the payload."""
    if not ids or service.context.projects.get(project_id).model is None:
        return jsonify({"status": "ignored", "action": action,
                        "reason": "no trained model yet" if ids else "no tasks in payload"}), 200
    service.scorer.submit(project_id, ids)
    return jsonify({"status": "scoring", "action": action, "project": project_id, "tasks": len(ids)}), 202


@routes.post("/train")
def train():
    project_id = validation.project_id(_json_body().get("project"))
    service = current_service()
    service.require_connected(project_id)
    return jsonify({"status": service.scheduler.request(project_id, reason="/train"), "project": project_id}), 201


def _current_version(service: Service, project_id: int) -> str:
    model = service.context.projects.get(project_id).model if service.is_connected(project_id) else None
    return model.version if model else "INITIAL"


@routes.route("/versions", methods=["GET", "POST"])
def versions():
    project_id = _project_from_request()
    service = current_service()
    known = service.context.projects.store(project_id).versions() if service.is_connected(project_id) else []
    return jsonify({"versions": known, "model_version": _current_version(service, project_id),
                    "model_dir": service.settings.model_dir})


@routes.get("/is_training")
def is_training():
    project_id = _project_from_request()
    service = current_service()
    return jsonify({"is_training": service.scheduler.is_training(project_id), "backend": "thread",
                    "model_version": _current_version(service, project_id)})


@routes.get("/")
@routes.get("/health")
def health():
    settings = current_service().settings
    return jsonify({"status": "UP", "model_class": "MinorityMiner", "backbone": settings.backbone,
                    "model_dir": settings.model_dir})


NOTHING_TO_SCORE_MESSAGE = ("Nothing to score: every task of the project is labeled (or it has none yet). Model {} "
                            "is kept and nothing is published (Label Studio's model_version stays as it is); new "
                            "tasks are scored and published when they arrive.")


@routes.get("/mcm/status")
def status():
    project_id = _project_from_request()
    service = current_service()
    queue = service.scheduler
    connection = service.connection(project_id)
    if not connection.connected:  # answer why, without keeping any state for it
        return jsonify({"project": project_id, "connected": False, "reason": connection.reason,
                        "model_version": None, "trained_at": None,
                        "n_labeled": 0, "labeled_per_class": {}, "tail_classes": [], "n_scored": 0,
                        "nothing_to_score": False, "nothing_to_score_message": None,
                        "prefill": None, "reliability": None, "tab_order": None, "skipped_items": Skipped().as_dict(),
                        "training": False, "last_error": queue.last_error(project_id)})
    context = service.context
    state = context.projects.get(project_id)
    meta = state.model.meta if state.model else {}
    n_scored = state.n_scored
    if not n_scored and state.model:  # after a restart: what the last re-scoring of this version recorded
        scoring = context.projects.store(project_id).read_scoring()
        n_scored = scoring.get("n_scored", 0) if scoring.get("version") == state.model.version else 0
    wait = queue.next_start(project_id) if hasattr(queue, "next_start") else None
    ledger = context.ledger(project_id)
    idle = has_nothing_to_score(ledger, state.model.version if state.model else None)
    return jsonify({
        "project": project_id, "connected": True,
        "model_version": state.model.version if state.model else None,
        "trained_at": meta.get("trained_at"), "n_labeled": meta.get("n_labeled", 0),
        "labeled_per_class": meta.get("labeled_per_class", {}), "tail_classes": meta.get("tail_classes", []),
        # which tail classes the admin declared (label config mcm_tail="true") and which rule chose them
        "tail_declared": meta.get("tail_declared", []), "tail_rule": meta.get("tail_rule"),
        "n_scored": n_scored,
        "published_version": ledger.get("current"),
        "nothing_to_score": idle,
        "nothing_to_score_message": NOTHING_TO_SCORE_MESSAGE.format(state.model.version) if idle else None,
        # which classes a prediction pre-ticks and why not the others; do the features separate the classes
        "prefill": prefill_summary(state.model, service.settings.prefill), "reliability": meta.get("reliability"),
        # what the tab's scores follow: the queue, the miner's score, or a weak model's fallback
        "tab_order": tab_order(state.model, service.settings.weak_order) if state.model else None,
        "skipped_items": state.skipped.as_dict(),  # items read from Label Studio and skipped (validation.Skipped)
        "label_studio_orders_by_other_version": service.maintainer.foreign_version.get(project_id),
        "next_training_in_s": None if wait is None else round(wait, 1),
        "training": queue.is_training(project_id),
        "last_error": state.last_error or queue.last_error(project_id),
        # RQ scale-out: training_state (queued/running/idle), rq_queue, scoring_version, n_scored
        **(queue.status_fields(project_id) if hasattr(queue, "status_fields") else {}),
    })


# The page inlines its figures and has no script: nothing else may load or run in it.
REPORT_HEADERS = {"Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                                             "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
                  "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


def _report(project_id: int) -> Report:
    """The project's built report; 404 for a project not connected here (no state kept for it)."""
    service = current_service()
    service.require_connected(project_id)
    settings = service.settings
    if not settings.label_studio_url or not settings.label_studio_api_key:
        raise HttpError(503, "the report reads the annotations from Label Studio: set LABEL_STUDIO_URL and "
                             "LABEL_STUDIO_API_KEY on the backend")
    try:
        return service.reports.get(project_id)
    except (LabelStudioError, ApiError, httpx.HTTPError) as exc:
        # The status and body only: an ApiError's str() carries Label Studio's response headers.
        raise HttpError(502, f"cannot read project {project_id} from Label Studio: {describe_error(exc)}") from None


@routes.get("/mcm/report")
def mining_report():
    project_id = _project_from_request()
    form = validation.choice(request.args.get("format"), ("html", "json"), "format", default="html")
    built = _report(project_id)
    if form == "json":
        response = jsonify(built.summary)
        response.headers.update(REPORT_HEADERS)
        return response
    return Response(render_html(built), mimetype="text/html", headers=REPORT_HEADERS)


@routes.get("/mcm/report/<name>.png")
def mining_report_figure(name: str):
    project_id = _project_from_request()
    if name not in FIGURES:
        raise HttpError(404, f"unknown figure {name[:40]!r}; the report's figures are {', '.join(FIGURES)}")
    return Response(png(_report(project_id), name), mimetype="image/png", headers=REPORT_HEADERS)
