"""The training and re-scoring jobs, as plain importable functions.

`train_project(project_id, settings)` loads everything it needs from Label
Studio and MODEL_DIR and writes its results back, so it runs the same in a
background thread of the web process or as an RQ job in a worker process.
`score_task_chunk` scores one chunk of tasks; `refresh_project` ranks the
pool and publishes the new version (backend/publishing.py).
"""
from __future__ import annotations

import collections
import logging
import os
import time
from typing import Sequence

import numpy as np

from . import ls_sync
from .annotations import task_label
from .label_config import ImageChoicesConfig, parse_label_config
from .publishing import Ranking, head_size, project_lock
from .runtime import LoadedModel, Runtime, get_runtime
from .scoring import score_features
from .settings import Settings

logger = logging.getLogger(__name__)

MIN_CLASSES = 2


def config_from_meta(meta: dict) -> ImageChoicesConfig:
    return ImageChoicesConfig(image_name=meta["image_name"], image_key=meta["image_key"],
                              control_name=meta["control_name"], classes=tuple(meta["classes"]))


def train_project(project_id: int, settings: Settings | None = None, runtime: Runtime | None = None,
                  rescore: bool = True) -> str | None:
    """Train project `project_id` from its annotations in Label Studio.

    Returns the new model version, or None when training was skipped for lack
    of data. The previous model stays in place until the new one is saved.
    """
    runtime = runtime or get_runtime(settings or Settings.from_env())
    settings = runtime.settings
    project_id = int(project_id)
    state = runtime.project(project_id)
    started = time.monotonic()
    client = runtime.ls_client()
    config = parse_label_config(ls_sync.get_label_config(client, project_id))
    state.config = config
    tasks = ls_sync.list_annotated_tasks(client, project_id)
    labeled, labels = [], []
    for task in tasks:
        label, reason = task_label(task, config)
        if label is None:
            logger.warning("project %s: skipping annotated task %s for training: %s", project_id, task.get("id"), reason)
            continue
        labeled.append(task)
        labels.append(config.class_index(label))
    ok, keys, skipped = runtime.cached_arrays(project_id, labeled, config)
    y = np.asarray([labels[i] for i in ok], dtype=np.int64)
    counts = collections.Counter(config.classes[i] for i in y.tolist())
    present = [c for c in config.classes if counts.get(c)]
    if len(present) < MIN_CLASSES:
        logger.info("project %s: training skipped: %d usable labeled tasks in %d class(es) %s; need at least %d "
                    "classes", project_id, len(y), len(present), dict(counts), MIN_CLASSES)
        return None
    logger.info("project %s: training %s miner on %d labeled tasks (%s) of %d annotated, backbone %s",
                project_id, settings.backbone, len(y), dict(counts), len(tasks), settings.backbone)

    from mcm_core import MinorityMiner
    trained_backbone = None
    if runtime.extractor.trainable:
        t0 = time.monotonic()
        images = runtime.cache(project_id).get(keys)
        trained_backbone = runtime.extractor.train(images, y, num_classes=len(config.classes), seed=settings.seed)
        logger.info("project %s: trained %s on %d images in %.1fs", project_id, settings.backbone, len(y),
                    time.monotonic() - t0)
    features = runtime.features(project_id, keys, trained_backbone=trained_backbone)
    t0 = time.monotonic()
    miner = MinorityMiner(num_classes=len(config.classes), seed=settings.seed,
                          **settings.miner_kwargs).fit(features, y)
    logger.info("project %s: fitted miner on %d x %d features in %.1fs", project_id, *features.shape,
                time.monotonic() - t0)

    from mcm_core.metrics import tail_classes
    tail = [config.classes[k] for k in tail_classes(y, len(config.classes))]  # count < 0.3 x mean count
    meta = {
        "project": project_id, "classes": list(config.classes), "image_key": config.image_key,
        "image_name": config.image_name, "control_name": config.control_name, "backbone": settings.backbone,
        "n_labeled": int(len(y)), "n_annotated_tasks": len(tasks), "n_skipped": len(tasks) - len(y),
        "labeled_per_class": {c: int(counts.get(c, 0)) for c in config.classes},
        "tail_classes": tail,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seed": settings.seed,
    }

    def write_files(directory: str) -> dict:
        miner.save(os.path.join(directory, "miner.pt"))
        if trained_backbone is not None:
            trained_backbone.save(os.path.join(directory, "backbone.pt"))
        return {"train_seconds": round(time.monotonic() - started, 3)}

    store = runtime.store(project_id)
    previous_labels = int(state.model.meta.get("n_labeled", 0)) if state.model else 0
    version = store.save(write_files, meta)
    meta = store.read_meta(version)
    model = LoadedModel(version=version, miner=miner, trained_backbone=trained_backbone, meta=meta)
    runtime.install(project_id, model)
    runtime.pool(project_id, config.image_key).remove([int(t["id"]) for t in tasks])  # annotated: not in the queue
    store.prune(keep=5)
    logger.info("project %s: trained model %s on %d tasks in %.1fs", project_id, version, len(y),
                time.monotonic() - started)
    if rescore:
        refresh_project(project_id, runtime=runtime, new_labels=len(y) - previous_labels)
    return version


