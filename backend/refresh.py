"""Re-scoring and publishing: rank the pool with the current model and hand it to the Publisher.

`publish_ranking` is the one path by which a training's ranking reaches Label Studio (this process's
thread, or the RQ push job: backend/scaleout/jobs.py); `score_and_push_tasks` adds new tasks to the
current version. The push itself, and how a version is published, filled and retired without losing
a submission, is backend/publishing.py's.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Sequence

from .label_config import config_from_meta
from .ledger import project_lock
from .publishing import has_nothing_to_score, head_size, version_record
from .ranking import Ranking
from .scoring import queue_order, queue_window, score_new_tasks, score_tasks

if TYPE_CHECKING:
    from .context import Context

logger = logging.getLogger(__name__)


def refresh_project(project_id: int, context: "Context", *, new_labels: int = 0, lock: bool = True) -> dict:
    """Rank the pool with the current model and publish it: the queue's head in seconds, the rest later.

    The pool is the unlabeled tasks as last listed (backend/pool.py) minus those the
    training found annotated; the first refresh lists them from Label Studio. An empty pool
    (every task labeled) publishes nothing and leaves project.model_version alone
    (Publisher.nothing_to_score).
    `lock=False` only for a caller that already holds the project's publish lock.
    """
    state = context.projects.get(project_id)
    model = state.model
    if model is None:
        logger.info("project %s: nothing to publish: no trained model yet", project_id)
        return {}
    started = time.monotonic()
    tasks = context.pool_tasks(project_id, config_from_meta(model.meta).image_key)
    listed = time.monotonic()
    ranking, skipped = score_tasks(project_id, tasks, context, model, refresh=True)
    scored = time.monotonic()
    timings = publish_ranking(project_id, context, model, ranking, new_labels, lock=lock,
                              pool_s=listed - started, score_s=scored - listed)
    state.n_scored = len(ranking)
    timings.update(pool_s=round(listed - started, 3), score_s=round(scored - listed, 3), skipped=len(skipped),
                   total_s=round(time.monotonic() - started, 3))
    if timings.get("nothing_to_score"):
        logger.info("project %s: %s kept with nothing to score: no unlabeled task (%d skipped); it is published when "
                    "new tasks arrive", project_id, model.version, len(skipped))
        return timings
    logger.info("project %s: %s ranks %d unlabeled tasks (%d skipped); head of %d live %.1fs after the model "
                "(pool %.1fs, scoring %.1fs)", project_id, model.version, len(ranking), len(skipped), timings["head"],
                timings["total_s"], timings["pool_s"], timings["score_s"])
    return timings


def publish_ranking(project_id: int, context: "Context", model, ranking: Ranking, new_labels: int = 0, *,
                    lock: bool = True, **timings: float) -> dict:
    """Publish a version's ranking of the whole pool: the queue window ordered (scoring.queue_order), the
    head pushed, model_version switched, the scoring recorded. The one publish path of a training, in the
    web process (refresh_project) and in the RQ push job alike. `timings` go into the ledger's record."""
    config = config_from_meta(model.meta)
    urls = {t["id"]: t["data"][config.image_key] for t in context.pool(project_id, config.image_key).tasks()}
    ranking = queue_order(project_id, ranking, urls, context.ingest, model, context.settings.weak_order)
    head = max(head_size(context.settings.head_size, new_labels, len(ranking)),
               min(queue_window(model.miner), len(ranking)))  # the whole queue window at once
    held = project_lock(context.settings.project_dir(project_id)) if lock else contextlib.nullcontext()
    with held:  # the maintainer yields within a chunk
        published = context.publisher(project_id, config).publish(model.version, ranking, head,
                                                                  version_record(model.meta, **timings))
    try:
        context.projects.store(project_id).record_scoring(model.version, len(ranking))
    except OSError as exc:  # a full or read-only MODEL_DIR: Label Studio already has the scores
        logger.warning("project %s: cannot record the scoring of %s: %s", project_id, model.version, exc)
    return {**published, "ranked": len(ranking)}


def score_and_push_tasks(project_id: int, tasks: Sequence[dict], context: "Context") -> int:
    """Score newly created tasks with the current model (TASKS_CREATED) and add them to the queue.

    Without this, tasks imported after a training would have no score, and so
    no place in the tail-first order, until the next training. A new task is
    pushed at once if it ranks within the part of the queue already pushed; a model that had
    nothing to score (every task was labeled) is published now, on the pool these tasks joined.
    """
    model = context.projects.get(project_id).model
    if model is None or not tasks:
        return 0
    started = time.monotonic()
    config = config_from_meta(model.meta)
    context.pool(project_id, config.image_key).add(tasks)
    if has_nothing_to_score(context.ledger(project_id), model.version):  # nothing of it is in Label Studio yet
        return int(refresh_project(project_id, context).get("created", 0))
    part, skipped = score_new_tasks(project_id, tasks, context, model)
    pushed = context.publisher(project_id, config).add_tasks(part)
    logger.info("project %s: scored %d new tasks with %s, %d pushed at once (%d skipped) in %.1fs", project_id,
                len(part), model.version, pushed, len(skipped), time.monotonic() - started)
    return pushed
