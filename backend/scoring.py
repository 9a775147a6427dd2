"""Scoring: features -> mining scores in [0, 1] -> a ranking of the pool and Label Studio predictions.

Classification scores each task's image; detection scores each task's candidate boxes and
aggregates them into the image's score (backend/detection.py); both give a `Ranking`, which
builds the predictions of either kind (a Choices class, or RectangleLabels regions).

Label Studio silently drops predictions whose score is outside [0, 1], so the
raw score S (0 <= S <= miner.score_upper_bound) is mapped monotonically:
    linear: s = clip(S / bound, 0, 1)
    sqrt:   s = sqrt(clip(S / bound, 0, 1))   (default; spreads the many small scores)
Higher s = more likely a tail class: the "Tail classes first" tab sorts by s, descending.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Sequence

import numpy as np

from mcm_core.atomic import atomic_savez

from .label_config import LabelConfig, config_from_meta
from .regions import TaskRegions

QUEUE_FLOOR = 0.5  # mcm_core.queue: queued tasks score (0.5, 1], the rest 0.5 x score


def map_scores(raw: np.ndarray, upper_bound: float, transform: str = "sqrt") -> np.ndarray:
    raw = np.asarray(raw, dtype=np.float64)
    bound = float(upper_bound) if upper_bound and upper_bound > 0 else 1.0
    unit = np.clip(np.nan_to_num(raw / bound, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    if transform == "sqrt":
        unit = np.sqrt(unit)
    elif transform != "linear":
        raise ValueError(f"unknown score transform {transform!r}")
    return unit


def choice_result(config: LabelConfig, label: str) -> list[dict]:
    """A Choices pre-annotation in Label Studio's result format."""
    return [{
        "from_name": config.control_name,
        "to_name": config.image_name,
        "type": "choices",
        "value": {"choices": [label]},
    }]


def score_features(miner, features: np.ndarray, transform: str) -> tuple[np.ndarray, np.ndarray]:
    """(scores in [0, 1], predicted class index) per feature row."""
    if len(features) == 0:
        return np.zeros(0), np.zeros(0, np.int32)
    scores = map_scores(miner.score_samples(features), miner.score_upper_bound, transform)
    labels = np.asarray(miner.predict_proba(features)).argmax(axis=1).astype(np.int32)
    return scores, labels


def score_tasks(project_id: int, tasks: Sequence[dict], context, model,
                refresh: bool = False) -> tuple["Ranking", dict[int, str]]:
    """(the ranking of the `tasks` that could be scored, {skipped task id: reason}) with `model`.
    `refresh` (a training's re-scoring of the pool): detection candidates may be listed again."""
    config = config_from_meta(model.meta)
    transform = context.settings.score_transform
    if config.detection:
        from .detection import score_detection_tasks

        return score_detection_tasks(project_id, tasks, context, model, config, transform, refresh)
    ingest = context.ingest
    _ok, keys, skipped = ingest.cached_arrays(project_id, tasks, config)
    if not keys:
        return Ranking.build([], [], []), skipped
    scores, labels = score_features(model.miner, ingest.features(project_id, keys, model=model), transform)
    return Ranking.build([k[0] for k in keys], scores, labels), skipped


def queue_window(miner) -> int:
    """How many of the best-scored tasks the miner re-orders into a labeling queue (0: none)."""
    has_queue = getattr(miner, "config", {}).get("strategy") == "tail_novelty"
    return int(miner.config.get("queue_window", 0)) if has_queue else 0


def outside_window(scores: np.ndarray, miner) -> np.ndarray:
    """Scores of tasks outside the queue window: below every queued task (which get (0.5, 1])."""
    return QUEUE_FLOOR * scores if queue_window(miner) else scores


def predict_tasks(project_id: int, tasks: Sequence[dict], context, model,
                  published: dict[int, float] | None = None) -> tuple[list[dict], dict[int, str]]:
    """Label Studio predictions (with `task`) for the tasks that could be scored, and the skipped ones.

    A task of the version's published ranking gets the score it was published with (`published`),
    so /predict and the queue agree; any other task the score it has outside the queue window."""
    ranking, skipped = score_tasks(project_id, tasks, context, model)
    scores = outside_window(ranking.scores, model.miner)
    if published:
        scores = np.asarray([published.get(int(t), s) for t, s in zip(ranking.task_ids.tolist(), scores.tolist())])
    ranking = ranking.rescored(scores)
    return ranking.predictions(0, len(ranking), config_from_meta(model.meta), model.version), skipped


@functools.lru_cache(maxsize=16)
def _published(path: str, mtime_ns: int) -> dict[int, float]:
    ranking = Ranking.load(path, regions=False)
    return dict(zip(ranking.task_ids.tolist(), ranking.scores.tolist()))


