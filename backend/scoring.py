"""Scoring tasks with a version: the task kind's scores (backend/task_kinds.py) -> a Ranking, and the
order a labeling queue follows.

Every path that scores goes through here: a training's re-scoring of the pool (backend/refresh.py,
the RQ jobs), new tasks (TASKS_CREATED, the maintainer's relisting: `score_new_tasks`) and /predict
(`predict_tasks`). With a queue window (MCM_QUEUE_WINDOW, mcm_core.queue) the window's tasks score
(0.5, 1] in the queue's order and every other task 0.5 x its score, below them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from mcm_core.queue import QUEUE_FLOOR

from .label_config import config_from_meta
from .ranking import Ranking
from .task_kinds import kind_of
from .weak_order import weak_order


def score_tasks(project_id: int, tasks: Sequence[dict], context, model,
                refresh: bool = False) -> tuple[Ranking, dict[int, str]]:
    """(the ranking of the `tasks` that could be scored, {skipped task id: reason}) with `model`.
    `refresh` (a training's re-scoring of the pool): detection candidates may be listed again."""
    config = config_from_meta(model.meta)
    return kind_of(config).score_tasks(project_id, tasks, context, model, config, refresh)


def score_new_tasks(project_id: int, tasks: Sequence[dict], context, model) -> tuple[Ranking, dict[int, str]]:
    """Tasks that arrived after the version's ranking (TASKS_CREATED, a relisting), scored as they
    rank outside the queue window (the window re-forms at the next training)."""
    part, skipped = score_tasks(project_id, tasks, context, model)
    if weak_order(model, context.settings.weak_order) is not None:  # no queue window: the weak order stands
        return part, skipped
    return part.rescored(outside_window(part.scores, model.miner)), skipped


def queue_window(miner) -> int:
    """How many of the best-scored tasks the miner re-orders into a labeling queue (0: none)."""
    return int(getattr(miner, "queue_size", 0))


def tab_order(model, weak_setting: str) -> str:
    """What the tab's scores follow (/mcm/status): a weak model's fallback ("novelty", "random";
    backend/weak_order.py), else the labeling queue ("queue": MCM_QUEUE_WINDOW > 0 and a strategy with
    one), else the mining score ("score")."""
    return weak_order(model, weak_setting) or ("queue" if queue_window(model.miner) else "score")


def outside_window(scores: np.ndarray, miner) -> np.ndarray:
    """Scores of tasks outside the queue window: below every queued task (which get (0.5, 1])."""
    return QUEUE_FLOOR * scores if queue_window(miner) else scores


def predict_tasks(project_id: int, tasks: Sequence[dict], context, model,
                  published: dict[int, float] | None = None) -> tuple[list[dict], dict[int, str]]:
    """Label Studio predictions (with `task`) for the tasks that could be scored, and the skipped ones.

    A task of the version's published ranking gets the score it was published with (`published`),
    so /predict and the queue agree; any other task the score it has outside the queue window."""
    ranking, skipped = score_new_tasks(project_id, tasks, context, model)
    if published:
        ranking = ranking.rescored([published.get(int(t), s) for t, s in zip(ranking.task_ids.tolist(),
                                                                             ranking.scores.tolist())])
    return ranking.predictions(0, len(ranking), config_from_meta(model.meta), model.version), skipped


def queue_order(project_id: int, ranking: "Ranking", pool_urls: dict[int, str], ingest, model,
                weak_setting: str = "miner") -> "Ranking":
    """The ranking a labeling queue should follow (mcm_core.queue): the window of best-scored tasks
    re-ordered so that the labels it brings teach the model the most (tail classes in turn; within a
    class the rare tasks the version's classifier does not know yet where the evidence says the class's
    tasks are mostly rare, else those unlike what is labeled), scored (0.5, 1]; every other task 0.5 x its score, below them. A weak model's
    order (`weak_setting`: MCM_WEAK_ORDER; backend/weak_order.py) is kept as it is."""
    window = min(queue_window(model.miner), len(ranking))
    if window == 0 or weak_order(model, weak_setting) is not None:
        return ranking
    top = ranking.task_ids[:window]
    keys = [(int(t), pool_urls[int(t)]) for t in top]
    features = ingest.features(project_id, keys, model=model)
    queued = model.miner.queue_scores(features, queue_proba(model, features), pool_size=len(ranking))
    scores = QUEUE_FLOOR * ranking.scores
    scores[:window] = queued
    return ranking.rescored(scores)


def queue_proba(model, features: np.ndarray) -> np.ndarray | None:
    """The version's pre-fill classifier's probabilities of the window's tasks, when the miner's queue
    teaches by a classifier's doubt (queue_teach_by: "novel_doubt" by default, or "doubt"); None for
    "distance" (MCM_MINER_OPTIONS) and for a version without that classifier (older versions): the
    queue then teaches by the distance."""
    if not getattr(model.miner, "queue_needs_proba", False) or getattr(model, "prefill", None) is None:
        return None
    return model.prefill.predict_proba(features)
