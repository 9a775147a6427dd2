"""The RQ jobs: train a project, score its pool in chunks on any worker, publish the version once.

- `train_job` (any worker): paces (backend/pacing.py's rules, on Redis's clock), trains and saves a
  new version (backend/fitting.py, shared MODEL_DIR), then fans out re-scoring: the pool of
  unlabeled tasks (backend/pool.py) is split into chunks of MCM_SCORE_CHUNK_TASKS, one
  `score_chunk_job` per chunk (extracts missing features into the shared feature cache, scores,
  writes MODEL_DIR/<project>/scores/<version>/chunk-NNNNNN.json atomically), and one
  `push_version_job` that depends on all of them and publishes the version once
  (backend/refresh.publish_ranking, the same path as a training in the web process). Filling and
  retiring stay with the web process's maintainer.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import time
from typing import Sequence

from rq import Retry, get_current_job
from rq.job import Dependency, Job

from mcm_core.atomic import atomic_write_json

from ..context import Context, get_context
from ..fitting import train_project
from ..label_config import config_from_meta
from ..labelstudio import client as labelstudio
from ..ranking import Ranking
from ..refresh import publish_ranking
from ..scoring import score_tasks
from ..settings import Settings
from ..versions import VERSION_RE, load_version
from .coordinator import RESULT_TTL, Coordinator, Heartbeat, acquire, lease_key, release

logger = logging.getLogger(__name__)

CHUNK_JOB_TIMEOUT = 6 * 3600


def _current() -> tuple[Job, Coordinator]:
    job = get_current_job()
    if job is None:
        raise RuntimeError("this function is an RQ job; enqueue it, do not call it directly")
    return job, Coordinator(job.connection, job.origin)


def _context() -> Context:
    return get_context(Settings.from_env())


def _scores_dir(context: Context, project_id: int, version: str) -> str:
    context.projects.store(project_id).version_dir(version)  # validates the version name
    return os.path.join(context.settings.project_dir(project_id), "scores", version)


def _chunk_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"chunk-{index:06d}.json")


def _chunk_ranking_path(chunk_path: str) -> str:
    """A chunk's ranking; its regions (detection) go to their own directory, as each ranking's do."""
    stem = chunk_path[:-len(".json")]
    os.makedirs(stem, exist_ok=True)
    return os.path.join(stem, "ranking.npz")


def _remove_stale_saves(project_dir: str) -> None:
    """Temporary version directories left by a killed training (only one training runs per project)."""
    for path in glob.glob(os.path.join(project_dir, ".saving-*")):
        logger.warning("removing the unfinished model directory %s of an interrupted training", path)
        shutil.rmtree(path, ignore_errors=True)


def train_job(project_id: int) -> str | None:
    """RQ job: train `project_id` once (coalesced, paced), then fan out its re-scoring."""
    job, coord = _current()
    project_id = int(project_id)
    heartbeat = Heartbeat(coord.connection, lease_key(coord.queue_name, job.id))
    acquired, error = False, None
    try:
        acquired = acquire(coord, job.id, project_id)
        if not acquired:
            return None
        context = _context()
        _remove_stale_saves(context.settings.project_dir(project_id))
        store = context.projects.store(project_id)
        previous = store.current_version()
        previous_labels = int(store.read_meta(previous).get("n_labeled", 0)) if previous else 0
        version = train_project(project_id, context, rescore=False)
        if version is not None:
            new_labels = int(store.read_meta(version).get("n_labeled", 0)) - previous_labels
            fan_out_rescoring(coord, context, project_id, version, new_labels)
        return version
    except BaseException as exc:
        error = f"training job {job.id} failed: {labelstudio.describe_error(exc)}"
        if not labelstudio.traceback_is_safe(exc):  # rq logs and stores the traceback: no Label Studio headers
            raise labelstudio.LabelStudioError(error) from None
        raise
    finally:
        if acquired:
            release(coord, job.id, project_id, error)
        heartbeat.stop()


def fan_out_rescoring(coord: Coordinator, context: Context, project_id: int, version: str,
                      new_labels: int = 0) -> list[str]:
    """Enqueue one scoring job per chunk of the pool and the push job that depends on them."""
    config = config_from_meta(context.projects.store(project_id).read_meta(version))
    tasks = context.pool_tasks(project_id, config.image_key)
    size = context.settings.score_chunk_tasks
    chunks = [tasks[i:i + size] for i in range(0, len(tasks), size)]
    os.makedirs(_scores_dir(context, project_id, version), exist_ok=True)
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


def _model(context: Context, project_id: int, version: str):
    """`version` loaded: the process's current model if it is that one, else read from MODEL_DIR."""
    current = context.projects.get(project_id).model
    if current is not None and current.version == version:
        return current
    return load_version(context.projects.store(project_id), version, context.extractor)


