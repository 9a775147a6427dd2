"""Candidate detections of unlabeled images: the d_j (box, confidence s_j) an image score is built from,
and the features of boxes (BoxSources: the process's source and featurizer, built by the Context).

Two sources (MCM_DETECTION_CANDIDATES):
- `label-studio:<model_version>` (LabelStudioCandidates): the RectangleLabels predictions that
  another model version already has in Label Studio: a team's own detector (a YOLO backend, or
  imported pre-annotations). Each region's `score` is its confidence (else the prediction's
  `score`, else 1). Every user can use it.
- `torchvision:<arch>` (DetectorCandidates): a torchvision Faster R-CNN run here
  (mcm_core.detectors, weights in MCM_DETECTOR_WEIGHTS); its box-head features are cached with the
  boxes, so scoring needs no second pass.
Candidates are kept per (task id, image URL) in MODEL_DIR/<project>/candidates/<source>.npz, so a
retraining re-scores the pool without asking Label Studio or the detector again. Label Studio's
candidates are listed again at most every MCM_POOL_RELIST_SECONDS (a team's detector may have
added predictions meanwhile).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
from typing import Sequence

import numpy as np

from mcm_core.atomic import atomic_savez
from mcm_core.detection import crop_box
from mcm_core.detectors import TorchvisionDetector

from .boxes import box_key, checked_image_size, rectangle
from .label_config import LabelConfig, LabelConfigError
from .labelstudio import client as labelstudio
from .validation import Skipped, finite_number, image_side, short

logger = logging.getLogger(__name__)

MAX_CANDIDATES = 100   # per image, the most confident: bounds memory and scoring time
FULL_LISTING_MIN = 1000  # missing tasks from which one listing of the whole version beats asking by id
Key = tuple[int, str]


@dataclasses.dataclass
class Candidates:
    """One image's candidate detections: boxes (n, 4) fractions, confidences (n,), image size."""

    boxes: np.ndarray
    confidences: np.ndarray
    size: tuple[int, int] = (0, 0)

    @classmethod
    def build(cls, boxes, confidences, size=(0, 0)) -> tuple["Candidates", np.ndarray]:
        """(the candidates, the rows of the input they are): most confident first, at most
        MAX_CANDIDATES, coordinates rounded as in the cache keys, empty boxes dropped."""
        b = np.round(np.asarray(boxes, np.float64).reshape(-1, 4), 4)
        c = np.clip(np.nan_to_num(np.asarray(confidences, np.float64).reshape(-1)), 0.0, 1.0)
        rows = np.flatnonzero((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]))
        rows = rows[np.argsort(-c[rows], kind="stable")[:MAX_CANDIDATES]]
        width, height = image_side(size[0]), image_side(size[1])
        return cls(b[rows], c[rows], (width, height) if width and height else (0, 0)), rows

    def __len__(self) -> int:
        return len(self.boxes)


EMPTY = Candidates(np.zeros((0, 4)), np.zeros(0))


def _confidence(value, default: float) -> float:
    number = finite_number(value)
    return default if number is None else number


def from_predictions(predictions: Sequence[dict], control_name: str, skipped: Skipped | None = None,
                     task_id: int | None = None) -> Candidates:
    """The RectangleLabels regions of `predictions` (one model version's, on one task) for our control.
    A prediction or region that is not one, and an unusable image size, are skipped and counted in
    `skipped` (the project's)."""
    boxes, conf, size = [], [], (0, 0)

    def skip(kind: str, reason: str) -> None:
        if skipped is not None:
            skipped.add(kind, task_id, reason)

    for prediction in predictions:
        result = prediction.get("result") if isinstance(prediction, dict) else None
        if not isinstance(result, list):
            skip("predictions", f"a prediction must be an object whose 'result' is a list of regions, got "
                                f"{short(prediction)}")
            continue
        default = _confidence(prediction.get("score"), 1.0)
        for region in result:
            if isinstance(region, dict) and region.get("from_name") != control_name:
                continue
            box, problem = rectangle(region)
            if problem:
                skip("regions", problem)
                continue
            region_size, size_problem = checked_image_size(region)
            if size_problem:
                skip("image_sizes", size_problem)
            boxes.append(box)
            conf.append(_confidence(region.get("score"), default))
            size = region_size if size == (0, 0) else size
    return Candidates.build(boxes, conf, size)[0]


