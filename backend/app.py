"""The HTTP app: a Flask app of our own serving the routes Label Studio calls (backend/routes.py).

Why our own app and not label-studio-ml's: its 1.0.9 release re-creates the model
object on every /setup, starts a process per webhook, has no GET /versions, logs
credentials at DEBUG, and pins Flask 1.1.2 / Werkzeug 2.0.2. We replaced all of its
views anyway; owning the app removes that glue (docs/architecture.md).

`create_app(settings)` builds the app and its AppState (backend/app_state.py).
Before every request: basic auth (when configured, on every route but / and /health)
and a body-size limit; every view validates its input (backend/validation.py).
"""
from __future__ import annotations

import base64
import hmac
import logging

from flask import Flask, jsonify, request

from .app_state import AppState, app_state
from .context import Context, register_context
from .routes import routes
from .settings import Settings

logger = logging.getLogger(__name__)

PUBLIC_PATHS = {"/", "/health", "/metrics"}


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
