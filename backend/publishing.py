"""Publishing a version's scores to Label Studio and retiring old ones, without losing a submission.

Where the queue is reordered: Label Studio orders the "Tail classes first" tab by
the score of the predictions whose model_version equals project.model_version
(tasks without one sort last). Three facts shape what happens here:
- an annotator's open task was pre-filled from a prediction of the version that
  was current when it opened, and Label Studio rejects the submission (400
  "parent_prediction: Invalid pk") if that prediction was deleted meanwhile;
- deleting predictions is Label Studio's most expensive write (per-row signals,
  one transaction per request: a 100k-row version held a PostgreSQL project
  locked for 54 minutes), while pushing is cheap (bulk insert);
- a task without a prediction of the current version sorts after every task with one.
So a version's life is:
1. publish: push the head of its ranking (the top tasks), then switch
   project.model_version. Annotators see the new order within seconds. A project's first
   publish also creates its "Tail classes first" tab (MCM_AUTO_TAB, backend/labelstudio/tabs.py).
   A version with nothing to push (every task labeled, or none yet) is recorded as such and
   model_version is left alone (Label Studio refuses a version without predictions); it is
   published when new tasks arrive.
2. fill: push the rest of the ranking in descending order, a chunk at a time,
   once the version has been current for MCM_FILL_AFTER_SECONDS (at once for a
   project's first version), stopping when a newer version is published. The
   pushed tasks are always exactly the top of the ranking, so the tab's order is
   right at every moment.
3. retire: MCM_PREDICTION_GRACE_SECONDS after a version stopped being current its
   predictions are deleted one per request, a few requests at a time (no request
   holds Label Studio's rows for long), within a time budget per maintenance pass.
The ledger MODEL_DIR/<project>/published.json records each version's life; the
ranking of a version is MODEL_DIR/<project>/<version>/ranking.npz.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from .label_config import LabelConfig
from .labelstudio import client as labelstudio
from .labelstudio.tabs import VIEW_TITLE, create_tail_tab
from .ledger import Ledger
from .ranking import Ranking
from .versions import ModelStore

logger = logging.getLogger(__name__)

_LOCAL_LOCKS: dict[str, threading.RLock] = {}
_LOCAL_LOCKS_GUARD = threading.Lock()
FILL_CHUNK = 500          # rows per fill request (Label Studio inserts in batches of 500)
RETIRE_PAGE = 200         # prediction ids looked up per listing while retiring
# Deletes in flight at once: each is its own short transaction in Label Studio, and most of a
# delete's time is HTTP and authentication (~0.1 s a request on a busy machine), not locking.
RETIRE_CONCURRENCY = 4
MIN_HEAD_PER_NEW_LABEL = 4  # the head covers at least 4 x the labels added since the previous version
NOTHING_TO_SCORE = "nothing_to_score_at"  # ledger: when a version found no unlabeled task to publish


def _local_lock(project_dir: str) -> threading.RLock:
    """Fill and add_tasks of one project both rewrite its current ranking: one at a time per process."""
    with _LOCAL_LOCKS_GUARD:
        return _LOCAL_LOCKS.setdefault(os.path.abspath(project_dir), threading.RLock())


def version_record(meta: dict, **timings: float) -> dict:
    """What the ledger keeps about a version beyond its publishing (read by the mining report: a
    version's directory, meta.json included, is pruned after 5 newer ones; its ledger entry lives
    until a week after retirement)."""
    keep = ("trained_at", "n_labeled", "train_seconds", "tail_classes")
    return {**{k: meta[k] for k in keep if k in meta}, **{k: round(float(v), 3) for k, v in timings.items()}}


def head_size(setting: int, new_labels: int, pool: int) -> int:
    """Tasks pushed at publish: the setting, at least 4 x the labels added since the last version."""
    return max(1, min(pool, max(int(setting), MIN_HEAD_PER_NEW_LABEL * max(0, int(new_labels)))))


def has_nothing_to_score(ledger: dict, version: str | None) -> bool:
    """True while `version` is recorded in `ledger` as having had nothing to score, and not published since."""
    entry = ledger.get("versions", {}).get(version or "", {})
    return bool(version) and ledger.get("current") != version and bool(entry.get(NOTHING_TO_SCORE))


class Publisher:
    """Publishes, fills and retires one project's versions in Label Studio."""

    def __init__(self, client, project_id: int, project_dir: str, config: LabelConfig, *,
                 chunk_size: int = 1000, clock: Callable[[], float] = time.time,
                 on_missing_tasks: Callable[[list[int]], None] | None = None, auto_tab: bool = False) -> None:
        self.client = client
        self.project_id = int(project_id)
        self.project_dir = project_dir
        self.config = config
        self.chunk_size = int(chunk_size)
        self.clock = clock
        self.ledger = Ledger(project_dir)
        self.on_missing_tasks = on_missing_tasks
        self.auto_tab = auto_tab  # MCM_AUTO_TAB: the first publish creates the tail-first tab

    def ranking_path(self, version: str) -> str:
        return ModelStore(self.project_dir).ranking_path(version)

    def _push(self, ranking: Ranking, start: int, stop: int, version: str) -> int:
        return labelstudio.push_predictions(self.client, self.project_id,
                                        ranking.predictions(start, stop, self.config, version),
                                        self.chunk_size, on_missing=self.on_missing_tasks)

    # -- 1. publish --------------------------------------------------------------------------------
    def publish(self, version: str, ranking: Ranking, head: int, record: dict | None = None) -> dict:
        """Push the top `head` tasks under `version`, then make it project.model_version.

        `record` (what the version was trained on, how long scoring took: see `version_record`)
        goes into the version's ledger entry with the publish timings, for the mining report.
        """
        started = self.clock()
        ranking.save(self.ranking_path(version))
        head = min(int(head), len(ranking))
        created = self._push(ranking, 0, head, version)
        if created == 0:  # no task to score, or every one deleted since it was listed
            return self.nothing_to_score(version, len(ranking), record)
        with self.ledger.editing() as data:
            entry = data["versions"].setdefault(version, {})
            entry.pop(NOTHING_TO_SCORE, None)
            first = not data.get("current")
            entry.update(pushed=head, pool=len(ranking), head=head, first=first)
        pushed_at = self.clock()
        previous = self.finish(version)
        switched_at = self.clock()
        if first and self.auto_tab:
            self.create_tab()
        timings = {"push_head_s": round(pushed_at - started, 3), "switch_s": round(switched_at - pushed_at, 3),
                   "head": head, "created": created, "pool": len(ranking)}
        with self.ledger.editing() as data:
            data["versions"].setdefault(version, {}).update(
                {**(record or {}), "push_head_s": timings["push_head_s"], "switch_s": timings["switch_s"]})
        logger.info("project %s: published %s: top %d of %d tasks pushed in %.2fs, model_version switched in "
                    "%.2fs (previous %s)", self.project_id, version, head, len(ranking), timings["push_head_s"],
                    timings["switch_s"], previous)
        return timings

    def create_tab(self) -> bool:
        """The project's first publish: its "Tail classes first" tab, so that connecting on the Model page
        is enough (backend/labelstudio/tabs.py). A failure is logged, never stops the publish: `admin enable-ordering`
        creates it too."""
        try:
            created = create_tail_tab(self.client, self.project_id)
        except Exception as exc:  # Label Studio refused or is down: the predictions are out already
            logger.warning("project %s: cannot create the Data Manager tab %r (%s); `python -m backend.admin "
                           "enable-ordering --project %s` creates it", self.project_id, VIEW_TITLE,
                           labelstudio.describe_error(exc), self.project_id)
            return False
        if created:
            logger.info("project %s: created the Data Manager tab %r (unlabeled tasks, highest score first): "
                        "annotators open it and click 'Label Tasks As Displayed'", self.project_id, VIEW_TITLE)
        else:
            logger.info("project %s: a Data Manager tab %r exists already: left as it is", self.project_id, VIEW_TITLE)
        return created

    def nothing_to_score(self, version: str, pool: int = 0, record: dict | None = None) -> dict:
        """Record that `version` has no prediction in Label Studio (every task is labeled, or the
        project has none yet): project.model_version stays as it is, because Label Studio refuses a
        version without predictions (400 "Model version doesn't exist either as live model or as
        static predictions"). A normal state, not a failure: the version is published when new
        tasks arrive (refresh.score_and_push_tasks, the maintainer's relisting)."""
        with self.ledger.editing() as data:
            versions = data["versions"]
            for older in [v for v, e in versions.items() if v != version and has_nothing_to_score(data, v)]:
                del versions[older]  # never published, and a newer model replaces it: nothing to keep
            entry = versions.setdefault(version, {})
            entry.update({**(record or {}), "pushed": 0, "pool": 0, "head": 0, NOTHING_TO_SCORE: self.clock()})
            current = data.get("current")
        logger.info("project %s: %s has nothing to score (no unlabeled task in Label Studio; %d ranked): nothing "
                    "published, Label Studio's model_version stays %r", self.project_id, version, pool, current)
        return {"push_head_s": 0.0, "switch_s": 0.0, "head": 0, "created": 0, "pool": 0, "nothing_to_score": True}

    def finish(self, version: str) -> str | None:
        """Switch project.model_version to a version whose head is pushed, and record it as current
        (also what recovery calls when a crash fell between the push and the switch)."""
        labelstudio.set_model_version(self.client, self.project_id, version)
        now = self.clock()
        with self.ledger.editing() as data:
            previous = data.get("current")
            versions = data["versions"]
            if previous and previous != version and previous in versions:
                versions[previous].setdefault("superseded_at", now)
            entry = versions.setdefault(version, {})
            entry.pop("superseded_at", None)
            entry.setdefault("published_at", now)
            data["current"] = version
        return previous

    # -- 2. fill -----------------------------------------------------------------------------------
    def fill(self, *, fill_after: float, max_seconds: float | None = None,
             should_stop: Callable[[], bool] = lambda: False) -> int:
        """Push more of the current version's ranking, in order; returns rows pushed now."""
        with _local_lock(self.project_dir):
            return self._fill(fill_after, max_seconds, should_stop)

    def _fill(self, fill_after: float, max_seconds: float | None, should_stop: Callable[[], bool]) -> int:
        data = self.ledger.read()
        version = data.get("current")
        entry = data["versions"].get(version or "", {})
        if not version or entry.get("pushed", 0) >= entry.get("pool", 0):
            return 0
        if not entry.get("first") and self.clock() - entry.get("published_at", 0) < fill_after:
            return 0
        try:
            ranking = Ranking.load(self.ranking_path(version))
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("project %s: cannot fill %s: its ranking is unreadable (%s)", self.project_id, version, exc)
            return 0
        started, total, position = self.clock(), 0, int(entry.get("pushed", 0))
        while position < len(ranking) and not should_stop():
            if max_seconds is not None and self.clock() - started >= max_seconds:
                break
            if self.ledger.read().get("current") != version:
                break  # a newer version was published: its own head and fill take over
            stop = min(len(ranking), position + FILL_CHUNK)
            total += self._push(ranking, position, stop, version)
            position = stop
            with self.ledger.editing() as fresh:
                if version in fresh["versions"]:
                    fresh["versions"][version]["pushed"] = position
                    if position >= len(ranking):
                        fresh["versions"][version]["filled_at"] = self.clock()
        if total:
            logger.info("project %s: filled %s to %d of %d tasks (+%d)", self.project_id, version, position,
                        len(ranking), total)
        return total

    def add_tasks(self, part: Ranking) -> int:
        """New tasks scored by the current version: pushed now if they rank within the pushed depth
        (pushing a low-scored one would put it above better tasks not pushed yet)."""
        with _local_lock(self.project_dir):
            data = self.ledger.read()
            version = data.get("current")
            if not version or not len(part):
                return 0
            try:
                ranking = Ranking.load(self.ranking_path(version))
            except (OSError, ValueError, KeyError):
                return 0
            ranking = ranking.without(part.task_ids.tolist())
            pushed = min(int(data["versions"].get(version, {}).get("pushed", 0)), len(ranking))
            if pushed >= len(ranking):
                within = np.ones(len(part), bool)
            elif pushed == 0:
                within = np.zeros(len(part), bool)
            else:
                within = part.scores >= ranking.scores[pushed - 1]
            now_part = part.select(within)
            created = self._push(now_part, 0, len(now_part), version) if len(now_part) else 0
            merged = ranking.merged(part)
            merged.save(self.ranking_path(version))
            with self.ledger.editing() as latest:
                if version in latest["versions"]:
                    latest["versions"][version].update(pool=len(merged), pushed=pushed + int(within.sum()))
            return created

    # -- 3. retire ---------------------------------------------------------------------------------
    def adopt_unknown_versions(self, is_ours: Callable[[str], bool]) -> list[str]:
        """Versions of ours in Label Studio that the ledger does not know (older installs, a lost
        ledger): their grace period starts now."""
        counts = labelstudio.model_version_counts(self.client, self.project_id)
        now = self.clock()
        adopted = []
        with self.ledger.editing() as data:
            for version, count in counts.items():
                if count and is_ours(version) and version not in data["versions"] and version != data.get("current"):
                    data["versions"][version] = {"superseded_at": now, "adopted": True, "pushed": count}
                    adopted.append(version)
        if adopted:
            logger.info("project %s: adopted %d unknown versions for retirement: %s", self.project_id, len(adopted),
                        adopted)
        return adopted

    def due_for_retirement(self, grace: float) -> list[str]:
        data = self.ledger.read()
        now = self.clock()
        due = [(e["superseded_at"], v) for v, e in data["versions"].items()
               if v != data.get("current") and e.get("superseded_at") is not None and not e.get("retired_at")
               and now - e["superseded_at"] >= grace]
        return [v for _, v in sorted(due)]

    def retire(self, grace: float, max_seconds: float = 20.0, label_studio_version: str | None = None,
               should_stop: Callable[[], bool] = lambda: False) -> int:
        """Delete the predictions of versions superseded at least `grace` seconds ago; returns rows deleted."""
        started, deleted = self.clock(), 0

        def out_of_time() -> bool:
            return self.clock() - started >= max_seconds or should_stop()

        for version in self.due_for_retirement(grace):
            if version == label_studio_version:
                continue  # someone pointed Label Studio back at it: it is in use
            while True:
                if out_of_time():
                    return deleted
                ids = labelstudio.version_prediction_ids(self.client, self.project_id, version, RETIRE_PAGE)
                if not ids:
                    with self.ledger.editing() as data:
                        if version in data["versions"]:
                            data["versions"][version]["retired_at"] = self.clock()
                    logger.info("project %s: retired %s (all its predictions deleted)", self.project_id, version)
                    break
                for start in range(0, len(ids), RETIRE_CONCURRENCY):
                    batch = ids[start:start + RETIRE_CONCURRENCY]
                    with ThreadPoolExecutor(max_workers=len(batch)) as pool:
                        deleted += sum(pool.map(lambda i: labelstudio.delete_prediction(self.client, i), batch))
                    if out_of_time():
                        return deleted
        return deleted

    def forget_retired(self, keep_seconds: float = 7 * 86400) -> None:
        """Drop ledger entries of versions retired long ago (the ledger stays small)."""
        now = self.clock()
        with self.ledger.editing() as data:
            for version in [v for v, e in data["versions"].items()
                            if e.get("retired_at") and now - e["retired_at"] > keep_seconds]:
                del data["versions"][version]
