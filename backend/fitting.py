"""Fitting a new version: labels from Label Studio -> features -> MinorityMiner (and the checked pre-fill
classifier, mcm_core.prefill) -> a saved version.

`train_project(project_id, context)` reads everything it needs from Label Studio and
MODEL_DIR and writes its result back, so it runs the same in a background thread of
the web process or as an RQ job. The previous model stays in place until the new
one is completely saved (backend/versions.py); publishing it is backend/refresh.py's (the task kind's
verbs, backend/task_kinds.py, give the training rows and the kind's part of the meta).
"""
from __future__ import annotations

import collections
import logging
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from mcm_core import MinorityMiner
from mcm_core.prefill import MAX_FIT_ROWS, PrefillClassifier, fit_prefill as fit, stratified_subsample
from mcm_core.tails import TailSet

from .annotations import LabeledTasks, TrainingRows
from .label_config import LabelConfig
from .labels import collect_labels
from .refresh import refresh_project
from .settings import Settings
from .task_kinds import kind_of
from .versions import PREFILL_FILE, LoadedModel, counted_tail_names

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
    kind = kind_of(config)
    kind.check_configured(context)
    rows = kind.training_rows(project_id, context, labeled)
    counts = collections.Counter(config.classes[i] for i in rows.objects.tolist())
    if len(counts) < MIN_CLASSES:
        logger.info("project %s: training skipped: %d usable %s in %d class(es) %s; need at least %d classes",
                    project_id, len(rows.objects), kind.row_name, len(counts), dict(counts), MIN_CLASSES)
        return None
    logger.info("project %s: training on %d %s (%s) of %d annotated tasks (%d training rows), backbone %s",
                project_id, len(rows.objects), kind.row_name, dict(counts), len(labeled.annotated_ids), len(rows.y),
                context.settings.backbone)
    tail = project_tail(project_id, config, rows.objects, state.model.meta if state.model else {})
    unlabeled = context.ingest.cache(project_id).get(rows.unlabeled_keys) if rows.unlabeled_keys else None
    miner, trained_backbone, features = fit_miner(project_id, context, rows.keys, rows.y, rows.n_classes,
                                                  rows.cache_kind, rows.options, tail.classes, unlabeled)
    learned = learned_fold_features(project_id, context, rows.keys, rows.y, rows.n_classes, unlabeled) \
        if trained_backbone is not None else None
    prefill, checked = fit_prefill(project_id, context.settings, features, rows, config, kind.label_name, counts,
                                   learned, previous=state.model, weak_order=kind.weak_order_sentence(context.settings))
    meta = {**version_meta(project_id, labeled, rows, counts, context.settings, tail),
            **kind.version_meta(context.settings, config, miner), **checked}
    previous_labels = int(state.model.meta.get("n_labeled", 0)) if state.model else 0
    version = save_version(project_id, context, miner, trained_backbone, meta, started, prefill)
    context.pool(project_id, labeled.config.image_key).remove(labeled.annotated_ids)  # not in the queue any more
    logger.info("project %s: trained model %s on %d %s in %.1fs", project_id, version, len(rows.objects),
                kind.row_name, time.monotonic() - started)
    if meta.get("cold_start_classes"):
        logger.info("project %s: cold start: no labeled box of the tail classes %s yet; box scores add uncertainty "
                    "x novelty until one has (docs/detection.md)", project_id, meta["cold_start_classes"])
    if rescore:
        refresh_project(project_id, context, new_labels=len(rows.objects) - previous_labels)
    return version


def project_tail(project_id: int, config: LabelConfig, objects: np.ndarray, previous_meta: dict) -> TailSet:
    """The tail classes of a new version (LabelConfig.tail_set, which keeps the previous version's counted
    classes while they have fewer labels than an average class), logged with the rule that chose them.
    One set for the miner, the queue, the report and the held-out evaluation (they read the meta)."""
    tail = config.tail_set(objects, counted_tail_names(previous_meta))
    if config.declared_tail and not tail.declared:
        logger.warning("project %s: every labeled class is declared tail (%s); the declaration waits until a head "
                       "class has labels", project_id, list(config.declared_tail))
    logger.info("project %s: tail classes %s (%s)", project_id, [config.classes[k] for k in tail.classes],
                tail.describe(config.classes))
    return tail


