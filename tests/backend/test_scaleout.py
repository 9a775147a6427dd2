"""Scale-out on Redis + RQ with real components: a real redis-server (MCM_TEST_REDIS_URL, started by
scripts/test.sh), real `rq worker` subprocesses, the fake Label Studio and the local image server of
backend_fakes over real HTTP, simple-cnn + MinorityMiner trained for real on MNIST digits.

Each test uses its own RQ queue name, so tests (and runs) never share jobs.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from backend.fitting import train_project
from backend.refresh import refresh_project
from backend.app import create_app, service_of
from backend.ingest.cache import ArrayCache
from backend.versions import ModelStore
from backend.context import Context
from backend.settings import Settings
from backend_fakes import LABEL_CONFIG, FakeLabelStudio, populate_project
from backend_helpers import wait_until

REDIS_URL = os.environ.get("MCM_TEST_REDIS_URL")
ROOT = Path(__file__).resolve().parents[2]
RQ = Path(sys.executable).with_name("rq")
PID = 3

needs_redis = pytest.mark.skipif(not REDIS_URL, reason="MCM_TEST_REDIS_URL is not set: these tests need a real "
                                "redis-server (scripts/test.sh starts one; or start `redis-server --port 6391` "
                                "and export MCM_TEST_REDIS_URL=redis://127.0.0.1:6391/0)")


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


class Workers:
    """Real `rq worker` processes (with the test's environment, importing the repository)."""

    def __init__(self, queue: str, env: dict, log_dir: Path) -> None:
        self.queue, self.env, self.log_dir = queue, env, log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *options: str, **extra_env) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "w")
        # The command of the compose file's worker service (docker/docker-compose.yml).
        proc = subprocess.Popen([str(RQ), "worker", "-w", "backend.scaleout.worker.PreloadWorker", "--url", REDIS_URL,
                                 "--name", f"{name}-{uuid.uuid4().hex[:6]}", *options, self.queue], cwd=ROOT, env={**self.env, **extra_env}, stdout=log,
                                stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig=signal.SIGKILL) -> None:
        """Signal the worker and its work horse (RQ puts the horse in its own process group)."""
        proc = self.procs.pop(name)
        horses = _children(proc.pid)
        for pid in [proc.pid] + horses:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        proc.wait(timeout=60)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.log_dir.glob("*.log")))

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGKILL)


@pytest.fixture
def cluster(tmp_path, images):
    """A fake Label Studio project, settings for the web app, and a factory of RQ workers."""
    fakes = []

    def build(head=20, tail=4, unlabeled_per_class=4, chunk=100, debounce=0.0):
        fake = FakeLabelStudio()
        fakes.append(fake)
        truth = populate_project(fake, images, pid=PID, head=head, tail=tail, unlabeled_per_class=unlabeled_per_class)
        queue = f"mcm-test-{uuid.uuid4().hex[:10]}"
        model_dir = tmp_path / "models"
        settings = Settings(model_dir=str(model_dir), backbone="simple-cnn", allowed_hosts=("127.0.0.1",),
                            debounce_seconds=debounce, label_studio_url=fake.url,
                            label_studio_api_key=fake.legacy_token, cnn_epochs=2, predict_chunk=7,
                            redis_url=REDIS_URL, rq_queue=queue, score_chunk_tasks=chunk,
                            retrain_min_interval=0.0, maintain_seconds=3600.0)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MODEL_DIR": str(model_dir), "MCM_BACKBONE": "simple-cnn",
               "MCM_ALLOWED_HOSTS": "127.0.0.1", "LABEL_STUDIO_URL": fake.url,
               "LABEL_STUDIO_API_KEY": fake.legacy_token, "MCM_CNN_EPOCHS": "2", "MCM_PREDICT_CHUNK": "7",
               "MCM_TORCH_THREADS": "1", "MCM_SCORE_CHUNK_TASKS": str(chunk), "REDIS_URL": REDIS_URL,
               "MCM_RQ_QUEUE": queue}
        env.pop("MCM_TEST_PAUSE_BEFORE_COMMIT", None)
        (tmp_path / "logs").mkdir(exist_ok=True)
        workers = Workers(queue, env, tmp_path / "logs")
        state["workers"] = workers
        app = create_app(settings)
        state["app"] = app
        connected = app.test_client().post("/setup", json={"project": f"{PID}.1", "schema": LABEL_CONFIG})
        assert connected.status_code == 200  # Label Studio calls /setup when it connects the project
        return {"fake": fake, "truth": truth, "settings": settings, "workers": workers, "app": app,
                "client": app.test_client(), "queue": service_of(app).scheduler}

    state: dict = {}
    yield build
    if "app" in state:
        service_of(state["app"]).close()
    if "workers" in state:
        state["workers"].close()
    for fake in fakes:
        fake.close()


def _wait_idle(env, timeout=240):
    assert env["queue"].wait_idle(PID, timeout=timeout), "RQ jobs did not finish:\n" + env["workers"].logs()


