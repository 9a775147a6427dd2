"""Scoring: features -> mining scores in [0, 1] -> a ranking of the pool and Label Studio predictions.

Classification scores each task's image; detection scores each task's candidate boxes and
aggregates them into the image's score (backend/detection.py); both give a `Ranking`, which
builds the predictions of either kind (a Choices class, or RectangleLabels regions).

Label Studio silently drops predictions whose score is outside [0, 1], so the
raw score S (0 <= S <= miner.score_upper_bound) is mapped monotonically:
    linear: s = clip(S / bound, 0, 1)
    sqrt:   s = sqrt(clip(S / bound, 0, 1))   (default; spreads the many small scores)
Higher s = more likely a tail class: the "Tail classes first" tab sorts by s, descending.

What a prediction pre-ticks is not the miner's class: the RC layer is built to lift the tail and
over-predicts it. The version's PrefillClassifier (mcm_core.prefill: a plain softmax classifier,
checked by cross-validation at training) names the class, and only for the classes whose held-out
precision allows it, at the task's confidence; any other task's prediction carries the score and
`result: []` (Label Studio 1.23.2 stores it, keeps its score for the tab's order, and the annotator
starts blank). MCM_PREFILL=off: never a pre-ticked class or box.
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


def prefill_labels(model, features: np.ndarray, settings) -> np.ndarray:
    """(M,) int32: the class each row's prediction pre-ticks, -1 for none (MCM_PREFILL=off, a version
    without a pre-fill classifier, or a class or confidence its held-out precision does not allow)."""
    if settings.prefill == "off" or getattr(model, "prefill", None) is None or len(features) == 0:
        return np.full(len(features), -1, np.int32)
    return model.prefill.prefill_labels(features)


def prefill_summary(model, mode: str) -> dict | None:
    """/mcm/status "prefill": which classes a prediction may pre-tick, and why not the others
    (from the version's meta.json "prefill", written at training; backend/fitting.fit_prefill)."""
    if model is None:
        return None
    checked = model.meta.get("prefill")
    verdicts = checked.get("classes", {}) if isinstance(checked, dict) else {}
    names = [n for n in model.meta.get("classes", []) if n in verdicts]  # the label config's order
    classes = [n for n in names if verdicts[n].get("prefill")] if model.prefill is not None else []
    not_prefilled = {n: verdicts[n].get("reason") for n in names if n not in classes}
    if mode == "off":
        message = "MCM_PREFILL=off: no prediction pre-ticks a class or box; the scores still order the queue."
    elif model.prefill is None:
        message = ("This version has no pre-fill classifier (saved before pre-fills were checked, or its file is "
                   "unreadable): nothing is pre-ticked until the next training.")
    elif classes:
        message = (f"Pre-ticked when the task's confidence is high enough: {', '.join(classes)}. The other classes "
                   f"are never pre-ticked: their held-out precision in this project's labels is below "
                   f"{checked.get('min_precision', 0.9):.0%} or rests on too few labels.")
    else:
        message = ("Nothing is pre-ticked: no class reaches a held-out precision of "
                   f"{checked.get('min_precision', 0.9):.0%} in this project's labels; annotators start blank.")
    return {"enabled": mode != "off" and model.prefill is not None, "classes": classes if mode != "off" else [],
            "not_prefilled": not_prefilled, "message": message}


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
    features = ingest.features(project_id, keys, model=model)
    scores, labels = score_features(model.miner, features, transform)
    prefill = prefill_labels(model, features, context.settings)
    return Ranking.build([k[0] for k in keys], scores, labels, prefill=prefill), skipped


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
    prediction shows: the class it pre-ticks (classification) or its regions (detection)."""

    task_ids: np.ndarray   # int64
    scores: np.ndarray     # float64 in [0, 1], the pushed prediction score
    labels: np.ndarray     # int32 the miner's (RC layer's) class (detection: most confident candidate's; -1: none)
    regions: TaskRegions | None = None  # detection projects: each task's RectangleLabels regions
    prefill: np.ndarray | None = None   # int32 the class the prediction pre-ticks, -1: none (result [])

    def __post_init__(self) -> None:
        if self.prefill is None:  # e.g. a ranking saved before pre-fills were checked: nothing pre-ticked
            self.prefill = np.full(len(self.task_ids), -1, np.int32)

    @classmethod
    def build(cls, task_ids, scores, labels, regions: TaskRegions | None = None, prefill=None) -> "Ranking":
        ids = np.asarray(task_ids, dtype=np.int64)
        s = np.asarray(scores, dtype=np.float64)
        order = np.lexsort((ids, -s))
        prefill = np.full(len(ids), -1, np.int32) if prefill is None else np.asarray(prefill, dtype=np.int32)
        return cls(ids[order], s[order], np.asarray(labels, dtype=np.int32)[order], regions, prefill[order])

    def __len__(self) -> int:
        return len(self.task_ids)

    def rescored(self, scores) -> "Ranking":
        """The same tasks and predictions with new scores (re-sorted)."""
        return Ranking.build(self.task_ids, scores, self.labels, self.regions, self.prefill)

    def save(self, path: str) -> None:
        """ranking.npz (and regions.npz beside it first, so a ranking is never without its regions)."""
        if self.regions is not None:  # only this ranking's tasks (annotated ones left it)
            self.regions.subset(self.task_ids.tolist()).save(TaskRegions.path_beside(path))
        atomic_savez(path, task_ids=self.task_ids, scores=self.scores, labels=self.labels, prefill=self.prefill,
                     has_regions=np.asarray(self.regions is not None))

    @classmethod
    def load(cls, path: str, regions: bool = True) -> "Ranking":
        with np.load(path, allow_pickle=False) as data:
            prefill = data["prefill"] if "prefill" in data else None
            ranking = cls(data["task_ids"], data["scores"], data["labels"], None, prefill)
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
                 "result": choice_result(config, config.classes[int(c)]) if 0 <= c < len(config.classes) else []}
                for t, s, c in zip(self.task_ids[start:stop], self.scores[start:stop], self.prefill[start:stop])]

    def select(self, keep: np.ndarray) -> "Ranking":
        """The rows where `keep` is true (the order is kept)."""
        return Ranking(self.task_ids[keep], self.scores[keep], self.labels[keep], self.regions, self.prefill[keep])

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
                             np.concatenate([mine.labels, other.labels]), regions,
                             np.concatenate([mine.prefill, other.prefill]))
