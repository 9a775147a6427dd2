"""Which Label Studio projects this backend acts on ("connected" means connected in Label Studio).

Anyone who reaches the port can call /setup with any project id, so /setup proves nothing. A project is
connected when MCM_PROJECTS lists it (authoritative when set), otherwise when Label Studio lists, among
the project's ML backends (GET /api/ml?project=N), one that points here: its URL equals MCM_BACKEND_URL
(trailing slash aside), or, with MCM_BACKEND_URL unset, any ML backend at all. Label Studio's answer is
kept per project for MCM_CONNECTION_TTL_SECONDS. A confirmed project is recorded in
MODEL_DIR/<p>/connected.json, which keeps it working while Label Studio cannot be reached; nothing is
written for any other project.

Two Label Studio details shape this. Its Connect button (and POST /api/ml) calls /setup *before* it
saves the ML backend (MLBackendSerializer.validate -> MLBackend.setup_), and GET /api/ml calls /health
and /setup of every listed backend before it answers (MLBackend.update_state). So /setup never asks
Label Studio (it would wait on itself) and answers a project it cannot vouch for from memory; the check
happens on the next action, and /setup forgets a cached "not connected" because Label Studio may be
connecting the project right now. What /setup starts instead is a delayed check in the background
(backend/onboarding.py: the first training of a project connected with labels already there).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from typing import Any, Callable

from mcm_core.atomic import atomic_write_json

from .labelstudio import client as labelstudio
from .projects import Projects
from .settings import Settings

logger = logging.getLogger(__name__)

ALLOW_LIST, LABEL_STUDIO, RECORD = "MCM_PROJECTS", "label-studio", "record"
RETRY_SECONDS = 10.0   # how long "Label Studio cannot be asked" is reused (not the full TTL)
MAX_CACHED = 4096      # projects remembered at once (made-up ids included): memory stays bounded


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether the backend may act on a project; when not, the HTTP status and the reason to answer."""

    connected: bool
    status: int = 200   # 404: not connected; 503: cannot tell (Label Studio unreachable, never verified)
    reason: str = ""
    source: str = ""    # MCM_PROJECTS | label-studio | record (verified before, Label Studio unreachable)