def _status(env) -> dict:
    response = env["client"].get(f"/mcm/status?project={PID}")
    assert response.status_code == 200, response.json
    return response.json


def _jobs(env, func_suffix: str) -> list:
    """Finished + failed jobs of the test's queue whose function name ends with `func_suffix`."""
    from redis import Redis
    from rq.job import Job
    from rq.registry import FailedJobRegistry, FinishedJobRegistry

    connection = Redis.from_url(REDIS_URL)
    queue = env["settings"].rq_queue
    ids = FinishedJobRegistry(queue, connection=connection).get_job_ids() + \
        FailedJobRegistry(queue, connection=connection).get_job_ids()
    found = [Job.fetch(i, connection=connection) for i in ids]
    return [j for j in found if j.func_name.endswith(func_suffix)]


def _pushed(fake: FakeLabelStudio, version: str) -> dict[int, dict]:
    rows = [p for p in fake.predictions if p["model_version"] == version]
    by_task = {p["task"]: p for p in rows}
    assert len(by_task) == len(rows), "a task got two predictions of the same version (pushed twice?)"
    return by_task


# --------------------------------------------------------------------------------------------- tests


def _cache_writer(directory: str, writer: int) -> None:
    cache = ArrayCache(directory)
    for i in range(60):
        cache.put([(writer * 1000 + i, f"u{i}")], np.full((1, 3), writer * 1000 + i, dtype=np.float32))


def test_feature_cache_survives_concurrent_writer_processes(tmp_path):
    """Three processes write into one cache directory at once (and merge shards): nothing is lost."""
    directory = str(tmp_path / "cache")
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=_cache_writer, args=(directory, w)) for w in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    keys = [(w * 1000 + i, f"u{i}") for w in range(3) for i in range(60)]
    cache = ArrayCache(directory)
    assert cache.missing(keys) == []
    assert cache.get(keys)[:, 0].tolist() == [float(k[0]) for k in keys]
    assert not glob.glob(os.path.join(directory, "*.tmp*"))


@needs_redis
def test_burst_of_training_events_becomes_at_most_two_trainings(cluster):
    env = cluster(debounce=1.0)
    env["workers"].start("w1")
    statuses = []
    for i in range(50):
        response = env["client"].post("/webhook", json={"action": "START_TRAINING", "project": {"id": PID}})
        assert response.status_code == 201, response.json
        statuses.append(response.json["status"])
    assert statuses[0] == "scheduled"
    assert statuses.count("scheduled") + statuses.count("queued-after-running") <= 2
    assert _status(env)["training"] is True
    _wait_idle(env)

    trainings = _jobs(env, "train_job")
    record = env["queue"].state(PID)
    assert 1 <= len(trainings) <= 2, [j.id for j in trainings]
    assert 1 <= int(record["trainings"]) <= 2 and int(record["train_jobs_enqueued"]) <= 2
    assert all(j.get_status() == "finished" for j in trainings)

    # The web process serves the model the worker trained (it re-reads current.json).
    status = _status(env)
    version = status["model_version"]
    assert version and version == ModelStore(env["settings"].project_dir(PID)).current_version()
    assert status["training"] is False and status["training_state"] == "idle" and status["last_error"] is None
    assert status["n_scored"] == len(env["truth"])
    assert env["fake"].projects[PID]["model_version"] == version
    assert set(_pushed(env["fake"], version)) == set(env["truth"])
    ids = list(env["truth"])[:3]
    tasks = [{"id": t, "data": env["fake"].tasks[t]["data"]} for t in ids]
    predicted = env["client"].post("/predict", json={"tasks": tasks, "project": f"{PID}.1",
                                                      "label_config": LABEL_CONFIG}).json
    assert predicted["model_version"] == version
    assert [r["score"] for r in predicted["results"]] == pytest.approx(
        [_pushed(env["fake"], version)[t]["score"] for t in ids], abs=1e-6)


