"""Connecting on Label Studio's Model page is enough: a project that already has labels and no model
gets its first training without a command, a button or another annotation.

Label Studio calls /setup *before* it saves the ML backend row (Connect, POST /api/ml), and GET
/api/ml makes it call /setup of every listed backend (backend/connections.py), so /setup can neither
ask Label Studio nor wait. It only schedules a check here. A few seconds later one background thread
asks, through the connection cache, whether the project is connected (retrying with backoff for
about a minute: the row may not be saved yet, Label Studio may be busy); once it is connected, has no
model and has annotations, it requests a training through the usual paced queue (backend/pacing.py).

Bounded, because anyone who reaches the port can call /setup with made-up ids: at most one pending
check per project and MAX_PENDING at once (a refused id costs one entry and a few questions to Label
Studio, never a thread, a timer or a file); a finished check is not repeated for COOLDOWN_SECONDS
(Label Studio calls /setup on every Model page load and before every prediction); one thread serves
every project.
"""
from __future__ import annotations

import heapq
import logging
import threading
import time
from typing import Callable

from .connections import ALLOW_LIST, Verdict
from .labelstudio.client import describe_error

logger = logging.getLogger(__name__)

# Seconds before each attempt: checks at about 3, 9, 21, 45 and 69 s after /setup.
DELAYS = (3.0, 6.0, 12.0, 24.0, 24.0)
MAX_PENDING = 64         # projects waiting for a check at once; more /setup calls are not checked
COOLDOWN_SECONDS = 60.0  # a project checked to the end is not checked again for this long
MAX_REMEMBERED = 4096    # cooldown entries kept (the oldest go first): memory stays bounded
REASON = "connected"     # the reason the training queue logs

# Outcomes of a check (returned for logs and tests)
SCHEDULED, PENDING, HAS_MODEL, RECENT, FULL, CLOSED = (
    "scheduled", "already pending", "has a model", "checked recently", "too many pending checks", "closed")
REQUESTED, NO_LABELS, NOT_CONNECTED, RETRY = ("training requested", "no labels yet", "not connected", "retry")
TRAINING = "training already pending or running"