class Connections:
    """The connection check of one app: allow-list, Label Studio's answer (cached), the on-disk record."""

    def __init__(self, settings: Settings, projects: Projects, client: Callable[[], Any],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.projects = projects
        self.client = client
        self.clock = clock
        self.allow_list = settings.project_allow_list
        self._cache: dict[int, tuple[float, Verdict]] = {}
        self._asking: dict[int, threading.Event] = {}
        self._recorded: set[int] = set()  # confirmed projects whose record is written (or cannot be)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ what the routes call
    def check(self, project_id: int) -> Verdict:
        """The verdict for an action (predict, train, webhook, report); asks Label Studio at most once
        per MCM_CONNECTION_TTL_SECONDS per project."""
        verdict = self._without_asking(project_id)
        if verdict is None:
            verdict = self._ask_once(project_id)
        if verdict.connected and verdict.source != RECORD:
            self._record(project_id, verdict.source)
        return verdict

    def on_setup(self, project_id: int) -> Verdict | None:
        """/setup's verdict without asking Label Studio: the allow-list's, a cached confirmation, or None
        (unknown yet: Label Studio may be connecting the project, so a cached refusal is forgotten)."""
        verdict = self._without_asking(project_id)
        if verdict is not None and not verdict.connected and verdict.source != ALLOW_LIST:
            with self._lock:
                self._cache.pop(project_id, None)
            return None
        if verdict is not None and verdict.connected and verdict.source != RECORD:
            self._record(project_id, verdict.source)
        return verdict

    def forget_refusal(self, project_id: int) -> None:
        """Drop a cached "not connected" (Label Studio's or "cannot tell"), so that the next check asks
        again: backend/onboarding.py retries while Label Studio may still be saving the connection."""
        with self._lock:
            entry = self._cache.get(project_id)
            if entry is not None and not entry[1].connected:
                del self._cache[project_id]

    # ------------------------------------------------------------------ the verdicts
    def _without_asking(self, project_id: int) -> Verdict | None:
        if self.allow_list is not None:
            if project_id in self.allow_list:
                return Verdict(True, source=ALLOW_LIST)
            return Verdict(False, 404, f"project {project_id} is not connected to this backend: MCM_PROJECTS "
                                       "does not list it (when MCM_PROJECTS is set, Label Studio is not asked). "
                                       "Nothing was done.", ALLOW_LIST)
        with self._lock:
            entry = self._cache.get(project_id)
        return entry[1] if entry and entry[0] > self.clock() else None

    def _ask_once(self, project_id: int) -> Verdict:
        """Ask Label Studio; concurrent requests for the same project wait for one answer."""
        with self._lock:
            event = self._asking.get(project_id)
            leader = event is None
            if leader:
                event = self._asking[project_id] = threading.Event()
        if not leader:
            event.wait(60)
            return self._without_asking(project_id) or self._ask_and_cache(project_id)
        try:
            return self._ask_and_cache(project_id)
        finally:
            with self._lock:
                self._asking.pop(project_id, None)
            event.set()

    def _ask_and_cache(self, project_id: int) -> Verdict:
        verdict = self._ask(project_id)
        ttl = self.settings.connection_ttl if verdict.source == LABEL_STUDIO else \
            min(self.settings.connection_ttl, RETRY_SECONDS)
        with self._lock:
            if len(self._cache) >= MAX_CACHED:
                now = self.clock()
                for key in [k for k, (expires, _) in self._cache.items() if expires <= now]:
                    del self._cache[key]
                while len(self._cache) >= MAX_CACHED:
                    del self._cache[next(iter(self._cache))]  # the oldest entry
            self._cache[project_id] = (self.clock() + ttl, verdict)
        return verdict

    def _ask(self, project_id: int) -> Verdict:
        if not (self.settings.label_studio_url and self.settings.label_studio_api_key):
            return self._cannot_ask(project_id, "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are not set")
        try:
            backends = labelstudio.list_ml_backends(self.client(), project_id)
        except Exception as exc:  # unreachable, timed out, key refused, not JSON: all mean "cannot tell"
            return self._cannot_ask(project_id, f"Label Studio could not be asked "
                                                f"({labelstudio.describe_error(exc)[:300]})")
        if any(self._points_here(b) for b in backends):
            return Verdict(True, source=LABEL_STUDIO)
        self._unrecord(project_id)
        wanted = self.settings.backend_url
        where = f" (MCM_BACKEND_URL={wanted}; it has {len(backends)} other ML backend(s))" if wanted else ""
        return Verdict(False, 404, f"project {project_id} is not connected to this backend: it has no ML backend "
                                   f"registered in Label Studio that points at this backend{where}; connect it in "
                                   "Settings > Model, or list it in MCM_PROJECTS. Nothing was done.", LABEL_STUDIO)

    def _points_here(self, backend: dict) -> bool:
        wanted = self.settings.backend_url
        if not wanted:
            return True  # cannot tell this backend from another one (docs/security.md)
        return str(backend.get("url") or "").rstrip("/") == wanted.rstrip("/")

    def _cannot_ask(self, project_id: int, why: str) -> Verdict:
        if self._verified_before(project_id):
            logger.warning("project %s: cannot verify its connection (%s); it was verified before: acting on it",
                           project_id, why)
            return Verdict(True, source=RECORD)
        return Verdict(False, 503, f"cannot tell whether project {project_id} is connected to this backend: {why}, "
                                   "and it was never verified here (list it in MCM_PROJECTS to act without asking "
                                   "Label Studio). Nothing was done.", RECORD)

    # ------------------------------------------------------------------ the record on disk
    def _path(self, project_id: int) -> str:
        return self.projects.store(project_id).connected_path

    def _verified_before(self, project_id: int) -> bool:
        """connected.json written by a verification (older records, written by any /setup, do not count)."""
        try:
            with open(self._path(project_id), "rb") as handle:
                record = json.loads(handle.read(4096))
        except (OSError, ValueError):
            return False
        return isinstance(record, dict) and record.get("verified_by") in (ALLOW_LIST, LABEL_STUDIO)

    def _record(self, project_id: int, source: str) -> None:
        if project_id in self._recorded:
            return
        if not self._verified_before(project_id):
            try:
                atomic_write_json(self._path(project_id), {
                    "project": project_id, "verified_by": source, "backend_url": self.settings.backend_url,
                    "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            except OSError as exc:
                logger.warning("project %s: cannot record the connection in MODEL_DIR (%s); kept in memory",
                               project_id, exc)
        with self._lock:
            self._recorded.add(project_id)

    def _unrecord(self, project_id: int) -> None:
        """Label Studio no longer lists this backend for the project: its record must not outlive that."""
        with self._lock:
            self._recorded.discard(project_id)
        try:
            os.remove(self._path(project_id))
        except FileNotFoundError:
            return
        except OSError as exc:
            logger.warning("project %s: cannot remove its connection record (%s)", project_id, exc)
            return
        logger.info("project %s: Label Studio no longer lists this backend for it; connection record removed",
                    project_id)
