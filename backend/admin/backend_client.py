"""The admin command's client for our own backend's routes (/health, /mcm/status, /mcm/report).

Every failure is an AdminError whose message names the cause (backend down, basic auth missing, an
HTTP error with the start of its body), so the command can print one line and exit 1.

Where the basic-auth credentials go: only to a backend URL the admin chose (`--url`, or
MCM_BACKEND_URL in the environment). The ML backend URL stored in Label Studio is not one: any Label
Studio admin can change it, so it is contacted without credentials, or not at all when credentials
are configured (the admin is told to pass `--url`). Redirects are never followed, so the credentials
cannot be forwarded either. Every string of a JSON answer is stripped of control characters.
"""
from __future__ import annotations

import dataclasses
import os

import requests

from ..labelstudio.admin import AdminError, clean_json, clean_text

BACKEND_URL_ENV = "MCM_BACKEND_URL"


def basic_auth_from_env() -> tuple[str, str] | None:
    user, password = os.environ.get("BASIC_AUTH_USER"), os.environ.get("BASIC_AUTH_PASS")
    return (user, password) if user and password else None


@dataclasses.dataclass(frozen=True)
class Backend:
    """A backend URL and the credentials it may receive (None: none are sent)."""

    url: str
    auth: tuple[str, str] | None


def configured_backend_url(explicit: str | None = None) -> str | None:
    """The backend URL the admin chose: `--url`, else MCM_BACKEND_URL; None if neither."""
    url = explicit or os.environ.get(BACKEND_URL_ENV) or None
    return url.rstrip("/") if url else None


def resolve_backend(explicit: str | None, from_label_studio: str | None) -> Backend:
    """Which backend to contact and with which credentials.

    A URL the admin chose gets the credentials. The URL read from Label Studio never does: with
    credentials configured it is refused (AdminError saying to pass --url), without it is used as is.
    """
    auth = basic_auth_from_env()
    chosen = configured_backend_url(explicit)
    if chosen:
        return Backend(chosen, auth)
    if not from_label_studio:
        raise AdminError(f"no backend URL: pass --url or set {BACKEND_URL_ENV}")
    if auth:
        raise AdminError(f"BASIC_AUTH_USER/BASIC_AUTH_PASS are set but the backend URL would come from Label "
                         f"Studio ({clean_text(from_label_studio)[:200]}), where any Label Studio admin can change "
                         f"it: pass --url or set {BACKEND_URL_ENV} so the credentials go only to a URL you chose")
    return Backend(from_label_studio.rstrip("/"), None)


def backend_fetch(backend: Backend, path: str, params: dict | None = None, timeout: float = 10.0
                  ) -> requests.Response:
    """GET a route of our backend (2xx only, no redirect); AdminError naming the cause otherwise."""
    url = backend.url + path
    try:
        response = requests.get(url, params=params, auth=backend.auth, timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        raise AdminError(f"backend unreachable at {backend.url} ({type(exc).__name__}); is it running?") from None
    if response.status_code == 401:
        hint = ("check BASIC_AUTH_USER and BASIC_AUTH_PASS" if backend.auth else
                f"set BASIC_AUTH_USER and BASIC_AUTH_PASS, and pass --url or set {BACKEND_URL_ENV}")
        raise AdminError(f"backend at {backend.url} requires basic auth: {hint}")
    if response.status_code >= 300:
        raise AdminError(f"backend at {backend.url} answered HTTP {response.status_code} to {path}: "
                         f"{clean_text(response.text[:200])}")
    return response


def backend_get(backend: Backend, path: str, params: dict | None = None, timeout: float = 10.0) -> dict:
    """GET a JSON object from our backend, control characters stripped; AdminError naming the cause otherwise."""
    response = backend_fetch(backend, path, params, timeout)
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise AdminError(f"backend at {backend.url} answered {path} with something other than a JSON object: "
                         f"{clean_text(response.text[:200])}")
    return clean_json(data)


def backend_status(backend: Backend, project_id: int) -> dict:
    return backend_get(backend, "/mcm/status", params={"project": project_id})
