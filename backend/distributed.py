"""Scale-out on Redis + RQ: training and bulk re-scoring as RQ jobs (used when REDIS_URL is set).

Workers: `rq worker -w backend.distributed.PreloadWorker --url $REDIS_URL mcm` (same environment as
the web process, same MODEL_DIR); the plain `rq worker` works too, only each job then spends
seconds importing torch and building the backbone.

What runs where:
- web process (`RQTrainingQueue`, wired in by backend/app.py): only records events in Redis and
  enqueues a training job; /predict keeps serving the model in MODEL_DIR and picks up a model a
  worker trained when `current.json` changes (Runtime.project re-reads the pointer).
- `train_job` (any worker): paces (as backend/trainer.py: debounce, minimum interval, maximum
  wait), trains and saves a new version (backend.jobs.train_project, shared MODEL_DIR), then fans
  out re-scoring: the pool of unlabeled tasks (backend/pool.py) is split into chunks of
  MCM_SCORE_CHUNK_TASKS, one `score_chunk_job` per chunk (extracts missing features into the shared
  feature cache, scores, writes MODEL_DIR/<project>/scores/<version>/chunk-NNNNNN.json atomically),
  and one `push_version_job` that depends on all of them and publishes the version once
  (backend/publishing.py). Filling and retiring stay with the web process's maintainer.

Coalescing (per project, in one Redis hash guarded by a short Redis lock): at most one training job
queued (`queued`) and one running (`running`); an event while one is queued is covered by it, an
event while one runs sets `dirty`, and the running job enqueues exactly one follow-up when it ends.
So a burst of events causes at most two trainings, like the in-process TrainingQueue.

A running job keeps a lease key alive from a heartbeat thread. A job whose lease expired (worker
killed: SIGKILL, OOM, container stop) is reaped: its slot is freed, the project's last_error says
so, RQ's own abandoned-job handling moves it to the FailedJobRegistry, and one new training is
queued (once: a second death in a row waits for the next event). The model store only
switches `current.json` after a complete version is renamed into place, so the previous model keeps
being served.

Test hook: MCM_TEST_PAUSE_BEFORE_COMMIT=<seconds> makes `train_job` sleep after the model files are
written into the store's temporary directory and before the version is renamed into place and the
pointer switched, so a test can kill a worker in the middle of a training deterministically.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import threading
import time
import uuid
from datetime import timezone
from typing import Any, Sequence

import redis
from rq import Queue, Retry, Worker, get_current_job
from rq.job import Dependency, Job, JobStatus
from rq.registry import StartedJobRegistry

from .settings import Settings
from .trainer import ready_at

logger = logging.getLogger(__name__)

LEASE_SECONDS = 10          # a running job is presumed dead after this long without a heartbeat
HEARTBEAT_SECONDS = 2
TRAIN_JOB_TIMEOUT = 24 * 3600
CHUNK_JOB_TIMEOUT = 6 * 3600
RESULT_TTL = 24 * 3600
PAUSE_HOOK_ENV = "MCM_TEST_PAUSE_BEFORE_COMMIT"


# --- Redis keys and the per-project coordination record -------------------------------------------

def _project_key(queue_name: str, project_id: int) -> str:
    return f"mcm:{queue_name}:project:{int(project_id)}"


def _lease_key(queue_name: str, job_id: str) -> str:
    return f"mcm:{queue_name}:lease:{job_id}"


def _text(value) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class _Coordinator:
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
        self.queue.enqueue(train_job, int(project_id), job_id=job_id,
                           job_timeout=TRAIN_JOB_TIMEOUT, result_ttl=RESULT_TTL, failure_ttl=RESULT_TTL,
                           description=f"mcm train project {int(project_id)}")
        self.connection.hincrby(self.key(project_id), "train_jobs_enqueued", 1)

    def request(self, project_id: int, pacing: tuple[float, float, float]) -> str:
        """Record a training event: 'scheduled', 'queued-after-running' or 'coalesced'.

        `pacing` = (debounce, min_interval, max_wait) seconds, kept in the record so the
        job that trains applies the web process's settings (backend/trainer.py rules)."""
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
            if self.connection.exists(_lease_key(self.queue_name, job_id)):
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