class FirstTraining:
    """Schedules and runs the delayed "connected, labeled, no model yet?" check of each project."""

    def __init__(self, connection: Callable[[int], Verdict], forget_refusal: Callable[[int], None],
                 has_model: Callable[[int], bool], count_labeled: Callable[[int], int | None],
                 request: Callable[[int, str], str], *, is_busy: Callable[[int], bool] = lambda pid: False,
                 delays: tuple[float, ...] | None = None,
                 max_pending: int = MAX_PENDING, cooldown: float = COOLDOWN_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.connection = connection          # Connections.check: may ask Label Studio (cached)
        self.forget_refusal = forget_refusal  # before a retry: the row may have been saved meanwhile
        self.has_model = has_model            # from MODEL_DIR, without creating anything
        self.count_labeled = count_labeled    # tasks with annotations in Label Studio; None = unknown
        self.request = request                # TrainingScheduler.request(project_id, reason)
        self.is_busy = is_busy                # a training of the project is pending or running
        self.delays = tuple(DELAYS if delays is None else delays)  # read now: tests may change DELAYS
        self.max_pending = int(max_pending)
        self.cooldown = float(cooldown)
        self.clock = clock
        self._heap: list[tuple[float, int, int]] = []  # (due, project, attempt)
        self._pending: set[int] = set()                 # scheduled or running
        self._running = 0                               # checks being run now
        self._done: dict[int, float] = {}               # project -> when its last check ended
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._full_logged_at = float("-inf")
        self.outcomes: dict[int, str] = {}              # the last outcome per pending/checked project

    # ------------------------------------------------------------------ what the routes call
    def on_setup(self, project_id: int) -> str:
        """/setup: schedule the project's check unless it has a model, is pending or was checked lately."""
        return self._schedule(int(project_id), self.delays[0], respect_cooldown=True)

    def now(self, project_id: int) -> str:
        """/predict of a connected project without a model: check at once (no cooldown)."""
        return self._schedule(int(project_id), 0.0, respect_cooldown=False)

    def _schedule(self, project_id: int, delay: float, respect_cooldown: bool) -> str:
        with self._cond:
            if self._closed:
                return CLOSED
            if project_id in self._pending:
                return PENDING
            done = self._done.get(project_id)
            if respect_cooldown and done is not None and self.clock() - done < self.cooldown:
                return RECENT
            if self._full(project_id):
                return FULL
        if self.has_model(project_id):  # outside the lock: a small file read
            return HAS_MODEL
        with self._cond:
            if self._closed or project_id in self._pending:
                return CLOSED if self._closed else PENDING
            if self._full(project_id):
                return FULL
            self._pending.add(project_id)
            heapq.heappush(self._heap, (self.clock() + delay, project_id, 0))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="mcm-onboarding", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return SCHEDULED

    def _full(self, project_id: int) -> bool:
        """MAX_PENDING checks wait already (logged at most once a minute: made-up ids must not flood the log)."""
        if len(self._pending) < self.max_pending:
            return False
        now = self.clock()
        if now - self._full_logged_at >= 60.0:
            self._full_logged_at = now
            logger.warning("project %s: %d first-training checks pending already; not checking this one (its next "
                           "/setup or a training event will)", project_id, len(self._pending))
        return True

    # ------------------------------------------------------------------ the background thread
    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    wait = self._heap[0][0] - self.clock() if self._heap else None
                    if wait is not None and wait <= 0:
                        _due, project_id, attempt = heapq.heappop(self._heap)
                        self._running += 1
                        break
                    self._cond.wait(wait)
            try:
                outcome = self.check(project_id, attempt)
            except Exception as exc:  # one project's failure never stops the others' checks
                logger.warning("project %s: first-training check failed: %s", project_id, describe_error(exc))
                outcome = RETRY
            self._after(project_id, attempt, outcome)

    def _after(self, project_id: int, attempt: int, outcome: str) -> None:
        with self._cond:
            self._running -= 1
            self._cond.notify_all()
            if outcome == RETRY and attempt + 1 < len(self.delays) and not self._closed:
                heapq.heappush(self._heap, (self.clock() + self.delays[attempt + 1], project_id, attempt + 1))
                self.outcomes[project_id] = RETRY
                return
            self._pending.discard(project_id)
            self.outcomes[project_id] = NOT_CONNECTED if outcome == RETRY else outcome
            self._done[project_id] = self.clock()
            while len(self._done) > MAX_REMEMBERED:
                oldest = next(iter(self._done))
                del self._done[oldest]
                self.outcomes.pop(oldest, None)
            self._cond.notify_all()

    def check(self, project_id: int, attempt: int = 0) -> str:
        """One attempt: REQUESTED, TRAINING, HAS_MODEL, NO_LABELS, NOT_CONNECTED (final) or RETRY.
        Busy first, then the model: a training ending between the two is seen as a model."""
        if self.is_busy(project_id):
            return TRAINING
        if self.has_model(project_id):
            return HAS_MODEL
        if attempt:
            self.forget_refusal(project_id)
        verdict = self.connection(project_id)
        if not verdict.connected:
            return NOT_CONNECTED if verdict.source == ALLOW_LIST else RETRY
        labeled = self.count_labeled(project_id)
        if labeled == 0:
            logger.info("project %s: connected, no labels yet: the first training starts with the first "
                        "annotations", project_id)
            return NO_LABELS
        status = self.request(project_id, REASON)
        logger.info("project %s: connected with %s labeled task(s) and no model: first training %s", project_id,
                    "some" if labeled is None else labeled, status)
        return REQUESTED

    # ------------------------------------------------------------------ tests and shutdown
    def pending(self) -> set[int]:
        with self._cond:
            return set(self._pending)

    def wake(self) -> None:
        """Re-read the clock now (tests move a fake clock forward)."""
        with self._cond:
            self._cond.notify_all()

    def wait_settled(self, timeout: float = 30.0) -> bool:
        """Block until no check is running or due by `clock` (later retries may still be scheduled)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._running or (self._heap and self._heap[0][0] <= self.clock()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.1))
            return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._pending.clear()
            self._cond.notify_all()
