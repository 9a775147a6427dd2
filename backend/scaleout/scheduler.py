"""The web process's side of the scale-out: record training events in Redis, report where a project stands."""
from __future__ import annotations

import logging
import time
from typing import Any

import redis

from ..settings import Settings
from .coordinator import Coordinator, _text

logger = logging.getLogger(__name__)


class RQTrainingScheduler:
    """Drop-in for pacing.TrainingScheduler when REDIS_URL is set: enqueues, never trains in-process."""

    def __init__(self, settings: Settings, connection: redis.Redis | None = None) -> None:
        if not settings.redis_url and connection is None:
            raise ValueError("RQTrainingScheduler needs REDIS_URL")
        self.settings = settings
        self.pacing = (float(settings.debounce_seconds), float(settings.retrain_min_interval),
                       float(settings.retrain_max_wait))
        self.connection = connection or redis.Redis.from_url(settings.redis_url)
        self.coordinator = Coordinator(self.connection, settings.rq_queue)
        self._closed = False

    def request(self, project_id: int, reason: str = "") -> str:
        if self._closed:
            return "closed"
        status = self.coordinator.request(int(project_id), self.pacing)
        logger.info("project %s: training requested (%s): %s (RQ queue %s)", project_id, reason or "no reason",
                    status, self.settings.rq_queue)
        return status

    def state(self, project_id: int) -> dict[str, str]:
        self.coordinator.reap(int(project_id))
        return self.coordinator.read(int(project_id))

    def training_state(self, project_id: int) -> str:
        """'running', 'queued' or 'idle'."""
        state = self.state(project_id)
        return "running" if state.get("running") else "queued" if state.get("queued") else "idle"

    def is_training(self, project_id: int) -> bool:
        """Training queued or running, or its re-scoring fan-out not yet published."""
        state = self.state(project_id)
        return bool(state.get("queued") or state.get("running") or state.get("scoring_version"))

    def runs(self, project_id: int) -> int:
        return int(self.coordinator.read(int(project_id)).get("trainings") or 0)

    def last_error(self, project_id: int) -> str | None:
        return self.state(project_id).get("last_error") or None

    def status_fields(self, project_id: int) -> dict[str, Any]:
        """Extra /mcm/status fields: where the training and the re-scoring fan-out stand."""
        state = self.state(project_id)
        fields: dict[str, Any] = {"training_state": "running" if state.get("running") else
                                  "queued" if state.get("queued") else "idle",
                                  "rq_queue": self.settings.rq_queue,
                                  "scoring_version": state.get("scoring_version") or None}
        if state.get("n_scored") is not None:
            fields["n_scored"] = int(state["n_scored"])
        return fields

    def wait_idle(self, project_id: int | None = None, timeout: float = 60.0) -> bool:
        """Block until no training is queued or running and no re-scoring fan-out is pending."""
        deadline = time.monotonic() + timeout
        while True:
            ids = [int(project_id)] if project_id is not None else self._known_projects()
            busy = False
            for pid in ids:
                state = self.state(pid)
                if state.get("queued") or state.get("running") or state.get("scoring_version"):
                    busy = True
            if not busy:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)

    def _known_projects(self) -> list[int]:
        prefix = f"mcm:{self.settings.rq_queue}:project:"
        out = []
        for key in self.connection.scan_iter(match=prefix + "*"):
            rest = _text(key)[len(prefix):]
            if rest.isdigit():
                out.append(int(rest))
        return out

    def close(self) -> None:
        self._closed = True
