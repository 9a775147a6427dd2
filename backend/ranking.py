"""A version's ranking of the pool: scores in [0, 1], highest first, and what each task's prediction shows.

Label Studio silently drops predictions whose score is outside [0, 1], so the
raw score S (0 <= S <= miner.score_upper_bound) is mapped monotonically:
    linear: s = clip(S / bound, 0, 1)
    sqrt:   s = sqrt(clip(S / bound, 0, 1))   (default; spreads the many small scores)
Higher s = more likely a tail class: the "Tail classes first" tab sorts by s, descending.

What a prediction shows is the task kind's (`Ranking.shown`): the class it pre-ticks
(`ChoiceResults`, classification) or its regions (`regions.TaskRegions`, detection). Both keep
{task id: what is shown}, merge, subset and save beside ranking.npz, so the ranking never asks
which kind it holds.
"""
from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from mcm_core.atomic import atomic_savez

from .label_config import LabelConfig
from .regions import TaskRegions
from .shown import TaskItems


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


class ChoiceResults(TaskItems):
    """{task id: the class index its prediction pre-ticks}; a task not in it starts blank (result [])."""

    file_name = "choices.npz"

    def __init__(self, items: dict[int, int] | None = None) -> None:
        super().__init__({int(t): int(c) for t, c in (items or {}).items() if int(c) >= 0})

    @classmethod
    def of(cls, task_ids, classes) -> "ChoiceResults":
        """From aligned arrays (class -1: nothing pre-ticked)."""
        return cls(dict(zip(np.asarray(task_ids).tolist(), np.asarray(classes).tolist())))

    def result(self, task_id: int, config: LabelConfig, version_tag: str = "mcm") -> list[dict]:
        c = self.items.get(int(task_id), -1)
        return choice_result(config, config.classes[c]) if 0 <= c < len(config.classes) else []

    def save(self, path: str) -> None:
        ids = list(self.items)
        atomic_savez(path, task_ids=np.asarray(ids, np.int64), classes=np.asarray([self.items[t] for t in ids], np.int32))

    @classmethod
    def load(cls, path: str) -> "ChoiceResults":
        with np.load(path, allow_pickle=False) as data:
            return cls.of(data["task_ids"], data["classes"])


# What a saved ranking's predictions show, by the name ranking.npz records (`shown`).
SHOWN_TYPES = {"choices": ChoiceResults, "regions": TaskRegions}


def _shown_name(shown) -> str:
    return next(name for name, kind in SHOWN_TYPES.items() if isinstance(shown, kind))


@dataclasses.dataclass
class Ranking:
    """One version's scores of the pool, highest first (ties by task id), and what each task's
    prediction shows (`shown`: ChoiceResults or TaskRegions; None: nothing, every result [])."""

    task_ids: np.ndarray   # int64
    scores: np.ndarray     # float64 in [0, 1], the pushed prediction score
    labels: np.ndarray     # int32 the miner's (RC layer's) class (detection: most confident candidate's; -1: none)
    shown: ChoiceResults | TaskRegions | None = None

    @classmethod
    def build(cls, task_ids, scores, labels, shown=None) -> "Ranking":
        ids = np.asarray(task_ids, dtype=np.int64)
        s = np.asarray(scores, dtype=np.float64)
        order = np.lexsort((ids, -s))
        return cls(ids[order], s[order], np.asarray(labels, dtype=np.int32)[order], shown)

    def __len__(self) -> int:
        return len(self.task_ids)

    def rescored(self, scores) -> "Ranking":
        """The same tasks and predictions with new scores (re-sorted)."""
        return Ranking.build(self.task_ids, scores, self.labels, self.shown)

    @staticmethod
    def shown_path(ranking_path: str, name: str) -> str:
        return os.path.join(os.path.dirname(ranking_path), SHOWN_TYPES[name].file_name)

    def save(self, path: str) -> None:
        """ranking.npz (and what its predictions show beside it first, so a ranking is never without it)."""
        name = "" if self.shown is None else _shown_name(self.shown)
        if self.shown is not None:  # only this ranking's tasks (annotated ones left it)
            self.shown.subset(self.task_ids.tolist()).save(self.shown_path(path, name))
        atomic_savez(path, task_ids=self.task_ids, scores=self.scores, labels=self.labels, shown=np.asarray(name))

    @classmethod
    def load(cls, path: str, shown: bool = True) -> "Ranking":
        """A saved ranking; `shown=False` reads the scores only (faster; every result [])."""
        with np.load(path, allow_pickle=False) as data:
            ranking = cls(data["task_ids"], data["scores"], data["labels"], None)
            name = str(data["shown"]) if "shown" in data else _legacy_shown(data)
            inline = data["prefill"] if "prefill" in data else None
        if not shown or not name:
            return ranking
        if name == "choices" and inline is not None:  # saved before choices had their own file
            ranking.shown = ChoiceResults.of(ranking.task_ids, inline)
        else:
            ranking.shown = SHOWN_TYPES[name].load(cls.shown_path(path, name))
        return ranking

    def predictions(self, start: int, stop: int, config: LabelConfig, version: str) -> list[dict]:
        return [{"task": int(t), "score": float(s), "model_version": version,
                 "result": self.shown.result(t, config) if self.shown is not None else []}
                for t, s in zip(self.task_ids[start:stop], self.scores[start:stop])]

    def select(self, keep: np.ndarray) -> "Ranking":
        """The rows where `keep` is true (the order is kept)."""
        return Ranking(self.task_ids[keep], self.scores[keep], self.labels[keep], self.shown)

    def without(self, task_ids) -> "Ranking":
        return self.select(~np.isin(self.task_ids, np.asarray(list(task_ids), dtype=np.int64)))

    def merged(self, other: "Ranking") -> "Ranking":
        """This ranking plus `other`'s tasks (other's entry wins for a task in both)."""
        mine = self.without(other.task_ids.tolist())
        shown = other.shown if mine.shown is None else mine.shown if other.shown is None \
            else mine.shown.merged(other.shown)
        return Ranking.build(np.concatenate([mine.task_ids, other.task_ids]),
                             np.concatenate([mine.scores, other.scores]),
                             np.concatenate([mine.labels, other.labels]), shown)


def _legacy_shown(data) -> str:
    """What a ranking saved before `shown` was recorded shows: regions beside it, or inline choices."""
    if "has_regions" in data and bool(data["has_regions"]):
        return "regions"
    return "choices" if "prefill" in data else ""


@functools.lru_cache(maxsize=16)
def _published(path: str, mtime_ns: int) -> dict[int, float]:
    ranking = Ranking.load(path, shown=False)
    return dict(zip(ranking.task_ids.tolist(), ranking.scores.tolist()))


def published_scores(path: str) -> dict[int, float]:
    """{task id: score} of a version's ranking file as published (empty if it has none yet)."""
    try:
        return _published(path, os.stat(path).st_mtime_ns)
    except (OSError, ValueError, KeyError):
        return {}