def score_chunk_job(project_id: int, version: str, index: int, tasks: Sequence[dict]) -> dict:
    """RQ job: score one chunk with `version`; result written atomically to scores/<version>/."""
    started = time.monotonic()
    context = _context()
    model = _model(context, int(project_id), version)
    loaded = time.monotonic()
    part, skipped = score_tasks(int(project_id), tasks, context, model)
    scored = time.monotonic()
    path = _chunk_path(_scores_dir(context, int(project_id), version), int(index))
    part.save(_chunk_ranking_path(path))  # the scores (and a detection project's regions), then the marker
    atomic_write_json(path, {"scored": len(part), "skipped": {str(k): v for k, v in skipped.items()}})
    logger.info("project %s: chunk %d of %s: scored %d of %d tasks (%d skipped) in %.1fs (context+model %.1fs, "
                "features+scoring %.1fs, writing %.1fs)", project_id, index, version, len(part), len(tasks),
                len(skipped), time.monotonic() - started, loaded - started, scored - loaded, time.monotonic() - scored)
    return {"chunk": int(index), "scored": len(part), "skipped": len(skipped)}


def _remove_older_scores(scores_root: str, version: str) -> None:
    """Drop the chunk results of older versions (a newer version's may be being written right now)."""
    number = int(VERSION_RE.match(version).group(1))
    for other in glob.glob(os.path.join(scores_root, "mcm-v*")):
        match = VERSION_RE.match(os.path.basename(other))
        if match and int(match.group(1)) < number:
            shutil.rmtree(other, ignore_errors=True)


def _gather(directory: str, n_chunks: int) -> tuple[Ranking, int]:
    """The ranking of all chunks' results, and how many tasks they skipped."""
    ranking, n_skipped = Ranking.build([], [], []), 0
    for i in range(int(n_chunks)):
        path = _chunk_path(directory, i)
        with open(path) as handle:
            n_skipped += len(json.load(handle)["skipped"])
        ranking = ranking.merged(Ranking.load(_chunk_ranking_path(path)))
    return ranking, n_skipped


def push_version_job(project_id: int, version: str, n_chunks: int, new_labels: int = 0) -> int:
    """RQ job: gather the chunk results and publish the version (backend/publishing.py), once."""
    job, coord = _current()
    project_id = int(project_id)
    key = coord.key(project_id)
    context = _context()
    directory = _scores_dir(context, project_id, version)
    marker = os.path.join(directory, "pushed.json")
    try:
        if os.path.exists(marker):
            logger.info("project %s: %s already published; not publishing again", project_id, version)
            return 0
        store = context.projects.store(project_id)
        if store.current_version() != version:
            logger.info("project %s: %s was superseded by %s before its push; skipped", project_id, version,
                        store.current_version())
            return 0
        missing = [i for i in range(int(n_chunks)) if not os.path.exists(_chunk_path(directory, i))]
        if missing:
            raise RuntimeError(f"project {project_id}: {len(missing)} of {n_chunks} scoring chunks of {version} "
                               f"failed (chunks {missing[:10]}); nothing pushed, Label Studio keeps the previous "
                               "version's scores")
        ranking, n_skipped = _gather(directory, n_chunks)
        published = publish_ranking(project_id, context, _model(context, project_id, version), ranking,
                                    int(new_labels))
        head = published["head"]
        atomic_write_json(marker, {"version": version, "ranked": len(ranking), "head": head, "skipped": n_skipped})
        _remove_older_scores(os.path.dirname(directory), version)
        coord.connection.hset(key, mapping={"n_scored": len(ranking), "last_pushed": version})
        coord.connection.hdel(key, "last_error")
        logger.info("project %s: published %s from %d chunks: %d ranked, head %d (%d tasks skipped)", project_id,
                    version, n_chunks, len(ranking), head, n_skipped)
        return len(ranking)
    except BaseException as exc:
        error = f"pushing {version} failed: {labelstudio.describe_error(exc)}"
        coord.connection.hset(key, "last_error", error)
        if not labelstudio.traceback_is_safe(exc):  # rq logs and stores the traceback: no Label Studio headers
            raise labelstudio.LabelStudioError(error) from None
        raise
    finally:
        with coord.lock(project_id):
            if coord.read(project_id).get("scoring_version") == version:
                coord.connection.hdel(key, "scoring_version", "scoring_job")