def fit_miner(project_id: int, context: "Context", keys, y: np.ndarray, num_classes: int, kind: str | None = None,
              options: dict | None = None, tail_classes: tuple[int, ...] | None = None,
              unlabeled: np.ndarray | None = None):
    """(fitted MinorityMiner, the trained simple-cnn or None, the feature rows) on the cached rows `keys`
    (of the cache `kind`: None = the extractor's; a detector's box features are frozen). `unlabeled`:
    prepared pool images for a backbone that learns from them too (pool-cnn)."""
    settings, trained_backbone = context.settings, None
    if context.extractor.trainable and kind is None:
        t0 = time.monotonic()
        images = context.ingest.cache(project_id).get(keys)
        trained_backbone = context.extractor.train(images, y, num_classes=num_classes, seed=settings.seed,
                                                   unlabeled=unlabeled)
        logger.info("project %s: trained %s on %d images (+%d unlabeled) in %.1fs", project_id, settings.backbone,
                    len(y), len(unlabeled) if unlabeled is not None and context.extractor.learns_from_unlabeled
                    else 0, time.monotonic() - t0)
    features = context.ingest.features(project_id, keys, trained_backbone=trained_backbone, kind=kind)
    t0 = time.monotonic()
    options = settings.miner_kwargs if options is None else options
    miner = MinorityMiner(num_classes=num_classes, seed=settings.seed, **options).fit(features, y, tail_classes)
    logger.info("project %s: fitted miner on %d x %d features in %.1fs", project_id, *features.shape,
                time.monotonic() - t0)
    return miner, trained_backbone, features