# --- the web side -------------------------------------------------------------------------------------

class RQTrainingQueue:
    """Drop-in for trainer.TrainingQueue when REDIS_URL is set: enqueues, never trains in-process."""

    def __init__(self, settings: Settings, connection: redis.Redis | None = None) -> None:
        if not settings.redis_url and connection is None:
            raise ValueError("RQTrainingQueue needs REDIS_URL")
        self.settings = settings
        self.pacing = (float(settings.debounce_seconds), float(settings.retrain_min_interval),
                       float(settings.retrain_max_wait))
        self.connection = connection or redis.Redis.from_url(settings.redis_url)
        self.coordinator = _Coordinator(self.connection, settings.rq_queue)
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


# --- the worker side -------------------------------------------------------------------------------

def preload() -> None:
    """Import torch, mcm_core and the backend's job modules, and warm torch up.

    Measured here: in a freshly forked process the first torch module construction took ~3 s
    (lazy one-time initialisation) unless the parent had already run one. The warm-up runs with
    one intra-op thread, so no OpenMP pool exists at fork time (forking after a pool started is
    unsafe); each job's Runtime then sets MCM_TORCH_THREADS in its own process.
    """
    import torch
    import mcm_core  # noqa: F401
    from mcm_core import backbones  # noqa: F401
    from . import jobs, ls_sync, runtime  # noqa: F401

    torch.set_num_threads(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 3))
    loss = net(torch.zeros(2, 1, 8, 8)).sum()
    loss.backward()
    settings = Settings.from_env()
    if settings.torch_threads == 1:
        # Build the backbone once here: every forked job then finds it in get_runtime()
        # instead of spending seconds constructing it (measured: ~2.5 s per job for resnet18).
        from .runtime import get_runtime
        get_runtime(settings)


