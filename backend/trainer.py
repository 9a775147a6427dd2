"""Background training queue: one training at a time per project, debounced and coalesced.

A burst of annotation webhooks must not start a training each: a request waits
MCM_DEBOUNCE_SECONDS after the last event, and events that arrive while a
training runs only mark the project dirty, so exactly one more training follows.
A burst therefore causes at most two trainings.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

logger = logging.getLogger(__name__)


class _ProjectSlot:
    def __init__(self) -> None:
        self.last_request = 0.0
        self.pending = False      # an event arrived that no training has covered yet
        self.running = False
        self.thread: threading.Thread | None = None
        self.runs = 0
        self.last_error: str | None = None


class TrainingQueue:
    """Schedules `run(project_id)` in a per-project background thread."""

    def __init__(self, run: Callable[[int], object], debounce_seconds: float = 2.0,
                 on_error: Callable[[int, BaseException], None] | None = None) -> None:
        self._run = run
        self.debounce = float(debounce_seconds)
        self._on_error = on_error
        self._slots: dict[int, _ProjectSlot] = {}
        self._cond = threading.Condition()
        self._closed = False

    def request(self, project_id: int, reason: str = "") -> str:
        """Ask for a training; returns 'scheduled', 'queued-after-running' or 'coalesced'."""
        project_id = int(project_id)
        with self._cond:
            if self._closed:
                return "closed"
            slot = self._slots.setdefault(project_id, _ProjectSlot())
            slot.last_request = time.monotonic()
            already = slot.pending
            slot.pending = True
            self._cond.notify_all()
            if slot.thread is None or not slot.thread.is_alive():
                slot.thread = threading.Thread(target=self._worker, args=(project_id, slot),
                                               name=f"mcm-train-{project_id}", daemon=True)
                slot.thread.start()
                status = "scheduled"
            elif slot.running and not already:
                status = "queued-after-running"
            else:
                status = "coalesced"
        logger.info("project %s: training requested (%s): %s", project_id, reason or "no reason", status)
        return status

    def _worker(self, project_id: int, slot: _ProjectSlot) -> None:
        while True:
            with self._cond:
                # Debounce: wait until no event arrived for `debounce` seconds.
                while not self._closed:
                    wait = slot.last_request + self.debounce - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._closed or not slot.pending:
                    slot.thread = None if slot.thread is threading.current_thread() else slot.thread
                    self._cond.notify_all()
                    return
                slot.pending = False
                slot.running = True
            try:
                self._run(project_id)
                slot.last_error = None
            except BaseException as exc:  # keep the worker alive; the model in place stays
                slot.last_error = f"{exc.__class__.__name__}: {exc}"
                logger.exception("project %s: training failed: %s", project_id, slot.last_error)
                if self._on_error:
                    self._on_error(project_id, exc)
            finally:
                with self._cond:
                    slot.running = False
                    slot.runs += 1
                    self._cond.notify_all()

    def is_training(self, project_id: int) -> bool:
        slot = self._slots.get(int(project_id))
        return bool(slot and (slot.running or slot.pending))

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
                busy = [s for s in slots if s and (s.pending or s.running)]
                if not busy:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.1))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