def learned_fold_features(project_id: int, context: "Context", keys, y: np.ndarray, num_classes: int,
                          unlabeled: np.ndarray | None = None):
    """mcm_core.prefill's `fold_features` for a trainable backbone (simple-cnn): a CNN trained on the
    fold's training rows only gives the features of both sides. The CNN of the version has seen every
    labeled row, so cross-validating on its features measures memory, not accuracy: on images of pure
    noise it found 100 % held-out precision and pre-filled coin flips. Bounded: mcm_core.prefill's
    LEARNED_FOLDS CNNs on at most LEARNED_MAX_CV_ROWS rows (about 20 s on one core at most)."""
    settings, extractor, cache = context.settings, context.extractor, context.ingest.cache(project_id)

    def fold_features(train: np.ndarray, held_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images, held = cache.get([keys[i] for i in train]), cache.get([keys[i] for i in held_out])
        # a backbone that learns from unlabeled images sees the held-out fold's too, never its labels
        pool = None if unlabeled is None else np.concatenate([unlabeled, held])
        cnn = extractor.train(images, y[train], num_classes=num_classes, seed=settings.seed, unlabeled=pool)
        return extractor.features(images, cnn), extractor.features(held, cnn)
    return fold_features


# The pre-fill check (a cross-validation; with simple-cnn one CNN per fold: 10-25 s) reruns when the labels
# grew by RECHECK_GROWTH since the last check or it is older than RECHECK_SECONDS; in between, a retraining
# (every ~30 s while a team labels) refits the classifier and keeps the last check's thresholds.
RECHECK_GROWTH = 1.1
RECHECK_SECONDS = 600.0


def reusable_check(previous: LoadedModel | None, names: list[str], n_labeled: int) -> dict | None:
    """The previous version's pre-fill check when it still holds for `n_labeled` labels of `names`."""
    meta = previous.meta if previous is not None else {}
    check, reliability = meta.get("prefill"), meta.get("reliability")
    if not isinstance(check, dict) or not isinstance(reliability, dict) or not isinstance(check.get("classes"), dict):
        return None
    checked_at, checked_labels = check.get("checked_at"), check.get("n_labeled_checked")
    if list(check["classes"]) != names or not isinstance(checked_at, (int, float)) \
            or not isinstance(checked_labels, int) or n_labeled > RECHECK_GROWTH * checked_labels \
            or not 0 <= time.time() - checked_at <= RECHECK_SECONDS:
        return None
    return check


def fit_prefill(project_id: int, settings: Settings, features: np.ndarray, rows: TrainingRows, config: LabelConfig,
                label_name: str, counts: collections.Counter, fold_features=None, previous: LoadedModel | None = None,
                weak_order: str | None = None):
    """(PrefillClassifier, meta entries "prefill" and "reliability"): the classifier a prediction's
    pre-ticked class comes from, which classes its held-out precision allows (mcm_core.prefill), and
    whether the features separate the classes at all.

    The classifier is fitted on the miner's features (one per training row of `rows`).
    `fold_features` (simple-cnn: learned_fold_features) gives the cross-validation features learned
    without each fold. Rows are grouped by task id, so a detection image's boxes share a fold (its
    jittered copies of a box would otherwise be "held out" beside the original). Outputs beyond the
    config's classes (detection's background) are never pre-filled. `counts`: labeled tasks (boxes)
    per class name; `label_name`: what they are called ("labels", "boxes"); `weak_order`: the sentence
    saying what the tab follows while the model is weak (the task kind's)."""
    t0 = time.monotonic()
    names = list(config.classes)
    y, groups, n_outputs = rows.y, [k[0] for k in rows.keys], rows.n_classes
    n_labeled = int(sum(counts.values()))
    check = reusable_check(previous, names, n_labeled)
    if check is not None:  # refit the classifier on this version's features, keep the checked thresholds
        sample = stratified_subsample(y, MAX_FIT_ROWS, settings.seed, groups)
        clf = PrefillClassifier(n_outputs, settings.seed).fit(features[sample], y[sample])
        clf.thresholds_ = np.array([c["threshold"] if c.get("prefill") and c.get("threshold") is not None
                                    else np.inf for c in check["classes"].values()] + [np.inf] * (n_outputs - len(names)))
        logger.info("project %s: pre-fill check of version %s kept (%d labels then, %d now; rechecked at +%d%% or "
                    "after %ds): pre-filled %s", project_id, previous.version, check["n_labeled_checked"], n_labeled,
                    round(100 * (RECHECK_GROWTH - 1)), RECHECK_SECONDS, check.get("prefilled") or "none")
        return clf, {"prefill": {**check, "kept_from": check.get("kept_from") or previous.version},
                     "reliability": previous.meta["reliability"]}
    clf, assessment = fit(features, y, n_outputs, seed=settings.seed, groups=groups, eligible=range(len(names)),
                          fold_features=fold_features)
    verdicts = {name: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in c.as_dict().items()}
                for name, c in zip(names, assessment.classes)}
    prefilled = [name for name, c in verdicts.items() if c["prefill"]]
    reliability = reliability_meta(assessment, [int(counts.get(n, 0)) for n in names], names,
                                   fold_features is not None, label_name, weak_order)
    logger.info("project %s: pre-fill check (%d-fold cross-validation on %d labeled rows, %.1fs): pre-filled %s; "
                "not pre-filled: %s", project_id, assessment.folds, assessment.n_rows, time.monotonic() - t0,
                prefilled or "none", "; ".join(f"{n}: {c['reason']}" for n, c in verdicts.items()
                                               if not c["prefill"]) or "none")
    log = logger.info if reliability["verdict"] == "ok" else logger.warning
    log("project %s: reliability %s: %s", project_id, reliability["verdict"], reliability["message"])
    return clf, {"prefill": {"classes": verdicts, "prefilled": prefilled, "folds": assessment.folds,
                             "n_rows": assessment.n_rows, "min_precision": assessment.min_precision,
                             "min_support": assessment.min_support, "checked_at": round(time.time(), 3),
                             "n_labeled_checked": n_labeled},
                 "reliability": reliability}


LABELS_PER_CLASS_HINT = 20  # "N more labels": what it takes to give every class this many