class CandidateStore:
    """{(task id, url): Candidates} of one source, persisted atomically (thread-safe)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.listed_at: float | None = None
        self._items: dict[Key, Candidates] = {}
        self._lock = threading.Lock()
        self._read()

    def _read(self) -> None:
        try:
            with np.load(self.path, allow_pickle=False) as data:
                ids, urls, offsets = data["task_ids"], data["urls"], data["offsets"]
                boxes, conf, sizes = data["boxes"], data["confidences"], data["sizes"]
                listed = float(data["listed_at"])
        except (OSError, ValueError, KeyError):
            return  # none yet, or unreadable: asked again
        for i, key in enumerate(zip(ids.tolist(), urls.tolist())):
            a, b = int(offsets[i]), int(offsets[i + 1])
            self._items[(int(key[0]), str(key[1]))] = Candidates(boxes[a:b].astype(np.float64),
                                                                 conf[a:b].astype(np.float64), tuple(sizes[i]))
        self.listed_at = listed or None

    def _write(self) -> None:
        keys = list(self._items)
        items = [self._items[k] for k in keys]
        offsets = np.concatenate([[0], np.cumsum([len(c) for c in items])]).astype(np.int64)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        atomic_savez(self.path, task_ids=np.asarray([k[0] for k in keys], np.int64),
                     urls=np.asarray([k[1] for k in keys], dtype=str), offsets=offsets,
                     boxes=np.concatenate([c.boxes for c in items] or [np.zeros((0, 4))]).astype(np.float32),
                     confidences=np.concatenate([c.confidences for c in items] or [np.zeros(0)]).astype(np.float32),
                     sizes=np.asarray([c.size for c in items], np.int64).reshape(-1, 2),
                     listed_at=np.float64(self.listed_at or 0.0))

    def get(self, keys: Sequence[Key]) -> list[Candidates | None]:
        with self._lock:
            return [self._items.get(k) for k in keys]

    def update(self, found: dict[Key, Candidates], listed_at: float | None = None) -> None:
        with self._lock:
            self._items.update(found)
            if listed_at is not None:
                self.listed_at = listed_at
            try:
                self._write()
            except OSError as exc:  # a full disk costs a re-fetch later, not the scores
                logger.warning("cannot write the candidate store %s: %s", self.path, exc)


class LabelStudioCandidates:
    """Candidates from another model version's predictions in Label Studio."""

    def __init__(self, version: str, relist_seconds: float) -> None:
        self.version = version
        self.relist_seconds = relist_seconds
        self.name = "label-studio-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", version)[:80]

    def fetch(self, context, project_id: int, store: CandidateStore, keys: Sequence[Key], config,
              refresh: bool = False) -> None:
        """Ask Label Studio for the candidates of `keys` the store lacks (tasks without a prediction of
        the version get none): the whole version at the first time, for many tasks, or with `refresh`
        (a training) when the last listing is older than MCM_POOL_RELIST_SECONDS; else by task id."""
        missing = [k for k, c in zip(keys, store.get(keys)) if c is None]
        now = time.time()
        stale = store.listed_at is None or now - store.listed_at >= self.relist_seconds
        if not missing and not (refresh and stale):
            return
        full = store.listed_at is None or len(missing) >= FULL_LISTING_MIN or (refresh and stale)
        client = context.client()
        found = labelstudio.list_version_predictions(client, project_id, self.version,
                                                     None if full else [k[0] for k in missing])
        skipped = context.projects.get(project_id).skipped
        by_id: dict[int, Candidates] = {t: from_predictions(p, config.control_name, skipped, t)
                                        for t, p in found.items()}
        update = {k: by_id.get(k[0], EMPTY) for k in missing}
        if full:  # everything listed is fresh, also for tasks seen before under the same URL
            urls = dict(k for k in keys)
            update.update({(t, urls[t]): c for t, c in by_id.items() if t in urls})
        store.update(update, listed_at=now if full else None)
        logger.info("project %s: %d of %d images have candidates of model version %r (%s listing)", project_id,
                    sum(1 for k in missing if len(update[k])), len(missing), self.version,
                    "full" if full else "by task")


class DetectorCandidates:
    """Candidates from a torchvision detector run on the images here (mcm_core.detectors)."""

    def __init__(self, detector) -> None:
        self.detector = detector
        self.name = detector.cache_kind

    def fetch(self, context, project_id: int, store: CandidateStore, keys: Sequence[Key], config,
              refresh: bool = False) -> None:
        """Download and detect the images the store lacks (the detector's output does not change, so
        `refresh` changes nothing); their box features go to the feature cache."""
        missing = [k for k, c in zip(keys, store.get(keys)) if c is None]
        if not missing:
            return
        started = time.monotonic()
        cache = context.ingest.cache(project_id, self.detector.cache_kind)
        found: dict[Key, Candidates] = {}
        for key, result, error in context.ingest.map_images(missing, lambda image, _key: self.detector.detect(image)):
            if error is not None:
                logger.warning("project %s: no detections for task %s: %s", project_id, key[0], error)
                continue
            boxes, conf, feats = result
            cand, rows = Candidates.build(boxes, conf)
            cache.put([(key[0], box_key(key[1], b)) for b in cand.boxes], feats[rows])  # from the same pass
            found[key] = cand
        store.update(found)
        logger.info("project %s: detected candidates in %d images (%d failed) in %.1fs", project_id, len(found),
                    len(missing) - len(found), time.monotonic() - started)


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


class BoxSources:
    """The process's candidate source and box featurizer (from MCM_DETECTION_CANDIDATES), built once by
    the Context (a torchvision detector is loaded here)."""

    def __init__(self, settings, extractor) -> None:
        self.settings = settings
        self.source = None
        self.featurizer = CropFeaturizer(extractor)
        source = settings.candidate_source
        if source and source[0] == "torchvision":
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

    def candidates(self, context, project_id: int, keys: Sequence[tuple[int, str]], config: LabelConfig,
                   refresh: bool = False) -> list[Candidates]:
        """Each (task id, url)'s candidates, fetched where missing (see backend/candidates.py)."""
        self.check_configured()
        store = self.store(project_id)
        self.source.fetch(context, project_id, store, keys, config, refresh=refresh)
        return [c if c is not None else Candidates(np.zeros((0, 4)), np.zeros(0)) for c in store.get(keys)]
