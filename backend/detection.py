"""Object detection projects (RectangleLabels): box-level training rows, box features, image scores.

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
import threading
from typing import TYPE_CHECKING, Sequence

import numpy as np

from mcm_core.detection import box_scores, crop_box, image_scores, jittered_boxes, sample_background_boxes

from .candidates import Candidates, CandidateStore, DetectorCandidates, LabelStudioCandidates
from .ingest import image_keys
from .label_config import LabelConfig, LabelConfigError
from .regions import Region, TaskRegions

if TYPE_CHECKING:
    from .context import Context
    from .labels import LabeledTasks

logger = logging.getLogger(__name__)

# The decision module for box scores, chosen by the detection benchmark (docs/detection.md);
# MCM_MINER_OPTIONS {"strategy": ...} overrides it.
DETECTION_STRATEGY = "reconstruction"


class CropFeaturizer:
    """Box rows from the configured backbone (MCM_BACKBONE) on each box's square crop."""

    kind = None  # the extractor's own cache

    def __init__(self, extractor) -> None:
        self.extractor = extractor
        self.cache_kind = extractor.cache_kind
        self.trainable = extractor.trainable

    def prepare_boxes(self, image, boxes) -> list[np.ndarray]:
        return [self.extractor.prepare_one(crop_box(image, box)) for box in boxes]

    def to_cache(self, rows: np.ndarray) -> np.ndarray:
        return self.extractor.to_cache(rows)


class DetectorFeaturizer:
    """Box rows from a torchvision detector's box head (the features its classifier reads)."""

    trainable = False

    def __init__(self, detector) -> None:
        self.detector = detector
        self.cache_kind = self.kind = detector.cache_kind

    def prepare_boxes(self, image, boxes) -> list[np.ndarray]:
        return list(self.detector.box_features(image, np.asarray(boxes)))

    def to_cache(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(rows, np.float32)


class Detection:
    """The process's candidate source and box featurizer (from MCM_DETECTION_CANDIDATES)."""

    def __init__(self, settings, extractor) -> None:
        self.settings = settings
        self.source = None
        self.featurizer = CropFeaturizer(extractor)
        source = settings.candidate_source
        if source and source[0] == "torchvision":
            from mcm_core.detectors import TorchvisionDetector

            detector = TorchvisionDetector(source[1], settings.detector_weights, num_threads=settings.torch_threads)
            self.source = DetectorCandidates(detector)
            self.featurizer = DetectorFeaturizer(detector)
        elif source:
            self.source = LabelStudioCandidates(source[1], settings.pool_relist_seconds)
        self._stores: dict[int, CandidateStore] = {}
        self._lock = threading.Lock()

    def check_configured(self) -> None:
        """A detection project cannot be scored without candidates: say so when it connects."""
        if self.source is None:
            raise LabelConfigError("object detection (RectangleLabels) projects need a source of candidate "
                                   "detections: set MCM_DETECTION_CANDIDATES=label-studio:<model_version> (the "
                                   "predictions of your detector in Label Studio) or torchvision:<arch> on the "
                                   "backend (docs/detection.md)")

    def store(self, project_id: int) -> CandidateStore:
        with self._lock:
            store = self._stores.get(int(project_id))
            if store is None:
                path = f"{self.settings.project_dir(project_id)}/candidates/{self.source.name}.npz"
                store = self._stores[int(project_id)] = CandidateStore(path)
            return store

    def candidates(self, context: "Context", project_id: int, keys: Sequence[tuple[int, str]], config: LabelConfig,
                   refresh: bool = False) -> list[Candidates]:
        """Each (task id, url)'s candidates, fetched where missing (see backend/candidates.py)."""
        self.check_configured()
        store = self.store(project_id)
        self.source.fetch(context, project_id, store, keys, config, refresh=refresh)
        return [c if c is not None else Candidates(np.zeros((0, 4)), np.zeros(0)) for c in store.get(keys)]


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


def training_rows(project_id: int, context: "Context", labeled: "LabeledTasks",
                  ) -> tuple[list[tuple[int, str]], np.ndarray, np.ndarray]:
    """(cache keys, classes, object classes) of every training box of the labeled images whose image
    could be read; the background class is len(config.classes). Object classes (for counts and
    tail classes) are the annotated boxes' only."""
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
    box_keys, _skipped = context.ingest.cached_box_arrays(project_id, images, context.detection.featurizer)
    rows, y, gt = [], [], []
    for keys_, labels, found in zip(box_keys, classes, objects):
        if keys_ is not None:
            rows += keys_
            y.append(labels)
            gt.append(found)
    cat = lambda parts: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)  # noqa: E731
    return rows, cat(y), cat(gt)


