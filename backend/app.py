"""The HTTP app: a Flask app of our own serving the routes Label Studio calls (backend/routes.py).

Why our own app and not label-studio-ml's: its 1.0.9 release re-creates the model
object on every /setup, starts a process per webhook, has no GET /versions, logs
credentials at DEBUG, and pins Flask 1.1.2 / Werkzeug 2.0.2. We replaced all of its
views anyway; owning the app removes that glue (docs/architecture.md).

`create_app(settings)` builds the app and its Service (backend/service.py).
Before every request: without basic auth, only loopback clients (unless
MCM_ALLOW_UNAUTHENTICATED; gunicorn binds by itself, so the app checks); basic auth
(when configured, on every route but / and /health) and a body-size limit; every view
validates its input (backend/validation.py).
"""
from __future__ import annotations

import base64
import hmac
import ipaddress
import logging
import socket

from flask import Flask, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from .context import Context, register_context
from .routes import routes
from .service import SERVICE_KEY, Service, current_service
from .settings import Settings

logger = logging.getLogger(__name__)

PUBLIC_PATHS = {"/", "/health", "/metrics"}


def is_loopback_address(address: str | None) -> bool:
    """True for an IP address in 127.0.0.0/8 or ::1 (IPv4-mapped too); False for anything else."""
    try:
        ip = ipaddress.ip_address((address or "").strip("[]").split("%")[0])
    except ValueError:
        return False
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def is_loopback_host(host: str | None) -> bool:
    """True if the bind address `host` (an IP or a name) is only ever a loopback address."""
    if is_loopback_address(host):
        return True
    if not host or host.strip("[]") != host:
        return False
    try:
        ipaddress.ip_address(host)
        return False  # an address, and not a loopback one (0.0.0.0, a LAN address, ...)
    except ValueError:
        pass
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return False
    return bool(found) and all(is_loopback_address(a) for a in found)


def unauthenticated_refusal(settings: Settings, client: str | None) -> str | None:
    """Why a client at address `client` may not be served without credentials, or None when it may."""
    if settings.basic_auth_user or settings.allow_unauthenticated or is_loopback_address(client):
        return None
    return (f"the backend has no basic auth and serves only loopback clients, not {client}: set BASIC_AUTH_USER "
            "and BASIC_AUTH_PASS (and enter them where the model is connected in Label Studio), or set "
            "MCM_ALLOW_UNAUTHENTICATED=true if only trusted clients reach this address (docs/security.md)")


_REFUSED_LOGGED: set[str] = set()


def _check_remote_address():
    """Without basic auth, 403 for non-loopback clients (except the public paths)."""
    if request.path in PUBLIC_PATHS:
        return None
    client = request.remote_addr
    if not client:  # a Unix socket: only local processes can connect
        return None
    reason = unauthenticated_refusal(current_service().settings, client)
    if reason is None:
        return None
    if client not in _REFUSED_LOGGED and len(_REFUSED_LOGGED) < 100:
        _REFUSED_LOGGED.add(client)
        logger.warning("refused %s %s: %s", request.method, request.path, reason)
    response = jsonify({"status": "error", "error": reason})
    response.status_code = 403
    return response


def _check_basic_auth():
    settings = current_service().settings
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


def _too_large(_exc: RequestEntityTooLarge):
    """413 for a body over MCM_MAX_REQUEST_BYTES: werkzeug stops reading there (MAX_CONTENT_LENGTH), also for a
    chunked body without Content-Length."""
    limit = current_service().settings.max_request_bytes
    return jsonify({"status": "error", "error": f"request body larger than MCM_MAX_REQUEST_BYTES={limit}"}), 413


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
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.register_error_handler(RequestEntityTooLarge, _too_large)
    app.config[SERVICE_KEY] = Service(settings, context, train_fn)
    app.before_request(_check_remote_address)
    app.before_request(_check_basic_auth)
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
    service_of(app).maintainer.start()
    return app


def service_of(app: Flask) -> Service:
    """What the app's views share (backend/service.py): its Context, training scheduler, maintainer..."""
    return app.config[SERVICE_KEY]