def score_tasks(project_id: int, tasks: Sequence[dict], runtime: Runtime, model: LoadedModel,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
    """(task ids, scores in [0, 1], predicted class indices, {skipped task id: reason}) for `tasks`."""
    config = config_from_meta(model.meta)
    ok, keys, skipped = runtime.cached_arrays(project_id, tasks, config)
    if not keys:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int32), skipped
    features = runtime.features(project_id, keys, model=model)
    scores, labels = score_features(model.miner, features, runtime.settings.score_transform)
    return np.asarray([k[0] for k in keys], dtype=np.int64), scores, labels, skipped


def score_task_chunk(project_id: int, tasks: Sequence[dict], runtime: Runtime,
                     model: LoadedModel | None = None) -> tuple[list[dict], dict[int, str]]:
    """Predictions (with `task`) for the tasks of one chunk that could be scored, and the skipped ones."""
    model = model or runtime.project(project_id).model
    if model is None:
        return [], {}
    ids, scores, labels, skipped = score_tasks(project_id, tasks, runtime, model)
    ranking = Ranking(ids, scores, labels)
    return ranking.predictions(0, len(ranking), config_from_meta(model.meta), model.version), skipped


def refresh_project(project_id: int, settings: Settings | None = None, runtime: Runtime | None = None, *,
                    new_labels: int = 0, lock: bool = True) -> dict:
    """Rank the pool with the current model and publish it: the queue's head in seconds, the rest later.

    The pool is the unlabeled tasks as last listed (see backend/pool.py) minus
    those the training found annotated; the first refresh lists them from Label Studio.
    `lock=False` only for a caller that already holds the project's publish lock.
    """
    runtime = runtime or get_runtime(settings or Settings.from_env())
    state = runtime.project(project_id)
    model = state.model
    if model is None:
        logger.info("project %s: nothing to publish: no trained model yet", project_id)
        return {}
    started = time.monotonic()
    config = config_from_meta(model.meta)
    pool = runtime.pool(project_id, config.image_key)
    if not pool.known:
        pool.replace(ls_sync.list_unlabeled_tasks(runtime.ls_client(), project_id))
    listed = time.monotonic()
    ids, scores, labels, skipped = score_tasks(project_id, pool.tasks(), runtime, model)
    ranking = Ranking.build(ids, scores, labels)
    scored = time.monotonic()
    head = head_size(runtime.settings.head_size, new_labels, len(ranking))
    publisher = runtime.publisher(project_id, config)
    if lock:
        with project_lock(runtime.settings.project_dir(project_id)):  # the maintainer yields within a chunk
            timings = publisher.publish(model.version, ranking, head)
    else:
        timings = publisher.publish(model.version, ranking, head)
    state.n_scored = len(ranking)
    runtime.store(project_id).record_scoring(model.version, len(ranking))
    timings.update(pool_s=round(listed - started, 3), score_s=round(scored - listed, 3), skipped=len(skipped),
                   total_s=round(time.monotonic() - started, 3))
    logger.info("project %s: %s ranks %d unlabeled tasks (%d skipped); head of %d live %.1fs after the model "
                "(pool %.1fs, scoring %.1fs)", project_id, model.version, len(ranking), len(skipped), head,
                timings["total_s"], timings["pool_s"], timings["score_s"])
    return timings


def score_and_push_tasks(project_id: int, tasks: Sequence[dict], settings: Settings | None = None,
                         runtime: Runtime | None = None) -> int:
    """Score newly created tasks with the current model (TASKS_CREATED) and add them to the queue.

    Without this, tasks imported after a training would have no score, and so
    no place in the tail-first order, until the next training. A new task is
    pushed at once if it ranks within the part of the queue already pushed.
    """
    runtime = runtime or get_runtime(settings or Settings.from_env())
    model = runtime.project(project_id).model
    if model is None or not tasks:
        return 0
    started = time.monotonic()
    config = config_from_meta(model.meta)
    runtime.pool(project_id, config.image_key).add(tasks)
    ids, scores, labels, skipped = score_tasks(project_id, tasks, runtime, model)
    pushed = runtime.publisher(project_id, config).add_tasks(Ranking.build(ids, scores, labels))
    logger.info("project %s: scored %d new tasks with %s, %d pushed at once (%d skipped) in %.1fs", project_id,
                len(ids), model.version, pushed, len(skipped), time.monotonic() - started)
    return pushed
