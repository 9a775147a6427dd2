"""Classification projects (Choices): one class per task, one feature row per task image.

The task kind's verbs (the same as backend/detection.py's; backend/task_kinds.py chooses one from
the label config): read a task's label, build the training rows, name the version's extra meta,
score tasks into a Ranking whose predictions pre-tick a class (backend/prefill.py) or nothing.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .annotations import LabeledTasks, TrainingRows, annotation_choice, task_label, usable_tasks
from .label_config import LabelConfig
from .prefill import prefill_labels, spare_likely_tail
from .ranking import ChoiceResults, Ranking, map_scores
from .validation import Skipped
from .weak_order import WEAK_ORDER_SENTENCES, fallback_scores, weak_order

if TYPE_CHECKING:
    from .context import Context

logger = logging.getLogger(__name__)


def score_features(miner, features: np.ndarray, transform: str) -> tuple[np.ndarray, np.ndarray]:
    """(scores in [0, 1], the miner's predicted class index) per feature row."""
    if len(features) == 0:
        return np.zeros(0), np.zeros(0, np.int32)
    scores = map_scores(miner.score_samples(features), miner.score_upper_bound, transform)
    labels = np.asarray(miner.predict_proba(features)).argmax(axis=1).astype(np.int32)
    return scores, labels


MAX_UNLABELED = 5000  # pool images a backbone learns from at one training (a seeded sample beyond)


def unlabeled_keys(project_id: int, context: "Context", labeled: LabeledTasks) -> list[tuple[int, str]]:
    """Cache keys of a seeded sample of the project's unlabeled tasks (listed from Label Studio at the
    first training; their images are downloaded now, as scoring would right after)."""
    config = labeled.config
    annotated = set(labeled.annotated_ids)
    tasks = sorted((t for t in context.pool_tasks(project_id, config.image_key) if t["id"] not in annotated),
                   key=lambda t: t["id"])
    if len(tasks) > MAX_UNLABELED:
        rng = np.random.default_rng([int(context.settings.seed), int(project_id)])
        tasks = [tasks[i] for i in sorted(rng.choice(len(tasks), MAX_UNLABELED, replace=False))]
    _ok, keys, _skipped = context.ingest.cached_arrays(project_id, tasks, config)
    return keys


class Classification:
    """The classification task kind."""

    name = "classification"
    row_name = "labeled tasks"   # what one labeled object is, in the logs
    label_name = "labels"        # ... in the reliability message
    heldout_supported = True     # the report's cross-validation (backend/report/heldout.py)

    def check_configured(self, context: "Context") -> None:
        """Nothing beyond the label config is needed."""

    def collect(self, project_id: int, config: LabelConfig, annotated: list[dict], skipped: Skipped) -> LabeledTasks:
        """Each annotated task's class (its most recent usable choice); unusable tasks are logged."""
        tasks, labels = usable_tasks(project_id, annotated, lambda task: task_label(task, config, skipped))
        return LabeledTasks(config, tasks, [config.class_index(label) for label in labels],
                            [t["id"] for t in annotated])

    def label_event(self, task: dict, annotations: list[dict], config: LabelConfig):
        """(the task's class, None, the annotations that chose a class) for the report, or None."""
        label, _reason = task_label(task, config)
        if label is None:
            return None
        return label, None, [a for a in annotations if annotation_choice(a, config) is not None]

    def training_rows(self, project_id: int, context: "Context", labeled: LabeledTasks) -> TrainingRows:
        """One row per labeled task whose image could be read (in the extractor's feature cache), and, for
        a backbone that learns from unlabeled images too (pool-cnn), up to MAX_UNLABELED pool images."""
        ok, keys, _skipped = context.ingest.cached_arrays(project_id, labeled.tasks, labeled.config)
        y = np.asarray([labeled.labels[i] for i in ok], dtype=np.int64)
        unlabeled = unlabeled_keys(project_id, context, labeled) if context.extractor.learns_from_unlabeled else []
        return TrainingRows(keys, y, y, len(labeled.config.classes), n_tasks=len(y), unlabeled_keys=unlabeled)

    def version_meta(self, settings, config: LabelConfig, miner) -> dict:
        """Nothing beyond what every version records."""
        return {}

    def weak_order_sentence(self, settings) -> str | None:
        """What the tab follows while the model is weak (MCM_WEAK_ORDER), for the reliability message."""
        return WEAK_ORDER_SENTENCES.get(settings.weak_order)

    def score_tasks(self, project_id: int, tasks: Sequence[dict], context: "Context", model, config: LabelConfig,
                    refresh: bool = False) -> tuple[Ranking, dict[int, str]]:
        """(Ranking, {skipped task id: reason}): each task image's score, and the class it pre-ticks."""
        ingest = context.ingest
        _ok, keys, skipped = ingest.cached_arrays(project_id, tasks, config)
        if not keys:
            return Ranking.build([], [], []), skipped
        ids = [k[0] for k in keys]
        features = ingest.features(project_id, keys, model=model)
        scores, labels = score_features(model.miner, features, context.settings.score_transform)
        order = weak_order(model, context.settings.weak_order)
        if order is not None:  # the model cannot tell the classes apart: an order that is no worse than random
            raw = fallback_scores(order, model.miner, features, ids, context.settings.seed)
            scores = map_scores(raw, 1.0, context.settings.score_transform)
        prefill = spare_likely_tail(prefill_labels(model, features, context.settings), model.miner, features)
        shown = ChoiceResults.of(ids, prefill)
        return Ranking.build(ids, scores, labels, shown), skipped
