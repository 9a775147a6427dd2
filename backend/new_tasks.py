"""Scoring the tasks of TASKS_CREATED events off the request thread, one job per project at a time."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

MAX_PENDING_NEW_TASKS = 1_000_000  # per project, between two scoring jobs


class NewTaskScorer:
    """Ids that arrive while a project's job waits are merged into it, so a burst of events costs
    one job per project, and the pending state is bounded by the connected projects."""

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