@needs_redis
def test_two_workers_score_chunks_in_parallel_like_the_single_process_path(cluster, images, tmp_path):
    env = cluster(unlabeled_per_class=4, chunk=3)  # 12 unlabeled tasks -> 4 chunk jobs
    # 6 jobs (training, 4 chunks, push) and at most 3 per worker: whichever worker trains also
    # scores at least one chunk, the other at least two, however the scheduling goes.
    env["workers"].start("w1", "--max-jobs", "3")
    env["workers"].start("w2", "--max-jobs", "3")
    assert env["client"].post("/train", json={"project": PID}).status_code == 201
    _wait_idle(env)
    fake = env["fake"]
    v1 = fake.projects[PID]["model_version"]
    assert v1 and v1 == _status(env)["model_version"]
    chunk_jobs = _jobs(env, "score_chunk_job")
    assert len(chunk_jobs) == 4 and all(j.get_status() == "finished" for j in chunk_jobs)
    assert len({j.worker_name for j in chunk_jobs}) == 2, "both workers should have scored chunks"
    distributed = _pushed(fake, v1)
    assert set(distributed) == set(env["truth"])

    # The single-process path on a copy of the same model, another Label Studio with the same
    # tasks and an empty feature cache: same tasks, same scores and labels, same version.
    single_dir = tmp_path / "single"
    project_dir = Path(env["settings"].project_dir(PID))
    shutil.copytree(project_dir / v1, single_dir / str(PID) / v1)
    shutil.copy(project_dir / "current.json", single_dir / str(PID) / "current.json")
    other = FakeLabelStudio()
    try:
        populate_project(other, images, pid=PID, head=20, tail=4, unlabeled_per_class=4)
        settings = Settings(model_dir=str(single_dir), backbone="simple-cnn", allowed_hosts=("127.0.0.1",),
                            label_studio_url=other.url, label_studio_api_key=other.legacy_token, cnn_epochs=2,
                            predict_chunk=7)
        timings = refresh_project(PID, Context(settings))
        assert timings["pool"] == len(env["truth"]) and other.projects[PID]["model_version"] == v1
        single = _pushed(other, v1)
    finally:
        other.close()
    assert set(single) == set(distributed)
    for task in single:
        assert distributed[task]["score"] == pytest.approx(single[task]["score"], abs=1e-6)
        assert distributed[task]["result"] == single[task]["result"]


@needs_redis
def test_worker_killed_mid_training_leaves_previous_model_and_a_failed_job(cluster):
    env = cluster()
    workers = env["workers"]
    # v1: trained and pushed in this process (the in-process path), served by the web app.
    in_process = dataclasses.replace(env["settings"], redis_url=None)
    v1 = train_project(PID, Context(in_process))
    store = ModelStore(env["settings"].project_dir(PID))
    assert v1 and store.current_version() == v1 and store.versions() == [v1]
    assert _status(env)["model_version"] == v1 and set(_pushed(env["fake"], v1)) == set(env["truth"])
    pointer = Path(store.pointer_path).read_bytes()

    # The test hook pauses the training after its model files are written, before the commit.
    hook = str(Path(__file__).parent / "pause_hook")  # its sitecustomize pauses ModelStore.save
    workers.start("slow", MCM_TEST_PAUSE_BEFORE_COMMIT="120", PYTHONPATH=f"{hook}{os.pathsep}{ROOT}")
    assert env["client"].post("/train", json={"project": PID}).json["status"] == "scheduled"
    wait_until(lambda: glob.glob(os.path.join(store.project_dir, ".saving-*", "miner.pt")), 120,
               "the training reaching the pause before its commit", interval=0.2, detail=workers.logs)
    assert _status(env)["training_state"] == "running"
    job_id = env["queue"].state(PID)["running"]
    workers.kill("slow", signal.SIGKILL)

    # Still serving v1, from an unchanged pointer; the half-written directory is not a version.
    assert Path(store.pointer_path).read_bytes() == pointer
    assert store.current_version() == v1 and store.versions() == [v1]
    task = next(iter(env["truth"]))
    predicted = env["client"].post("/predict", json={"tasks": [{"id": task, "data": env["fake"].tasks[task]["data"]}],
                                                      "project": f"{PID}.1", "label_config": LABEL_CONFIG}).json
    assert predicted["model_version"] == v1 and predicted["results"][0]["score"] is not None

    # Once its lease expires the job is reaped: visibly failed in RQ, explained in /mcm/status,
    # and one new training queued in its place.
    wait_until(lambda: env["queue"].state(PID).get("running") != job_id, 60, "the killed job being reaped",
               interval=0.5, detail=workers.logs)
    status = _status(env)
    assert status["model_version"] == v1 and "abandoned" in status["last_error"] and job_id in status["last_error"]
    assert status["training_state"] == "queued"
    from redis import Redis
    from rq.job import Job
    from rq.registry import FailedJobRegistry

    connection = Redis.from_url(REDIS_URL)
    assert job_id in FailedJobRegistry(env["settings"].rq_queue, connection=connection).get_job_ids()
    assert Job.fetch(job_id, connection=connection).get_status() == "failed"

    # A healthy worker runs the retry: the next version, and the unfinished directory cleared.
    workers.start("w2")
    _wait_idle(env)
    v2 = store.current_version()
    assert v2 != v1 and store.versions() == [v1, v2]
    assert not glob.glob(os.path.join(store.project_dir, ".saving-*"))
    assert _status(env)["model_version"] == v2 and _status(env)["last_error"] is None
    # v2 replaced v1 in Label Studio once: its predictions pushed once; v1's stay for the grace period.
    fake = env["fake"]
    assert fake.projects[PID]["model_version"] == v2
    assert set(_pushed(fake, v2)) == set(env["truth"]) and set(_pushed(fake, v1)) == set(env["truth"])
    scores_dir = Path(store.project_dir) / "scores"
    assert json.loads((scores_dir / v2 / "pushed.json").read_text())["ranked"] == len(env["truth"])
    assert not (scores_dir / v1).exists()
