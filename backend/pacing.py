"""When to train: one training at a time, paced for a live team, a burst trained once.

A training of project P starts when an event asked for one and all of:
- no training is running (one at a time for the whole process: the work is CPU-bound);
- `min_interval` seconds passed since P's previous training started, so a team
  submitting every few seconds gets a fresh model every ~min_interval, not one
  per submission;
- P has been quiet for `debounce` seconds (a burst of events trains once), or the
  first untrained event is `max_wait` seconds old (so a steady stream of events
  faster than `debounce` still trains).
Events during a training mark P pending again: exactly one follow-up covers them.
One scheduler thread and one worker thread serve every project, so the number of
threads does not grow with the number of projects.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .labelstudio.client import describe_error, traceback_is_safe

logger = logging.getLogger(__name__)


def ready_at(pending_since: float, last_event: float, last_start: float | None, debounce: float,
             min_interval: float, max_wait: float) -> float:
    """When a pending training may start (the rules in the module docstring; same clock for all)."""
    quiet_or_overdue = min(last_event + debounce, pending_since + max_wait)
    return quiet_or_overdue if last_start is None else max(quiet_or_overdue, last_start + min_interval)


class _ProjectSlot:
    def __init__(self) -> None:
        self.pending_since: float | None = None   # first event not covered by a training
        self.last_event = 0.0
        self.last_start: float | None = None
        self.running = False
        self.runs = 0
        self.last_error: str | None = None

    def ready_at(self, debounce: float, min_interval: float, max_wait: float) -> float | None:
        """When this slot may start training (None: nothing pending or already running)."""
        if self.pending_since is None or self.running:
            return None
        return ready_at(self.pending_since, self.last_event, self.last_start, debounce, min_interval, max_wait)


class TrainingScheduler:
    """Schedules `run(project_id)` per the rules in the module docstring."""

    def __init__(self, run: Callable[[int], object], debounce_seconds: float = 2.0,
                 on_error: Callable[[int, BaseException], None] | None = None, *,
                 min_interval: float = 0.0, max_wait: float = 60.0) -> None:
        self._run = run
        self.debounce = float(debounce_seconds)
        self.min_interval = float(min_interval)
        self.max_wait = float(max_wait)
        self._on_error = on_error
        self._slots: dict[int, _ProjectSlot] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._busy = False
        self._thread = threading.Thread(target=self._schedule, name="mcm-train-scheduler", daemon=True)
        self._thread.start()

    def request(self, project_id: int, reason: str = "") -> str:
        """Ask for a training; returns 'scheduled', 'queued-after-running' or 'coalesced'."""
        project_id = int(project_id)
        with self._cond:
            if self._closed:
                return "closed"
            slot = self._slots.setdefault(project_id, _ProjectSlot())
            now = time.monotonic()
            slot.last_event = now
            if slot.pending_since is not None:
                status = "coalesced"
            else:
                slot.pending_since = now
                status = "queued-after-running" if slot.running else "scheduled"
            self._cond.notify_all()
        logger.info("project %s: training requested (%s): %s", project_id, reason or "no reason", status)
        return status

    def next_start(self, project_id: int) -> float | None:
        """Seconds until the pending training of `project_id` may start (None if none is pending)."""
        with self._cond:
            slot = self._slots.get(int(project_id))
            ready = slot.ready_at(self.debounce, self.min_interval, self.max_wait) if slot else None
            return None if ready is None else max(0.0, ready - time.monotonic())

    def _pick(self) -> tuple[int | None, float | None]:
        """(project to train now, or None; seconds until the next one may be ready)."""
        now = time.monotonic()
        best, best_key, wait = None, None, None
        for project_id, slot in self._slots.items():
            ready = slot.ready_at(self.debounce, self.min_interval, self.max_wait)
            if ready is None:
                continue
            if ready <= now:
                key = slot.pending_since  # the longest-waiting project goes first
                if best_key is None or key < best_key:
                    best, best_key = project_id, key
            else:
                wait = ready - now if wait is None else min(wait, ready - now)
        return best, wait

    def _schedule(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    project_id, wait = (None, None) if self._busy else self._pick()
                    if project_id is not None:
                        break
                    self._cond.wait(wait)
                slot = self._slots[project_id]
                slot.pending_since = None
                slot.running = True
                slot.last_start = time.monotonic()
                self._busy = True
            threading.Thread(target=self._work, args=(project_id, slot), name=f"mcm-train-{project_id}",
                             daemon=True).start()

    def _work(self, project_id: int, slot: _ProjectSlot) -> None:
        try:
            self._run(project_id)
            slot.last_error = None
        except BaseException as exc:  # keep serving; the model in place stays
            slot.last_error = describe_error(exc)
            logger.error("project %s: training failed: %s", project_id, slot.last_error,
                         exc_info=traceback_is_safe(exc))
            if self._on_error:
                self._on_error(project_id, exc)
        finally:
            with self._cond:
                slot.running = False
                slot.runs += 1
                self._busy = False
                self._cond.notify_all()

    def is_training(self, project_id: int) -> bool:
        slot = self._slots.get(int(project_id))
        return bool(slot and (slot.running or slot.pending_since is not None))

    def runs(self, project_id: int) -> int:
        slot = self._slots.get(int(project_id))
        return slot.runs if slot else 0

    def last_error(self, project_id: int) -> str | None:
        slot = self._slots.get(int(project_id))
        return slot.last_error if slot else None

    def wait_idle(self, project_id: int | None = None, timeout: float = 60.0) -> bool:
        """Block until no training is pending or running (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                slots = [self._slots.get(int(project_id))] if project_id is not None else list(self._slots.values())
                if not [s for s in slots if s and (s.pending_since is not None or s.running)]:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.1))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
