"""Scale-out coordination in Redis: which training of a project is queued or running, and when it may start.

The web process (`RQTrainingScheduler`, wired in by backend/app.py) only records events
here and enqueues a training job; workers run the jobs (backend/scaleout/jobs.py).

Coalescing (per project, in one Redis hash guarded by a short Redis lock): at most one training job
queued (`queued`) and one running (`running`); an event while one is queued is covered by it, an
event while one runs sets `dirty`, and the running job enqueues exactly one follow-up when it ends.
So a burst of events causes at most two trainings, like the in-process queue (backend/pacing.py).

A running job keeps a lease key alive from a heartbeat thread. A job whose lease expired (worker
killed: SIGKILL, OOM, container stop) is reaped: its slot is freed, the project's last_error says
so, RQ's own abandoned-job handling moves it to the FailedJobRegistry, and one new training is
queued (once: a second death in a row waits for the next event). The model store only switches
`current.json` after a complete version is renamed into place, so the previous model keeps being
served.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import timezone

import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from ..pacing import ready_at

logger = logging.getLogger(__name__)

LEASE_SECONDS = 10          # a running job is presumed dead after this long without a heartbeat
HEARTBEAT_SECONDS = 2
TRAIN_JOB_TIMEOUT = 24 * 3600
RESULT_TTL = 24 * 3600
TRAIN_JOB = "backend.scaleout.jobs.train_job"


# --- Redis keys and the per-project coordination record -------------------------------------------

def _project_key(queue_name: str, project_id: int) -> str:
    return f"mcm:{queue_name}:project:{int(project_id)}"


def lease_key(queue_name: str, job_id: str) -> str:
    return f"mcm:{queue_name}:lease:{job_id}"


def _text(value) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class Coordinator:
    """The per-project record in Redis and the transitions on it (each under a short lock)."""

    def __init__(self, connection: redis.Redis, queue_name: str) -> None:
        self.connection = connection
        self.queue_name = queue_name
        self.queue = Queue(queue_name, connection=connection)

    def key(self, project_id: int) -> str:
        return _project_key(self.queue_name, project_id)

    def lock(self, project_id: int):
        return self.connection.lock(self.key(project_id) + ":lock", timeout=30, blocking_timeout=60)

    def now(self) -> float:
        seconds, micros = self.connection.time()  # one clock for web and workers
        return seconds + micros / 1e6

    def read(self, project_id: int) -> dict[str, str]:
        raw = self.connection.hgetall(self.key(project_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    # -- enqueueing ------------------------------------------------------------------------------
    def enqueue_training(self, project_id: int, job_id: str) -> None:
        self.queue.enqueue(TRAIN_JOB, int(project_id), job_id=job_id,
                           job_timeout=TRAIN_JOB_TIMEOUT, result_ttl=RESULT_TTL, failure_ttl=RESULT_TTL,
                           description=f"mcm train project {int(project_id)}")
        self.connection.hincrby(self.key(project_id), "train_jobs_enqueued", 1)

    def request(self, project_id: int, pacing: tuple[float, float, float]) -> str:
        """Record a training event: 'scheduled', 'queued-after-running' or 'coalesced'.

        `pacing` = (debounce, min_interval, max_wait) seconds, kept in the record so the
        job that trains applies the web process's settings (backend/pacing.py rules)."""
        self.reap(project_id)
        key = self.key(project_id)
        with self.lock(project_id):
            state = self.read(project_id)
            now = repr(self.now())
            self.connection.hset(key, mapping={"last_request": now, "pacing": json.dumps(list(pacing))})
            self.connection.hsetnx(key, "pending_since", now)
            if state.get("queued"):
                return "coalesced"
            if state.get("running"):
                if state.get("dirty") == "1":
                    return "coalesced"
                self.connection.hset(key, "dirty", "1")
                return "queued-after-running"
            job_id = f"mcm-train-{int(project_id)}-{uuid.uuid4().hex[:12]}"
            self.connection.hset(key, "queued", job_id)
            self.enqueue_training(project_id, job_id)
            return "scheduled"

    # -- dead job detection ------------------------------------------------------------------------
    def _job_alive(self, job_id: str) -> tuple[bool, str]:
        """(alive, why) for a job id recorded in a slot."""
        try:
            job = Job.fetch(job_id, connection=self.connection)
        except Exception:
            return False, "its RQ job no longer exists"
        status = job.get_status(refresh=False)
        if status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
            return True, str(status)
        if status == JobStatus.STARTED:
            if self.connection.exists(lease_key(self.queue_name, job_id)):
                return True, "running"
            started_at = job.started_at
            if started_at is not None and started_at.tzinfo is None:  # RQ stores UTC
                started_at = started_at.replace(tzinfo=timezone.utc)
            started = started_at.timestamp() if started_at else None
            if started is not None and self.now() - started < LEASE_SECONDS:
                return True, "starting"
            return False, f"its worker stopped sending heartbeats (none for {LEASE_SECONDS}s)"
        return False, f"it ended with status {status} without releasing the project"

    def _fail_abandoned(self, job_id: str) -> None:
        """Let RQ's abandoned-job handling fail (or retry) this one job now rather than after its TTL."""
        registry = StartedJobRegistry(self.queue_name, connection=self.connection)
        entries = [e for e in self.connection.zrange(registry.key, 0, -1)
                   if _text(e) == job_id or _text(e).startswith(job_id + ":")]
        if not entries:
            return
        self.connection.zadd(registry.key, {e: 1 for e in entries})
        registry.cleanup(timestamp=1)

    def reap(self, project_id: int) -> None:
        """Free the slots of jobs whose worker died; schedule the follow-up a dirty project needs."""
        state = self.read(project_id)
        if not state.get("queued") and not state.get("running"):
            return
        with self.lock(project_id):
            state = self.read(project_id)
            key = self.key(project_id)
            for slot in ("running", "queued"):
                job_id = state.get(slot)
                if not job_id:
                    continue
                alive, why = self._job_alive(job_id)
                if alive:
                    continue
                message = f"training job {job_id} was abandoned: {why}; the previous model stays in place"
                logger.error("project %s: %s", project_id, message)
                self.connection.hdel(key, slot)
                self.connection.hset(key, "last_error", message)
                if slot == "running":
                    # Its events were not covered: retry once. A second death in a row (e.g. the
                    # training runs out of memory) waits for the next event instead of looping.
                    if self.connection.hincrby(key, "abandoned_in_a_row", 1) <= 1:
                        self.connection.hset(key, "dirty", "1")
                self._fail_abandoned(job_id)
            state = self.read(project_id)
            if state.get("dirty") == "1" and not state.get("queued") and not state.get("running"):
                job_id = f"mcm-train-{int(project_id)}-{uuid.uuid4().hex[:12]}"
                self.connection.hset(key, "queued", job_id)
                self.connection.hdel(key, "dirty")
                self.enqueue_training(project_id, job_id)