def published_scores(path: str) -> dict[int, float]:
    """{task id: score} of a version's ranking file as published (empty if it has none yet)."""
    try:
        return _published(path, os.stat(path).st_mtime_ns)
    except (OSError, ValueError, KeyError):
        return {}


def queue_order(project_id: int, ranking: "Ranking", pool_urls: dict[int, str], ingest, model) -> "Ranking":
    """The ranking a labeling queue should follow (mcm_core.queue): the window of best-scored tasks
    re-ordered so that the labels it brings teach the model the most (tail classes in turn, unlike
    what is labeled), scored (0.5, 1]; every other task 0.5 x its score, below them."""
    window = min(queue_window(model.miner), len(ranking))
    if window == 0:
        return ranking
    top = ranking.task_ids[:window]
    keys = [(int(t), pool_urls[int(t)]) for t in top]
    queued = model.miner.queue_scores(ingest.features(project_id, keys, model=model))
    scores = QUEUE_FLOOR * ranking.scores
    scores[:window] = queued
    return ranking.rescored(scores)


@dataclasses.dataclass
class Ranking:
    """One version's scores of the pool, highest first (ties by task id), and what each task's
    prediction shows: a class index (classification) or its regions (detection)."""

    task_ids: np.ndarray   # int64
    scores: np.ndarray     # float64 in [0, 1], the pushed prediction score
    labels: np.ndarray     # int32 class of the pre-annotation (detection: most confident candidate's; -1: none)
    regions: TaskRegions | None = None  # detection projects: each task's RectangleLabels regions

    @classmethod
    def build(cls, task_ids, scores, labels, regions: TaskRegions | None = None) -> "Ranking":
        ids = np.asarray(task_ids, dtype=np.int64)
        s = np.asarray(scores, dtype=np.float64)
        order = np.lexsort((ids, -s))
        return cls(ids[order], s[order], np.asarray(labels, dtype=np.int32)[order], regions)

    def __len__(self) -> int:
        return len(self.task_ids)

    def rescored(self, scores) -> "Ranking":
        """The same tasks and predictions with new scores (re-sorted)."""
        return Ranking.build(self.task_ids, scores, self.labels, self.regions)

    def save(self, path: str) -> None:
        """ranking.npz (and regions.npz beside it first, so a ranking is never without its regions)."""
        if self.regions is not None:  # only this ranking's tasks (annotated ones left it)
            self.regions.subset(self.task_ids.tolist()).save(TaskRegions.path_beside(path))
        atomic_savez(path, task_ids=self.task_ids, scores=self.scores, labels=self.labels,
                     has_regions=np.asarray(self.regions is not None))

    @classmethod
    def load(cls, path: str, regions: bool = True) -> "Ranking":
        with np.load(path, allow_pickle=False) as data:
            ranking = cls(data["task_ids"], data["scores"], data["labels"])
            with_regions = bool(data["has_regions"]) if "has_regions" in data else False
        if regions and with_regions:
            ranking.regions = TaskRegions.load(TaskRegions.path_beside(path))
        return ranking

    def predictions(self, start: int, stop: int, config: LabelConfig, version: str) -> list[dict]:
        if config.detection:
            regions = self.regions or TaskRegions()
            return [{"task": int(t), "score": float(s), "model_version": version, "result": regions.result(t, config)}
                    for t, s in zip(self.task_ids[start:stop], self.scores[start:stop])]
        return [{"task": int(t), "score": float(s), "model_version": version,
                 "result": choice_result(config, config.classes[int(c)])}
                for t, s, c in zip(self.task_ids[start:stop], self.scores[start:stop], self.labels[start:stop])]

    def select(self, keep: np.ndarray) -> "Ranking":
        """The rows where `keep` is true (the order is kept)."""
        return Ranking(self.task_ids[keep], self.scores[keep], self.labels[keep], self.regions)

    def without(self, task_ids) -> "Ranking":
        return self.select(~np.isin(self.task_ids, np.asarray(list(task_ids), dtype=np.int64)))

    def merged(self, other: "Ranking") -> "Ranking":
        """This ranking plus `other`'s tasks (other's entry wins for a task in both)."""
        mine = self.without(other.task_ids.tolist())
        regions = None
        if self.regions is not None or other.regions is not None:
            regions = (self.regions or TaskRegions()).merged(other.regions or TaskRegions())
        return Ranking.build(np.concatenate([mine.task_ids, other.task_ids]),
                             np.concatenate([mine.scores, other.scores]),
                             np.concatenate([mine.labels, other.labels]), regions)
