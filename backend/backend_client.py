"""The admin command's client for our own backend's routes (/health, /mcm/status, /mcm/report).

Every failure is an AdminError whose message names the cause (backend down, basic auth missing, an
HTTP error with the start of its body), so the command can print one line and exit 1.
"""
from __future__ import annotations

import os

import requests

from .ls_admin import AdminError


def basic_auth_from_env() -> tuple[str, str] | None:
    user, password = os.environ.get("BASIC_AUTH_USER"), os.environ.get("BASIC_AUTH_PASS")
    return (user, password) if user and password else None


def backend_fetch(backend_url: str, path: str, params: dict | None = None, timeout: float = 10.0
                  ) -> requests.Response:
    """GET a route of our backend (2xx only); AdminError naming the cause otherwise."""
    url = backend_url.rstrip("/") + path
    try:
        response = requests.get(url, params=params, auth=basic_auth_from_env(), timeout=timeout)
    except requests.RequestException as exc:
        raise AdminError(f"backend unreachable at {backend_url} ({type(exc).__name__}); is it running?") from None
    if response.status_code == 401:
        raise AdminError(f"backend at {backend_url} requires basic auth: set BASIC_AUTH_USER and BASIC_AUTH_PASS")
    if response.status_code >= 300:
        raise AdminError(f"backend at {backend_url} answered HTTP {response.status_code} to {path}: "
                         f"{response.text[:200]}")
    return response


def backend_get(backend_url: str, path: str, params: dict | None = None, timeout: float = 10.0) -> dict:
    """GET a JSON route of our backend; AdminError naming the cause otherwise."""
    response = backend_fetch(backend_url, path, params, timeout)
    try:
        return response.json()
    except ValueError:
        raise AdminError(f"backend at {backend_url} answered {path} with non-JSON: {response.text[:200]}") from None


def backend_status(backend_url: str, project_id: int) -> dict:
    return backend_get(backend_url, "/mcm/status", params={"project": project_id})