class PreloadWorker(Worker):
    """`rq worker -w backend.distributed.PreloadWorker`: RQ's forking worker with the heavy imports
    done once in the parent, so a forked work horse starts with them instead of importing torch
    for every job (measured: that import dominated small chunk jobs). Each job still runs in its
    own horse process, so a crash or leak in a job never takes the worker down.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        backend_logger = logging.getLogger("backend")
        if not backend_logger.handlers:  # rq only configures its own logger: show the jobs' logs too
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s [%(process)d] %(name)s %(levelname)s %(message)s"))
            backend_logger.addHandler(handler)
            backend_logger.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
        started = time.monotonic()
        try:
            preload()
        except Exception as exc:  # e.g. bad backbone weights: every job will say so clearly
            logger.error("worker %s: preloading failed (%s: %s); jobs will load everything themselves", self.name,
                         exc.__class__.__name__, exc)
        else:
            logger.info("worker %s: preloaded torch, the backend and its backbone in %.1fs", self.name,
                        time.monotonic() - started)


class _Heartbeat:
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


def _current() -> tuple[Job, _Coordinator]:
    job = get_current_job()
    if job is None:
        raise RuntimeError("this function is an RQ job; enqueue it, do not call it directly")
    return job, _Coordinator(job.connection, job.origin)


def _worker_runtime():
    from .runtime import get_runtime
    return get_runtime(Settings.from_env())


def _scores_dir(runtime, project_id: int, version: str) -> str:
    runtime.store(project_id).version_dir(version)  # validates the version name
    return os.path.join(runtime.settings.project_dir(project_id), "scores", version)


def _chunk_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"chunk-{index:06d}.json")


def _ready_at(state: dict[str, str]) -> float:
    """When the queued training may start, by backend/trainer.py's rules, on Redis's clock."""
    debounce, min_interval, max_wait = json.loads(state.get("pacing") or "[0, 0, 0]")
    last_event = float(state.get("last_request") or 0)
    last_start = state.get("last_start")
    return ready_at(float(state.get("pending_since") or last_event), last_event,
                    float(last_start) if last_start else None, debounce, min_interval, max_wait)


def _acquire(job: Job, coord: _Coordinator, project_id: int) -> bool:
    """Wait for the pacing rules, then move this job from `queued` to `running`. False: nothing to do."""
    key = coord.key(project_id)
    while True:
        coord.reap(project_id)
        with coord.lock(project_id):
            state = coord.read(project_id)
            if state.get("queued") != job.id:
                logger.info("project %s: training job %s is no longer the queued one (%s); skipping",
                            project_id, job.id, state.get("queued"))
                return False
            wait = _ready_at(state) - coord.now()
            if wait <= 0:
                if state.get("running"):  # another training still runs: it will follow up
                    coord.connection.hdel(key, "queued")
                    coord.connection.hset(key, "dirty", "1")
                    logger.info("project %s: training %s still running; %s folds into its follow-up",
                                project_id, state["running"], job.id)
                    return False
                coord.connection.hdel(key, "queued", "dirty", "pending_since")
                now = repr(coord.now())
                coord.connection.hset(key, mapping={"running": job.id, "running_since": now, "last_start": now})
                coord.connection.hincrby(key, "trainings", 1)
                return True
        time.sleep(min(wait, 1.0))


def _release(job: Job, coord: _Coordinator, project_id: int, error: str | None) -> None:
    """Free `running`; enqueue the one follow-up training if events arrived meanwhile."""
    key = coord.key(project_id)
    with coord.lock(project_id):
        state = coord.read(project_id)
        if state.get("running") == job.id:
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
                        project_id, job.id, follow)


def _remove_stale_saves(project_dir: str) -> None:
    """Temporary version directories left by a killed training (only one training runs per project)."""
    for path in glob.glob(os.path.join(project_dir, ".saving-*")):
        logger.warning("removing the unfinished model directory %s of an interrupted training", path)
        shutil.rmtree(path, ignore_errors=True)


def _install_pause_hook(runtime) -> None:
    """MCM_TEST_PAUSE_BEFORE_COMMIT (test hook, see module docstring): sleep inside ModelStore.save."""
    seconds = float(os.environ.get(PAUSE_HOOK_ENV) or 0)
    if seconds <= 0:
        return
    from .model_store import ModelStore

    original = runtime.store

    class PausingStore(ModelStore):
        def save(self, write_files, meta):
            def write_then_pause(directory):
                extra = write_files(directory)
                logger.warning("%s: pausing %.0fs with model files written to %s (test hook)", PAUSE_HOOK_ENV,
                               seconds, directory)
                time.sleep(seconds)
                return extra
            return super().save(write_then_pause, meta)

    runtime.store = lambda project_id: PausingStore(original(project_id).project_dir)


def train_job(project_id: int) -> str | None:
    """RQ job: train `project_id` once (coalesced, paced), then fan out its re-scoring."""
    job, coord = _current()
    project_id = int(project_id)
    heartbeat = _Heartbeat(coord.connection, _lease_key(coord.queue_name, job.id))
    acquired = False
    error = None
    try:
        acquired = _acquire(job, coord, project_id)
        if not acquired:
            return None
        from .jobs import train_project

        runtime = _worker_runtime()
        _install_pause_hook(runtime)
        _remove_stale_saves(runtime.settings.project_dir(project_id))
        store = runtime.store(project_id)
        previous = store.current_version()
        previous_labels = int(store.read_meta(previous).get("n_labeled", 0)) if previous else 0
        version = train_project(project_id, runtime=runtime, rescore=False)
        if version is not None:
            new_labels = int(store.read_meta(version).get("n_labeled", 0)) - previous_labels
            fan_out_rescoring(coord, runtime, project_id, version, new_labels)
        return version
    except BaseException as exc:
        error = f"training job {job.id} failed: {exc.__class__.__name__}: {exc}"
        raise
    finally:
        if acquired:
            _release(job, coord, project_id, error)
        heartbeat.stop()


def fan_out_rescoring(coord: _Coordinator, runtime, project_id: int, version: str, new_labels: int = 0) -> list[str]:
    """Enqueue one scoring job per chunk of the pool and the push job that depends on them."""
    from . import ls_sync
    from .jobs import config_from_meta

    config = config_from_meta(runtime.store(project_id).read_meta(version))
    pool = runtime.pool(project_id, config.image_key)
    if not pool.known:
        pool.replace(ls_sync.list_unlabeled_tasks(runtime.ls_client(), project_id))
    tasks = pool.tasks()
    size = runtime.settings.score_chunk_tasks
    chunks = [tasks[i:i + size] for i in range(0, len(tasks), size)]
    directory = _scores_dir(runtime, project_id, version)
    os.makedirs(directory, exist_ok=True)
    chunk_jobs = [coord.queue.enqueue(score_chunk_job, project_id, version, index, chunk,
                                      job_timeout=CHUNK_JOB_TIMEOUT, result_ttl=RESULT_TTL,
                                      failure_ttl=RESULT_TTL, retry=Retry(max=2),
                                      description=f"mcm score project {project_id} {version} chunk {index}")
                  for index, chunk in enumerate(chunks)]
    depends = Dependency(jobs=chunk_jobs, allow_failure=True) if chunk_jobs else None
    push = coord.queue.enqueue(push_version_job, project_id, version, len(chunks), new_labels,
                               depends_on=depends, job_timeout=CHUNK_JOB_TIMEOUT, result_ttl=RESULT_TTL,
                               failure_ttl=RESULT_TTL, description=f"mcm push project {project_id} {version}")
    coord.connection.hset(coord.key(project_id), mapping={"scoring_version": version, "scoring_job": push.id})
    logger.info("project %s: scoring %d pooled tasks with %s in %d chunk jobs of <= %d, push job %s",
                project_id, len(tasks), version, len(chunks), size, push.id)
    return [j.id for j in chunk_jobs] + [push.id]


def load_version(runtime, project_id: int, version: str):
    """The LoadedModel of one stored version (the current one from memory when it is that version)."""
    from mcm_core import MinorityMiner
    from .runtime import LoadedModel

    state = runtime.project(project_id)
    if state.model is not None and state.model.version == version:
        return state.model
    store = runtime.store(project_id)
    directory = store.version_dir(version)
    if not os.path.exists(os.path.join(directory, "meta.json")):
        raise FileNotFoundError(f"project {project_id}: model version {version} is not in {store.project_dir} "
                                "(pruned or never completed)")
    miner = MinorityMiner.load(os.path.join(directory, "miner.pt"))
    trained = runtime.extractor.load_trained(os.path.join(directory, "backbone.pt")) \
        if runtime.extractor.trainable else None
    return LoadedModel(version=version, miner=miner, trained_backbone=trained, meta=store.read_meta(version))


def score_chunk_job(project_id: int, version: str, index: int, tasks: Sequence[dict]) -> dict:
    """RQ job: score one chunk with `version`; result written atomically to scores/<version>/."""
    from .jobs import score_tasks
    from mcm_core.atomic import atomic_write_json

    started = time.monotonic()
    runtime = _worker_runtime()
    model = load_version(runtime, int(project_id), version)
    loaded = time.monotonic()
    ids, scores, labels, skipped = score_tasks(int(project_id), tasks, runtime, model)
    scored = time.monotonic()
    path = _chunk_path(_scores_dir(runtime, int(project_id), version), int(index))
    atomic_write_json(path, {"task_ids": ids.tolist(), "scores": scores.tolist(), "labels": labels.tolist(),
                             "skipped": {str(k): v for k, v in skipped.items()}})
    logger.info("project %s: chunk %d of %s: scored %d of %d tasks (%d skipped) in %.1fs (runtime+model %.1fs, "
                "features+scoring %.1fs, writing %.1fs)", project_id, index, version, len(ids), len(tasks),
                len(skipped), time.monotonic() - started, loaded - started, scored - loaded, time.monotonic() - scored)
    return {"chunk": int(index), "scored": len(ids), "skipped": len(skipped)}


def _remove_older_scores(scores_root: str, version: str) -> None:
    """Drop the chunk results of older versions (a newer version's may be being written right now)."""
    from .model_store import VERSION_RE

    number = int(VERSION_RE.match(version).group(1))
    for other in glob.glob(os.path.join(scores_root, "mcm-v*")):
        match = VERSION_RE.match(os.path.basename(other))
        if match and int(match.group(1)) < number:
            shutil.rmtree(other, ignore_errors=True)


def push_version_job(project_id: int, version: str, n_chunks: int, new_labels: int = 0) -> int:
    """RQ job: gather the chunk results and publish the version (backend/publishing.py), once."""
    from mcm_core.atomic import atomic_write_json
    from .jobs import config_from_meta
    from .publishing import Ranking, head_size, project_lock

    job, coord = _current()
    project_id = int(project_id)
    key = coord.key(project_id)
    runtime = _worker_runtime()
    directory = _scores_dir(runtime, project_id, version)
    marker = os.path.join(directory, "pushed.json")
    try:
        if os.path.exists(marker):
            logger.info("project %s: %s already published; not publishing again", project_id, version)
            return 0
        current = runtime.store(project_id).current_version()
        if current != version:
            logger.info("project %s: %s was superseded by %s before its push; skipped", project_id, version, current)
            return 0
        missing = [i for i in range(int(n_chunks)) if not os.path.exists(_chunk_path(directory, i))]
        if missing:
            raise RuntimeError(f"project {project_id}: {len(missing)} of {n_chunks} scoring chunks of {version} "
                               f"failed (chunks {missing[:10]}); nothing pushed, Label Studio keeps the previous "
                               "version's scores")
        ids, scores, labels, n_skipped = [], [], [], 0
        for i in range(int(n_chunks)):
            with open(_chunk_path(directory, i)) as handle:
                part = json.load(handle)
            ids += part["task_ids"]
            scores += part["scores"]
            labels += part["labels"]
            n_skipped += len(part["skipped"])
        ranking = Ranking.build(ids, scores, labels)
        config = config_from_meta(runtime.store(project_id).read_meta(version))
        head = head_size(runtime.settings.head_size, int(new_labels), len(ranking))
        with project_lock(runtime.settings.project_dir(project_id)):
            runtime.publisher(project_id, config).publish(version, ranking, head)
        runtime.store(project_id).record_scoring(version, len(ranking))
        atomic_write_json(marker, {"version": version, "ranked": len(ranking), "head": head, "skipped": n_skipped})
        _remove_older_scores(os.path.dirname(directory), version)
        coord.connection.hset(key, mapping={"n_scored": len(ranking), "last_pushed": version})
        coord.connection.hdel(key, "last_error")
        logger.info("project %s: published %s from %d chunks: %d ranked, head %d (%d tasks skipped)", project_id,
                    version, n_chunks, len(ranking), head, n_skipped)
        return len(ranking)
    except BaseException as exc:
        coord.connection.hset(key, "last_error", f"pushing {version} failed: {exc.__class__.__name__}: {exc}")
        raise
    finally:
        with coord.lock(project_id):
            if coord.read(project_id).get("scoring_version") == version:
                coord.connection.hdel(key, "scoring_version", "scoring_job")