def miner_options(settings) -> dict:
    """The box-level miner's options: the detection strategy unless MCM_MINER_OPTIONS names one; no
    queue re-ordering (it orders single examples; an image is a set of boxes)."""
    return {"strategy": DETECTION_STRATEGY, **settings.miner_kwargs, "queue_window": 0}


def score_detection_tasks(project_id: int, tasks: Sequence[dict], context: "Context", model, config: LabelConfig,
                          transform: str, refresh: bool = False):
    """(Ranking with regions, {skipped task id: reason}) of `tasks`: candidates -> box scores -> image scores."""
    from .scoring import Ranking, map_scores, prefill_labels

    settings, detection, miner = context.settings, context.detection, model.miner
    skipped: dict[int, str] = {}
    keys = [k for k in image_keys(tasks, config, skipped) if k is not None]
    candidates = detection.candidates(context, project_id, keys, config, refresh=refresh)
    with_boxes = [(k, c) for k, c in zip(keys, candidates) if len(c)]
    box_keys, failed = context.ingest.cached_box_arrays(
        project_id, [(k[0], k[1], c.boxes) for k, c in with_boxes], detection.featurizer)
    skipped.update(failed)
    scored = [(k, c, b) for (k, c), b in zip(with_boxes, box_keys) if b is not None]
    flat = [row for _, _, b in scored for row in b]
    n_classes = len(config.classes)
    if flat:
        features = context.ingest.features(project_id, flat, model=model, kind=detection.featurizer.kind)
        probs = miner.predict_proba(features)
        scores, bound = box_scores(miner, features, n_classes, probs=probs)
        box_labels = np.asarray(probs)[:, :n_classes].argmax(1)
        prefilled = prefill_labels(model, features, settings)  # -1: not pre-filled (background, unreliable)
    else:
        scores, bound, box_labels, prefilled = np.zeros(0), 1.0, np.zeros(0, np.int64), np.zeros(0, np.int32)
    offsets = np.concatenate([[0], np.cumsum([len(c) for _, c, _ in scored])]).astype(np.int64)
    confidences = np.concatenate([c.confidences for _, c, _ in scored] or [np.zeros(0)])
    scores = map_scores(image_scores(scores, confidences, offsets, settings.detection_top_k), bound, transform)
    regions, labels = {}, []
    for i, (key, cand, _) in enumerate(scored):
        rows = slice(offsets[i], offsets[i + 1])
        classes = prefilled[rows]
        shown = (cand.confidences >= settings.detection_region_min_confidence) & (classes >= 0) & (classes < n_classes)
        regions[key[0]] = Region(cand.boxes[shown], classes[shown], cand.confidences[shown], cand.size)
        labels.append(int(box_labels[rows][0]))  # the most confident candidate's class
    empty = [k[0] for k, c in zip(keys, candidates) if not len(c)]  # no candidate: nothing to mine, last
    ranking = Ranking.build([k[0] for k, _, _ in scored] + empty, np.concatenate([scores, np.zeros(len(empty))]),
                            labels + [-1] * len(empty), TaskRegions(regions))  # -1: no class predicted
    return ranking, skipped
