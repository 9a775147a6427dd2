"""The training and re-scoring jobs, as plain importable functions.

`train_project(project_id, settings)` loads everything it needs from Label
Studio and MODEL_DIR and writes its results back, so it runs the same in a
background thread of the web process or as an RQ job in a worker process.
`score_task_chunk` scores one chunk of tasks; `rescore_project` pushes the
scores of every unlabeled task and switches `project.model_version`.
"""
from __future__ import annotations

import collections
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from . import ls_sync
from .annotations import task_label
from .label_config import ImageChoicesConfig, parse_label_config
from .runtime import LoadedModel, Runtime, get_runtime
from .scoring import predictions_for
from .settings import Settings

logger = logging.getLogger(__name__)

MIN_CLASSES = 2


class NotEnoughData(Exception):
    """Training skipped: too little labeled data (not an error)."""


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
    previous = state.model.version if state.model else None
    version = store.save(write_files, meta)
    meta = store.read_meta(version)
    model = LoadedModel(version=version, miner=miner, trained_backbone=trained_backbone, meta=meta)
    runtime.install(project_id, model)
    store.prune(keep=5)
    logger.info("project %s: trained model %s on %d tasks in %.1fs", project_id, version, len(y),
                time.monotonic() - started)
    if rescore:
        rescore_project(project_id, runtime=runtime, previous_version=previous)
    return version


def score_task_chunk(project_id: int, tasks: Sequence[dict], runtime: Runtime,
                     model: LoadedModel | None = None) -> tuple[list[dict], dict[int, str]]:
    """Predictions (with `task`) for the tasks of one chunk that could be scored, and the skipped ones."""
    model = model or runtime.project(project_id).model
    if model is None:
        return [], {}
    config = config_from_meta(model.meta)
    ok, keys, skipped = runtime.cached_arrays(project_id, tasks, config)
    if not keys:
        return [], skipped
    features = runtime.features(project_id, keys, model=model)
    predictions = predictions_for(model.miner, features, config, model.version,
                                  runtime.settings.score_transform, runtime.settings.score_direction)
    for prediction, key in zip(predictions, keys):
        prediction["task"] = key[0]
    return predictions, skipped


def rescore_project(project_id: int, settings: Settings | None = None, runtime: Runtime | None = None,
                    previous_version: str | None = None) -> int:
    """Score every unlabeled task, push in checked chunks, switch model_version, drop the old version."""
    runtime = runtime or get_runtime(settings or Settings.from_env())
    state = runtime.project(project_id)
    model = state.model
    if model is None:
        logger.info("project %s: nothing to re-score: no trained model yet", project_id)
        return 0
    started = time.monotonic()
    client = runtime.ls_client()
    tasks = ls_sync.list_unlabeled_tasks(client, project_id)
    listed = time.monotonic()
    chunk = runtime.settings.predict_chunk
    pushed = 0
    n_skipped = 0
    score_seconds = 0.0
    # Scoring of the next block overlaps with pushing the previous one (one push in flight).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mcm-push-{project_id}") as pusher:
        pending = None
        for start in range(0, len(tasks), chunk * 10):
            t0 = time.monotonic()
            predictions, skipped = score_task_chunk(project_id, tasks[start:start + chunk * 10], runtime, model)
            score_seconds += time.monotonic() - t0
            n_skipped += len(skipped)
            if pending is not None:
                pushed += pending.result()
            pending = pusher.submit(ls_sync.push_predictions, client, project_id, predictions, chunk)
        if pending is not None:
            pushed += pending.result()
    ls_sync.set_model_version(client, project_id, model.version)
    if previous_version and previous_version != model.version:
        try:
            ls_sync.delete_model_version(client, project_id, previous_version)
        except Exception as exc:  # stale predictions are harmless: they no longer count for sorting
            logger.warning("project %s: could not delete predictions of %s: %s", project_id, previous_version, exc)
    state.n_scored = pushed
    runtime.store(project_id).record_scoring(model.version, pushed)
    logger.info("project %s: re-scored %d unlabeled tasks with %s (%d skipped) in %.1fs (listing %.1fs, "
                "scoring %.1fs, rest pushing/waiting %.1fs)", project_id, pushed, model.version, n_skipped,
                time.monotonic() - started, listed - started, score_seconds,
                time.monotonic() - listed - score_seconds)
    return pushed


def score_and_push_tasks(project_id: int, tasks: Sequence[dict], settings: Settings | None = None,
                         runtime: Runtime | None = None) -> int:
    """Score newly created tasks with the current model and push them (TASKS_CREATED webhook).

    Without this, tasks imported after a training would have no score, and so
    no place in the tail-first order, until the next training.
    """
    runtime = runtime or get_runtime(settings or Settings.from_env())
    model = runtime.project(project_id).model
    if model is None or not tasks:
        return 0
    started = time.monotonic()
    predictions, skipped = score_task_chunk(project_id, tasks, runtime, model)
    pushed = ls_sync.push_predictions(runtime.ls_client(), project_id, predictions, runtime.settings.predict_chunk)
    logger.info("project %s: scored %d new tasks with %s (%d skipped) in %.1fs", project_id, pushed, model.version,
                len(skipped), time.monotonic() - started)
    return pushed
