"""Fitting a new version: labels from Label Studio -> features -> MinorityMiner -> a saved version.

`train_project(project_id, context)` reads everything it needs from Label Studio and
MODEL_DIR and writes its result back, so it runs the same in a background thread of
the web process or as an RQ job. The previous model stays in place until the new
one is completely saved (backend/versions.py); publishing it is backend/refresh.py's.
"""
from __future__ import annotations

import collections
import logging
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from mcm_core.tails import TailSet

from .label_config import LabelConfig
from .labels import LabeledTasks, collect_labels
from .settings import Settings
from .versions import LoadedModel

if TYPE_CHECKING:
    from .context import Context

logger = logging.getLogger(__name__)

MIN_CLASSES = 2


def train_project(project_id: int, context: "Context", rescore: bool = True) -> str | None:
    """Train project `project_id` from its annotations; returns the new version, or None when there
    are too few labeled classes. With `rescore`, the new version is published at once."""
    project_id = int(project_id)
    started = time.monotonic()
    state = context.projects.get(project_id)
    labeled = collect_labels(context.client(), project_id, state.skipped)
    config = state.config = labeled.config
    kind, options = None, None
    if config.detection:  # box-level rows: annotated boxes, their imprecise copies, background (one more class)
        from .detection import miner_options, training_rows

        context.detection.check_configured()
        keys, y, objects = training_rows(project_id, context, labeled)
        kind, options = context.detection.featurizer.kind, miner_options(context.settings)
        n_classes = len(config.classes) + 1
    else:
        _ok, keys, _skipped = context.ingest.cached_arrays(project_id, labeled.tasks, config)
        y = objects = np.asarray([labeled.labels[i] for i in _ok], dtype=np.int64)
        n_classes = len(config.classes)
    counts = collections.Counter(config.classes[i] for i in objects.tolist())
    what = "labeled boxes" if config.detection else "labeled tasks"
    if len(counts) < MIN_CLASSES:
        logger.info("project %s: training skipped: %d usable %s in %d class(es) %s; need at least %d classes",
                    project_id, len(objects), what, len(counts), dict(counts), MIN_CLASSES)
        return None
    logger.info("project %s: training on %d %s (%s) of %d annotated tasks (%d training rows), backbone %s",
                project_id, len(objects), what, dict(counts), len(labeled.annotated_ids), len(y),
                context.settings.backbone)
    tail = project_tail(project_id, config, objects)
    miner, trained_backbone = fit_miner(project_id, context, keys, y, n_classes, kind, options, tail.classes)
    meta = version_meta(project_id, labeled, objects, counts, context.settings, tail)
    if config.detection:  # no tail class has a labeled box yet: box scores add uncertainty x novelty
        from mcm_core.detection import cold_start_classes

        meta["cold_start_classes"] = [config.classes[k] for k in cold_start_classes(miner, len(config.classes))]
    previous_labels = int(state.model.meta.get("n_labeled", 0)) if state.model else 0
    version = save_version(project_id, context, miner, trained_backbone, meta, started)
    context.pool(project_id, labeled.config.image_key).remove(labeled.annotated_ids)  # not in the queue any more
    logger.info("project %s: trained model %s on %d %s in %.1fs", project_id, version, len(objects), what,
                time.monotonic() - started)
    if meta.get("cold_start_classes"):
        logger.info("project %s: cold start: no labeled box of the tail classes %s yet; box scores add uncertainty "
                    "x novelty until one has (docs/detection.md)", project_id, meta["cold_start_classes"])
    if rescore:
        from .refresh import refresh_project

        refresh_project(project_id, context, new_labels=len(objects) - previous_labels)
    return version


def project_tail(project_id: int, config: LabelConfig, objects: np.ndarray) -> TailSet:
    """The tail classes of a new version (LabelConfig.tail_set), logged with the rule that chose them.
    One set for the miner, the queue, the report and the held-out evaluation (they read the meta)."""
    tail = config.tail_set(objects)
    if config.declared_tail and not tail.declared:
        logger.warning("project %s: every labeled class is declared tail (%s); the declaration waits until a head "
                       "class has labels", project_id, list(config.declared_tail))
    logger.info("project %s: tail classes %s (%s)", project_id, [config.classes[k] for k in tail.classes],
                tail.describe(config.classes))
    return tail


def fit_miner(project_id: int, context: "Context", keys, y: np.ndarray, num_classes: int, kind: str | None = None,
              options: dict | None = None, tail_classes: tuple[int, ...] | None = None):
    """(fitted MinorityMiner, the trained simple-cnn or None) on the cached rows `keys` (of the cache
    `kind`: None = the extractor's; a detector's box features are frozen)."""
    from mcm_core import MinorityMiner

    settings, trained_backbone = context.settings, None
    if context.extractor.trainable and kind is None:
        t0 = time.monotonic()
        images = context.ingest.cache(project_id).get(keys)
        trained_backbone = context.extractor.train(images, y, num_classes=num_classes, seed=settings.seed)
        logger.info("project %s: trained %s on %d images in %.1fs", project_id, settings.backbone, len(y),
                    time.monotonic() - t0)
    features = context.ingest.features(project_id, keys, trained_backbone=trained_backbone, kind=kind)
    t0 = time.monotonic()
    options = settings.miner_kwargs if options is None else options
    miner = MinorityMiner(num_classes=num_classes, seed=settings.seed, **options).fit(features, y, tail_classes)
    logger.info("project %s: fitted miner on %d x %d features in %.1fs", project_id, *features.shape,
                time.monotonic() - t0)
    return miner, trained_backbone


def version_meta(project_id: int, labeled: LabeledTasks, y: np.ndarray, counts: collections.Counter,
                 settings: Settings, tail: TailSet) -> dict:
    """meta.json of a new version: what it was trained on and how to read tasks and write predictions.
    `y`: the class of each labeled task, or of each annotated box (detection)."""
    config = labeled.config
    names = config.classes
    detection = {"candidates": settings.detection_candidates, "top_k": settings.detection_top_k,
                 "background_class": len(config.classes)} if config.detection else {}
    return {
        "project": project_id, "kind": config.kind, **detection,
        "classes": list(config.classes), "image_key": config.image_key,
        "image_name": config.image_name, "control_name": config.control_name, "backbone": settings.backbone,
        "n_labeled": int(len(y)), "n_annotated_tasks": len(labeled.annotated_ids),
        "n_skipped": len(labeled.annotated_ids) - len(labeled.tasks if config.detection else y),
        "labeled_per_class": {c: int(counts.get(c, 0)) for c in config.classes},
        "tail_classes": [names[k] for k in tail.classes], "tail_declared": [names[k] for k in tail.declared],
        "tail_counted": [names[k] for k in tail.counted], "tail_rule": tail.describe(names),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seed": settings.seed,
    }


def save_version(project_id: int, context: "Context", miner, trained_backbone, meta: dict, started: float) -> str:
    """Write the version atomically, make it this process's current model, prune old ones."""
    def write_files(directory: str) -> dict:
        miner.save(os.path.join(directory, "miner.pt"))
        if trained_backbone is not None:
            trained_backbone.save(os.path.join(directory, "backbone.pt"))
        return {"train_seconds": round(time.monotonic() - started, 3), "trained_backbone": trained_backbone is not None}

    store = context.projects.store(project_id)
    version = store.save(write_files, meta)
    context.projects.install(project_id, LoadedModel(version=version, miner=miner, trained_backbone=trained_backbone,
                                                     meta=store.read_meta(version)))
    store.prune(keep=5)
    return version
