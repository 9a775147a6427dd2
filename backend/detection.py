"""Object detection projects (RectangleLabels): box-level training rows, box features, image scores.

The task kind's verbs are classification's (backend/classification.py; backend/task_kinds.py
chooses one from the label config); the process's candidate source and box featurizer are
backend/candidates.py's BoxSources.

The miner is the classification one, trained and applied at box level (docs/detection.md):
- training rows of an annotated image: its boxes with their class, imprecise copies of them
  (MCM_DETECTION_JITTERED_BOXES) with the same class, and background boxes
  (MCM_DETECTION_BACKGROUND_BOXES) as one more class: the classes a detector's classification head
  has, which the RC layer replaces. All are drawn deterministically per task, so their features
  stay cached across retrainings;
- box features: the configured backbone on the box crops (CropFeaturizer), or the box head of the
  torchvision detector that also proposes the candidates (DetectorFeaturizer);
- an unlabeled image's score: the mean box score (mcm_core.detection.box_scores: the miner's
  score, plus uncertainty x novelty until a tail class has a labeled box) of its top-K most
  confident candidates (backend/candidates.py; mcm_core.detection.image_scores), 0 without
  candidates; its prediction: the candidates above MCM_DETECTION_REGION_MIN_CONFIDENCE as
  RectangleLabels regions (backend/regions.py), each with the class of the version's pre-fill
  classifier (mcm_core.prefill) and only where that class's held-out precision allows it at the box's
  confidence: a box whose class is not reliable (or is the background) is left out of the pre-fill,
  while every candidate still counts for the image's score.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

import numpy as np

from mcm_core.detection import box_scores, cold_start_classes, image_scores, jittered_boxes, sample_background_boxes

from .annotations import LabeledTasks, TrainingRows, task_boxes, usable_tasks
from .ingest.pipeline import image_keys
from .label_config import LabelConfig
from .prefill import prefill_labels, spare_likely_tail
from .ranking import Ranking, map_scores
from .regions import Region, TaskRegions
from .validation import Skipped

if TYPE_CHECKING:
    from .context import Context

logger = logging.getLogger(__name__)

# The decision module for box scores, chosen by the detection benchmark (docs/detection.md);
# MCM_MINER_OPTIONS {"strategy": ...} overrides it.
DETECTION_STRATEGY = "reconstruction"


def training_boxes(task_id: int, objects, settings, background_class: int) -> tuple[np.ndarray, np.ndarray]:
    """(boxes, classes) trained on for one annotated image: its known boxes, their imprecise copies
    and background boxes, drawn from a generator seeded by (MCM_SEED, task id) so that the same
    annotation gives the same boxes (and cache keys) at every retraining."""
    rng = np.random.default_rng([int(settings.seed), int(task_id)])
    known = objects.classes >= 0
    gt, classes = objects.boxes[known], objects.classes[known]
    jit = jittered_boxes(gt, settings.detection_jittered_boxes, rng)
    background = sample_background_boxes(objects.boxes, settings.detection_background_boxes, rng)
    boxes = np.round(np.concatenate([gt, jit, background]), 4)
    labels = np.concatenate([classes, np.repeat(classes, settings.detection_jittered_boxes),
                             np.full(len(background), background_class)]).astype(np.int64)
    ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[ok], labels[ok]


class Detection:
    """The object detection task kind: the miner is trained and applied at box level."""

    name = "detection"
    row_name = "labeled boxes"
    label_name = "boxes"
    heldout_supported = False  # the report's cross-validation is per task image (backend/report/heldout.py)

    def check_configured(self, context: "Context") -> None:
        """A detection project needs a source of candidate boxes (MCM_DETECTION_CANDIDATES)."""
        context.boxes.check_configured()

    def collect(self, project_id: int, config: LabelConfig, annotated: list[dict], skipped: Skipped) -> LabeledTasks:
        """Each annotated image's boxes (its most recent non-cancelled annotation; none = no object)."""
        tasks, objects = usable_tasks(project_id, annotated, lambda task: task_boxes(task, config, skipped))
        for task, found in zip(tasks, objects):
            if (found.classes < 0).any():
                logger.warning("project %s: task %s: %d boxes with labels not in the config %s are not trained on",
                               project_id, task.get("id"), int((found.classes < 0).sum()), list(config.classes))
        return LabeledTasks(config, tasks, [], [t["id"] for t in annotated], objects)

    def label_event(self, task: dict, annotations: list[dict], config: LabelConfig):
        """(no single class, every box's class, every non-cancelled annotation) for the report, or None:
        any non-cancelled annotation labels an image, one without boxes too."""
        found, _reason = task_boxes(task, config)
        if found is None:
            return None
        objects = tuple(config.classes[c] for c in found.classes.tolist() if c >= 0)
        return "", objects, [a for a in annotations if not a.get("was_cancelled")]

    def training_rows(self, project_id: int, context: "Context", labeled: LabeledTasks) -> TrainingRows:
        """Every training box of the labeled images whose image could be read (annotated, jittered,
        background: the background class is len(config.classes)); the objects are the annotated boxes'
        classes only (for counts and tail classes)."""
        config = labeled.config
        skipped: dict[int, str] = {}
        keys = image_keys(labeled.tasks, config, skipped)
        images, classes, objects = [], [], []
        for key, found in zip(keys, labeled.objects):
            if key is None:
                continue
            boxes, labels = training_boxes(key[0], found, context.settings, len(config.classes))
            images.append((key[0], key[1], boxes))
            classes.append(labels)
            objects.append(found.classes[found.classes >= 0])
        box_keys, _skipped = context.ingest.cached_box_arrays(project_id, images, context.boxes.featurizer)
        rows, y, gt = [], [], []
        for keys_, labels, found in zip(box_keys, classes, objects):
            if keys_ is not None:
                rows += keys_
                y.append(labels)
                gt.append(found)
        cat = lambda parts: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)  # noqa: E731
        return TrainingRows(rows, cat(y), cat(gt), len(config.classes) + 1, context.boxes.featurizer.kind,
                            miner_options(context.settings), n_tasks=len(labeled.tasks))

    def weak_order_sentence(self, settings) -> str | None:
        """Detection keeps its box scores while weak (they add uncertainty x novelty until a tail class
        has a labeled box: the cold start)."""
        return None

    def version_meta(self, settings, config: LabelConfig, miner) -> dict:
        """The candidates and aggregation the version scores with; `cold_start_classes`: tail classes
        without a labeled box yet (box scores add uncertainty x novelty until one has)."""
        return {"candidates": settings.detection_candidates, "top_k": settings.detection_top_k,
                "background_class": len(config.classes),
                "cold_start_classes": [config.classes[k] for k in cold_start_classes(miner, len(config.classes))]}

    def score_tasks(self, project_id: int, tasks: Sequence[dict], context: "Context", model, config: LabelConfig,
                    refresh: bool = False) -> tuple[Ranking, dict[int, str]]:
        """(Ranking with regions, {skipped task id: reason}) of `tasks`: candidates -> box scores -> image
        scores. `refresh` (a training's re-scoring of the pool): candidates may be listed again."""
        settings, sources, miner = context.settings, context.boxes, model.miner
        skipped: dict[int, str] = {}
        keys = [k for k in image_keys(tasks, config, skipped) if k is not None]
        candidates = sources.candidates(context, project_id, keys, config, refresh=refresh)
        with_boxes = [(k, c) for k, c in zip(keys, candidates) if len(c)]
        box_keys, failed = context.ingest.cached_box_arrays(
            project_id, [(k[0], k[1], c.boxes) for k, c in with_boxes], sources.featurizer)
        skipped.update(failed)
        scored = [(k, c, b) for (k, c), b in zip(with_boxes, box_keys) if b is not None]
        flat = [row for _, _, b in scored for row in b]
        n_classes = len(config.classes)
        if flat:
            features = context.ingest.features(project_id, flat, model=model, kind=sources.featurizer.kind)
            probs = miner.predict_proba(features)
            scores, bound = box_scores(miner, features, n_classes, probs=probs)
            box_labels = np.asarray(probs)[:, :n_classes].argmax(1)
            # -1: not pre-filled (background, unreliable, or a common class on a box that looks rare)
            prefilled = spare_likely_tail(prefill_labels(model, features, settings), miner, features)
        else:
            scores, bound, box_labels, prefilled = np.zeros(0), 1.0, np.zeros(0, np.int64), np.zeros(0, np.int32)
        offsets = np.concatenate([[0], np.cumsum([len(c) for _, c, _ in scored])]).astype(np.int64)
        confidences = np.concatenate([c.confidences for _, c, _ in scored] or [np.zeros(0)])
        scores = map_scores(image_scores(scores, confidences, offsets, settings.detection_top_k), bound,
                            settings.score_transform)
        regions, labels = {}, []
        for i, (key, cand, _) in enumerate(scored):
            rows = slice(offsets[i], offsets[i + 1])
            classes = prefilled[rows]
            shown = (cand.confidences >= settings.detection_region_min_confidence) & (classes >= 0) \
                & (classes < n_classes)
            regions[key[0]] = Region(cand.boxes[shown], classes[shown], cand.confidences[shown], cand.size)
            labels.append(int(box_labels[rows][0]))  # the most confident candidate's class
        empty = [k[0] for k, c in zip(keys, candidates) if not len(c)]  # no candidate: nothing to mine, last
        ranking = Ranking.build([k[0] for k, _, _ in scored] + empty, np.concatenate([scores, np.zeros(len(empty))]),
                                labels + [-1] * len(empty), TaskRegions(regions))  # -1: no class predicted
        return ranking, skipped


def miner_options(settings) -> dict:
    """The box-level miner's options: the detection strategy unless MCM_MINER_OPTIONS names one; no
    queue re-ordering (it orders single examples; an image is a set of boxes)."""
    return {"strategy": DETECTION_STRATEGY, **settings.miner_kwargs, "queue_window": 0}