def reliability_meta(assessment, counts: list[int], names: list[str], learned_features: bool,
                     what: str = "labels", weak_order: str | None = None) -> dict:
    """meta "reliability": do the features separate the classes (held-out accuracy against the
    majority-class rate), with one sentence saying what would help. `counts`: labeled tasks (boxes)
    of each class; `learned_features`: the features come from a CNN trained on these labels only;
    `what`: what the labeled objects are called ("labels", "boxes"); `weak_order`: what the tab
    follows while the verdict is weak (one sentence, appended to the message)."""
    sep = assessment.separation
    n_labeled = int(sum(counts))
    short = [(n, c) for n, c in zip(names, counts) if c < LABELS_PER_CLASS_HINT]
    listed = ", ".join(n for n, _ in short[:8]) + (", ..." if len(short) > 8 else "")
    more = (f"{sum(LABELS_PER_CLASS_HINT - c for _, c in short)} more {what} ({len(short)} class(es) have fewer "
            f"than {LABELS_PER_CLASS_HINT}: {listed})" if short else f"more {what} of the classes it confuses")
    helps = (f"a backbone that fits your images (MCM_BACKBONE=resnet18 for photos, pool-cnn for glyphs, icons, "
             f"shapes or textures in any colours; the current one learns its features from these {n_labeled} "
             f"{what} alone) and {more}") if learned_features else more
    if sep.accuracy is None:
        message = (f"Only {n_labeled} labeled {what}: too few to check whether the features separate the classes; "
                   f"nothing is pre-filled. What would help: {helps}.")
    elif sep.separated:
        message = (f"The features separate the classes: held-out accuracy {sep.accuracy:.0%} against "
                   f"{sep.majority_rate:.0%} for always answering the most common class.")
    else:
        message = (f"The features do not separate the classes well: held-out accuracy {sep.accuracy:.0%} against "
                   f"{sep.majority_rate:.0%} for always answering the most common class, so nothing is pre-filled "
                   f"and the mining scores are weak too. What would help: {helps}.")
    if not sep.separated and weak_order:
        message += " " + weak_order
    return {"verdict": "ok" if sep.separated else "weak",
            "heldout_accuracy": None if sep.accuracy is None else round(sep.accuracy, 4),
            "majority_rate": None if sep.majority_rate is None else round(sep.majority_rate, 4),
            "n_heldout": assessment.n_rows, "message": message}


def version_meta(project_id: int, labeled: LabeledTasks, rows: TrainingRows, counts: collections.Counter,
                 settings: Settings, tail: TailSet) -> dict:
    """meta.json of a new version: what it was trained on and how to read tasks and write predictions
    (the task kind adds its part: backend/task_kinds.py)."""
    config = labeled.config
    names = config.classes
    return {
        "project": project_id, "kind": config.kind,
        "classes": list(config.classes), "image_key": config.image_key,
        "image_name": config.image_name, "control_name": config.control_name, "backbone": settings.backbone,
        "n_labeled": int(len(rows.objects)), "n_annotated_tasks": len(labeled.annotated_ids),
        "n_skipped": len(labeled.annotated_ids) - rows.n_tasks,
        "labeled_per_class": {c: int(counts.get(c, 0)) for c in config.classes},
        "tail_classes": [names[k] for k in tail.classes], "tail_declared": [names[k] for k in tail.declared],
        "tail_counted": [names[k] for k in tail.counted], "tail_rule": tail.describe(names),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seed": settings.seed,
    }


def save_version(project_id: int, context: "Context", miner, trained_backbone, meta: dict, started: float,
                 prefill=None) -> str:
    """Write the version atomically (miner, trained CNN, pre-fill classifier, meta), make it this
    process's current model, prune old ones."""
    def write_files(directory: str) -> dict:
        miner.save(os.path.join(directory, "miner.pt"))
        if trained_backbone is not None:
            trained_backbone.save(os.path.join(directory, "backbone.pt"))
        if prefill is not None:
            prefill.save(os.path.join(directory, PREFILL_FILE))
        return {"train_seconds": round(time.monotonic() - started, 3), "trained_backbone": trained_backbone is not None}

    store = context.projects.store(project_id)
    version = store.save(write_files, meta)
    context.projects.install(project_id, LoadedModel(version=version, miner=miner, trained_backbone=trained_backbone,
                                                     meta=store.read_meta(version), prefill=prefill))
    store.prune(keep=5)
    return version
