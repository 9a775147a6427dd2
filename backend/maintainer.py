"""Background upkeep of every project's queue in Label Studio: recover, relist, fill, retire.

One thread per web process wakes every MCM_MAINTAIN_SECONDS and, for each project
with a model (skipping a project while it trains, and any project another process
is already maintaining), in this order:
1. recover: a model trained but never published (the process died between saving
   it and pushing its scores) is published now (not one that had nothing to score: every
   task labeled; it waits for new tasks, found by 2.); if Label Studio's
   project.model_version lags ours (an older version of ours, empty, or the ML
   backend's title, as Label Studio sets it on connect) it is switched back. A
   version that is not ours (another model the team chose) is left alone and
   reported in /mcm/status.
2. relist: the pool of unlabeled tasks is listed again when older than
   MCM_POOL_RELIST_SECONDS; new tasks are scored and join the queue.
3. fill and 4. retire, per backend/publishing.py, each within a time budget so a
   big project never stalls the others.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .label_config import config_from_meta
from .labelstudio import client as labelstudio
from .ledger import project_lock
from .publishing import has_nothing_to_score
from .refresh import refresh_project
from .report.source import remember_enabled_at
from .scoring import score_new_tasks
from .versions import VERSION_RE

logger = logging.getLogger(__name__)

FILL_BUDGET_SECONDS = 30.0
RETIRE_BUDGET_SECONDS = 20.0
CHECK_LABEL_STUDIO_SECONDS = 60.0
ERROR_LOG_SECONDS = 300.0
STARTUP_DELAY_SECONDS = 2.0


def is_our_version(version: str | None) -> bool:
    return bool(version) and bool(VERSION_RE.match(version))


class Maintainer:
    """Runs `maintain(project_id)` for every known project, periodically, in one daemon thread."""

    def __init__(self, context, is_busy: Callable[[int], bool], *, interval: float | None = None,
                 clock: Callable[[], float] = time.time,
                 on_settled: Callable[[int, str], None] | None = None,
                 is_connected: Callable[[int], bool] = lambda project_id: True) -> None:
        self.context = context
        self.settings = context.settings
        self.is_busy = is_busy
        self.is_connected = is_connected  # the web app's check (backend/connections.py): models alone do not count
        self.on_settled = on_settled  # a version current for MCM_FILL_AFTER_SECONDS (the report evaluates it)
        self.interval = float(interval if interval is not None else self.settings.maintain_seconds)
        self.clock = clock
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._checked_at: dict[int, float] = {}
        self._adopted: set[int] = set()
        self._logged_error_at: dict[int, float] = {}
        self.foreign_version: dict[int, str] = {}

    # -- thread ------------------------------------------------------------------------------------
    def start(self) -> "Maintainer":
        if self.settings.label_studio_url and self.settings.label_studio_api_key and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mcm-maintainer", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._wake.set()

    def _loop(self) -> None:
        self._wake.wait(min(self.interval, STARTUP_DELAY_SECONDS))  # let start-up finish first
        while not self._stop.is_set():
            for project_id in self.context.projects.known():
                if self._stop.is_set():
                    return
                if self.is_connected(project_id):
                    self.maintain_logged(project_id)
            self._wake.wait(self.interval)
            self._wake.clear()

    def maintain_logged(self, project_id: int) -> None:
        try:
            self.maintain(project_id)
        except Exception as exc:  # Label Studio down, disk full...: try again next pass
            now = self.clock()
            if now - self._logged_error_at.get(project_id, 0.0) >= ERROR_LOG_SECONDS:
                logger.warning("project %s: queue upkeep failed (%s); retrying every %.0fs", project_id,
                               labelstudio.describe_error(exc), self.interval)
                self._logged_error_at[project_id] = now

    # -- one pass for one project ------------------------------------------------------------------
    def maintain(self, project_id: int) -> None:
        if self.is_busy(project_id):
            return
        model = self.context.projects.get(project_id).model
        if model is None:
            return
        config = config_from_meta(model.meta)
        with project_lock(self.settings.project_dir(project_id), blocking=False) as mine:
            if not mine:
                return  # another process maintains this project right now
            publisher = self.context.publisher(project_id, config)
            label_studio_version = self.recover(project_id, publisher, model.version)
            self.relist(project_id, config, model)
            publisher.fill(fill_after=self.settings.fill_after_seconds, max_seconds=FILL_BUDGET_SECONDS,
                           should_stop=lambda: self._stop.is_set() or self.is_busy(project_id))
            self.settled(project_id, publisher, model.version)
            if project_id not in self._adopted:
                publisher.adopt_unknown_versions(is_our_version)
                self._adopted.add(project_id)
            publisher.retire(self.settings.prediction_grace_seconds, RETIRE_BUDGET_SECONDS, label_studio_version,
                             should_stop=lambda: self._stop.is_set() or self.is_busy(project_id))
            publisher.forget_retired()

    def settled(self, project_id: int, publisher, version: str) -> None:
        """Tell `on_settled` about a version current for MCM_FILL_AFTER_SECONDS (no retraining since)."""
        entry = publisher.ledger.read()["versions"].get(version, {})
        published = entry.get("published_at")
        if self.on_settled and published is not None \
                and self.clock() - published >= self.settings.fill_after_seconds:
            self.on_settled(project_id, version)

    def recover(self, project_id: int, publisher, version: str) -> str | None:
        """Publish an unpublished model; point Label Studio back at ours if it lags. Returns LS's version."""
        ledger = publisher.ledger.read()
        if ledger.get("current") != version and not has_nothing_to_score(ledger, version):  # that one waits for tasks
            entry = ledger["versions"].get(version) or {}
            if entry.get("pushed"):
                logger.warning("project %s: %s was pushed but never made current; switching now", project_id, version)
                publisher.finish(version)
            else:
                logger.warning("project %s: %s was trained but never published (interrupted?); publishing now",
                               project_id, version)
                refresh_project(project_id, self.context, lock=False)
            self._checked_at.pop(project_id, None)
        now = self.clock()
        if now - self._checked_at.get(project_id, -1e18) < CHECK_LABEL_STUDIO_SECONDS:
            return None
        client = self.context.client()
        current = publisher.ledger.read().get("current")
        lsv = labelstudio.get_project(client, project_id).get("model_version") or ""
        lsv = lsv if isinstance(lsv, str) else ""  # anything else is no version of anyone's
        self._checked_at[project_id] = now
        try:  # when enable-ordering created the tab, remembered before a person's edit in the UI can drop it
            remember_enabled_at(client, project_id, self.settings.project_dir(project_id),
                                self.context.projects.get(project_id).skipped)
        except Exception as exc:  # the report says "unknown" meanwhile; never stops the upkeep
            logger.info("project %s: cannot read the Data Manager tabs: %s", project_id,
                        labelstudio.describe_error(exc))
        if current and lsv != current:
            if not lsv or is_our_version(lsv) or lsv in labelstudio.backend_titles(client, project_id):
                logger.warning("project %s: Label Studio's model_version is %r, not %s; switching it back",
                               project_id, lsv, current)
                labelstudio.set_model_version(client, project_id, current)
                self.foreign_version.pop(project_id, None)
                return current
            if self.foreign_version.get(project_id) != lsv:
                logger.warning("project %s: Label Studio orders by another model's version %r; left as is (the "
                               "tail-first tab shows that model's scores until `admin enable-ordering`)",
                               project_id, lsv)
            self.foreign_version[project_id] = lsv
        else:
            self.foreign_version.pop(project_id, None)
        return lsv

    def relist(self, project_id: int, config, model) -> int:
        """List the unlabeled tasks again when the pool is stale; score and queue the new ones."""
        pool = self.context.pool(project_id, config.image_key)
        if not pool.stale(self.clock(), self.settings.pool_relist_seconds):
            return 0
        before = {t["id"] for t in pool.tasks()}
        listed = labelstudio.list_unlabeled_tasks(self.context.client(), project_id)
        pool.replace(listed, listed_at=self.clock())
        new = [t for t in listed if int(t["id"]) not in before]
        if not new:
            return 0
        if has_nothing_to_score(self.context.ledger(project_id), model.version):  # its first tasks: publish it
            refresh_project(project_id, self.context, lock=False)
            return len(new)
        part, _skipped = score_new_tasks(project_id, new, self.context, model)
        pushed = self.context.publisher(project_id, config).add_tasks(part)
        logger.info("project %s: relisted the pool: %d new unlabeled tasks scored, %d pushed at once", project_id,
                    len(part), pushed)
        return len(part)