class Heartbeat:
    """Keeps the job's lease key alive while the job runs (a dead worker stops renewing it)."""

    def __init__(self, connection: redis.Redis, key: str) -> None:
        self.connection, self.key = connection, key
        self._stop = threading.Event()
        self.connection.set(key, "1", ex=LEASE_SECONDS)
        self._thread = threading.Thread(target=self._run, name="mcm-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.connection.set(self.key, "1", ex=LEASE_SECONDS)
            except Exception as exc:  # a Redis hiccup must not kill the training
                logger.warning("lease %s: heartbeat failed: %s", self.key, exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.connection.delete(self.key)
        except Exception:
            pass


# --- the training job's side of the record --------------------------------------------------------

def ready_at_of(state: dict[str, str]) -> float:
    """When the queued training may start, by backend/pacing.py's rules, on Redis's clock."""
    debounce, min_interval, max_wait = json.loads(state.get("pacing") or "[0, 0, 0]")
    last_event = float(state.get("last_request") or 0)
    last_start = state.get("last_start")
    return ready_at(float(state.get("pending_since") or last_event), last_event,
                    float(last_start) if last_start else None, debounce, min_interval, max_wait)


def acquire(coord: Coordinator, job_id: str, project_id: int) -> bool:
    """Wait for the pacing rules, then move this job from `queued` to `running`. False: nothing to do."""
    key = coord.key(project_id)
    while True:
        coord.reap(project_id)
        with coord.lock(project_id):
            state = coord.read(project_id)
            if state.get("queued") != job_id:
                logger.info("project %s: training job %s is no longer the queued one (%s); skipping",
                            project_id, job_id, state.get("queued"))
                return False
            wait = ready_at_of(state) - coord.now()
            if wait <= 0:
                if state.get("running"):  # another training still runs: it will follow up
                    coord.connection.hdel(key, "queued")
                    coord.connection.hset(key, "dirty", "1")
                    logger.info("project %s: training %s still running; %s folds into its follow-up",
                                project_id, state["running"], job_id)
                    return False
                coord.connection.hdel(key, "queued", "dirty", "pending_since")
                now = repr(coord.now())
                coord.connection.hset(key, mapping={"running": job_id, "running_since": now, "last_start": now})
                coord.connection.hincrby(key, "trainings", 1)
                return True
        time.sleep(min(wait, 1.0))


def release(coord: Coordinator, job_id: str, project_id: int, error: str | None) -> None:
    """Free `running`; enqueue the one follow-up training if events arrived meanwhile."""
    key = coord.key(project_id)
    with coord.lock(project_id):
        state = coord.read(project_id)
        if state.get("running") == job_id:
            coord.connection.hdel(key, "running", "running_since")
        if error:
            coord.connection.hset(key, "last_error", error)
        else:
            coord.connection.hdel(key, "last_error", "abandoned_in_a_row")
        state = coord.read(project_id)
        if state.get("dirty") == "1" and not state.get("queued") and not state.get("running"):
            follow = f"mcm-train-{int(project_id)}-{uuid.uuid4().hex[:12]}"
            coord.connection.hdel(key, "dirty")
            coord.connection.hset(key, "queued", follow)
            coord.enqueue_training(project_id, follow)
            logger.info("project %s: events arrived during training %s: follow-up training %s queued",
                        project_id, job_id, follow)
