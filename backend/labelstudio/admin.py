"""Label Studio operations of the admin command, with one-line errors that name the cause."""
from __future__ import annotations

import re
from typing import Any, Callable

import httpx
import requests
from label_studio_sdk import LabelStudio

from . import client as labelstudio

# C0 controls (ESC starts terminal escape sequences), DEL, C1 controls (0x9b is a one-byte CSI), Unicode
# line separators and bidirectional overrides: a value from Label Studio or the backend holding them could
# recolour the terminal, move the cursor, forge output lines or reorder what the admin reads.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def clean_text(value: object) -> str:
    """`value` as text safe to print on one terminal line: line breaks and tabs become spaces, every
    other control character is dropped."""
    text = value if isinstance(value, str) else str(value)
    return _CONTROL.sub(lambda m: " " if m.group() in "\t\n\r" else "", text)


def clean_json(value: Any) -> Any:
    """A JSON value with every string (keys included) passed through clean_text."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(k) if isinstance(k, str) else k: clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_json(v) for v in value]
    return value


class AdminError(Exception):
    """A failure the user can act on; the message is the one line printed."""


class LabelStudioAdmin:
    """The few Label Studio operations the admin command needs, with errors that name the cause."""

    def __init__(self, url: str | None, api_key: str | None, timeout: float = 30.0) -> None:
        if not url:
            raise AdminError("Label Studio URL missing: pass --ls-url or set LABEL_STUDIO_URL")
        if not api_key:
            raise AdminError("Label Studio API key missing: pass --api-key or set LABEL_STUDIO_API_KEY")
        self.url = url.rstrip("/")
        try:
            self.client = LabelStudio(base_url=self.url, api_key=api_key, timeout=timeout)
        except Exception as exc:  # a JWT token is refreshed at construction time
            raise self._translate(exc, "authenticating") from None

    def _translate(self, exc: Exception, what: str) -> AdminError:
        if isinstance(exc, (httpx.TransportError, requests.ConnectionError, requests.Timeout)):
            return AdminError(f"Label Studio unreachable at {self.url} ({type(exc).__name__}: {exc})")
        status = getattr(exc, "status_code", None)
        if status is None and getattr(exc, "response", None) is not None:
            status = getattr(exc.response, "status_code", None)
        if status == 401:
            return AdminError(f"Label Studio at {self.url} rejected the API key (HTTP 401): check "
                              "LABEL_STUDIO_API_KEY / --api-key (legacy tokens must be enabled to use one)")
        if status == 403:
            return AdminError(f"Label Studio at {self.url} refused {what} (HTTP 403): the token's user lacks permission")
        body = getattr(exc, "body", None)
        return AdminError(f"Label Studio at {self.url} failed while {what}: HTTP {status} {str(body)[:300]}"
                          if status else f"Label Studio at {self.url} failed while {what}: {exc}")

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AdminError:
            raise
        except Exception as exc:
            raise self._translate(exc, what) from None

    def raw(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        """A request the sdk has no method for (same auth and base URL as the sdk)."""
        try:
            response = self.client._client_wrapper.httpx_client.request(path, method=method, **kwargs)
        except Exception as exc:
            raise self._translate(exc, what) from None
        if response.status_code == 401:
            raise self._translate(_Status(401), what)
        if response.status_code >= 300:
            raise AdminError(f"Label Studio at {self.url} failed while {what}: HTTP {response.status_code} "
                             f"{response.text[:300]}")
        return response.json() if response.content else None

    def check_token(self) -> None:
        self.call("checking the API key", self.client.users.whoami)

    def project(self, project_id: int) -> Any:
        self.check_token()
        try:
            return self.client.projects.get(id=project_id)
        except Exception as exc:
            if getattr(exc, "status_code", None) == 404:
                raise AdminError(f"unknown project {project_id}: Label Studio at {self.url} has no such "
                                 "project (or the token's user cannot see it)") from None
            raise self._translate(exc, f"reading project {project_id}") from None

    def ml_backends(self, project_id: int) -> list[Any]:
        return list(self.call(f"listing ML backends of project {project_id}", self.client.ml.list,
                              project=project_id) or [])

    def connected_backend(self, project_id: int, backend_url: str | None = None) -> Any:
        """The project's ML backend (the one at `backend_url` if given); AdminError if none."""
        backends = self.ml_backends(project_id)
        if backend_url:
            backends = [b for b in backends if (b.url or "").rstrip("/") == backend_url.rstrip("/")]
        if not backends:
            raise AdminError(f"backend not connected: project {project_id} has no ML backend"
                             + (f" at {backend_url}" if backend_url else "")
                             + "; run `python -m backend.admin connect --project "
                             f"{project_id} --url BACKEND_URL` first")
        return backends[0]

    def model_versions(self, project_id: int) -> list[dict]:
        """Prediction versions of the project, newest first: [{model_version, count, latest}]."""
        return self.call("listing model versions", labelstudio.model_versions, self.client, project_id)


class _Status(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
