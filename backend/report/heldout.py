"""How well the miner ranks the project's own tail examples, estimated without leakage.

Stratified k-fold cross-validation over the labeled tasks: each fold's MinorityMiner (and, for
the trainable simple-cnn, each fold's CNN) is fitted on the other folds only and scores the
held-out rows as if they were unlabeled, with the same [0, 1] mapping as the pushed scores.
Positives are the tail classes of the model version being evaluated. The fold models also score
the unlabeled pool, so "likely tail tasks left" compares the held-out precision threshold with
scores on the same scale (the model trained on every label can score on another one). Beside it, the usual
uncertainty baselines (entropy, max-score, margin, weighted entropy) computed from a plain
cross-entropy softmax head fitted on the same fold's features (mcm_core.baselines), i.e. what an
ordinary classifier's uncertainty would rank.

It costs k trainings, so it runs once per model version, in one background thread of the web
process, while the project is not training (it pauses between folds when a training starts), and
is cached as MODEL_DIR/<project>/<version>/heldout.json. Deterministic given MCM_SEED.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from mcm_core import MinorityMiner
from mcm_core.atomic import atomic_savez, atomic_write_json
from mcm_core.baselines import EntropyStrategy, entropy, margin_uncertainty, max_score, weighted_entropy

from ..label_config import config_from_meta
from ..labels import collect_labels
from ..labelstudio.client import describe_error, traceback_is_safe
from ..ranking import map_scores
from ..task_kinds import kind_of
from . import stats

if TYPE_CHECKING:
    from ..context import Context

logger = logging.getLogger(__name__)

MIN_LABELED = 20
MAX_POOL = 20_000  # pool tasks the fold models score (a seeded sample beyond; the count is scaled)
MIN_TAIL = 3  # and at least one per fold: a fold's tail rows are scored by models that saw other tail rows
RETRY_FAILED_SECONDS = 300.0
BUSY_RECHECK_SECONDS = 5.0
DETECTION_UNSUPPORTED = ("the held-out evaluation ranks labeled tasks by one class each; an object detection "
                         "project's images hold several boxes, so it is not computed (docs/detection.md)")
BASELINE_SOURCE = ("uncertainty of a plain cross-entropy softmax head fitted on the same fold's features "
                   "(mcm_core.baselines)")


class Postponed(Exception):
    """A training started (or the process is closing): the evaluation is retried later."""


def baseline_scores(probs: np.ndarray, class_proportions: np.ndarray) -> dict[str, np.ndarray]:
    return {"entropy": entropy(probs), "maxscore": max_score(probs), "margin": margin_uncertainty(probs),
            "weighted_entropy": weighted_entropy(probs, class_proportions)}


def too_little_data(y: np.ndarray, tail_idx: Sequence[int], folds: int) -> str | None:
    """Why a held-out evaluation is impossible or meaningless here, or None."""
    return too_few_labels(len(y), int(np.isin(y, list(tail_idx)).sum()), bool(tail_idx), folds)


def too_few_labels(n_labeled: int, n_tail: int, has_tail: bool, folds: int) -> str | None:
    """`too_little_data` from counts: the report asks it before requesting an evaluation, so that its
    card says "too little data" at once instead of "being computed" (docs/report.md)."""
    if not has_tail:
        return "no tail class: every labeled class has at least 0.3 x the mean class count"
    if n_labeled < max(MIN_LABELED, 2 * folds):
        return f"{n_labeled} labeled tasks with images; the held-out evaluation needs at least " \
               f"{max(MIN_LABELED, 2 * folds)}"
    if n_tail < max(MIN_TAIL, folds):
        return f"{n_tail} labeled tail-class task(s); the held-out evaluation needs at least {max(MIN_TAIL, folds)}"
    return None


def cross_validate(y: np.ndarray, num_classes: int, tail_idx: Sequence[int], folds: int, seed: int,
                   fold_features: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]],
                   make_miner: Callable[[], object], transform: str,
                   should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Held-out scores of every row (each from the fold model that did not see it), summarised.

    `fold_features(train_mask)` returns (feature rows for ALL labeled rows, feature rows of the
    unlabeled pool or None) from a feature extractor fitted on the training rows only (a frozen
    backbone simply returns the cached features). The pool's scores on the fold models' scale (the
    mean over folds) are returned as "pool_scores": the held-out precision threshold applies to
    them, not to the scores of the model trained on every label, whose scale can differ.
    """
    y = np.asarray(y, dtype=np.int64)
    fold_of = stats.stratified_folds(y, folds, seed)
    scores = {name: np.zeros(len(y)) for name in ("miner", "entropy", "maxscore", "margin", "weighted_entropy")}
    predicted = np.zeros(len(y), dtype=np.int64)
    pool_scores = None
    for fold in range(folds):
        if should_stop():
            raise Postponed(f"stopped before fold {fold + 1} of {folds}")
        train, test = fold_of != fold, fold_of == fold
        x, x_pool = fold_features(train)
        miner = make_miner().fit(x[train], y[train], tail_idx)  # the version's tail set, as in training
        scores["miner"][test] = map_scores(miner.score_samples(x[test]), miner.score_upper_bound, transform)
        predicted[test] = np.asarray(miner.predict_proba(x[test])).argmax(axis=1)
        if x_pool is not None and len(x_pool):
            part = map_scores(miner.score_samples(x_pool), miner.score_upper_bound, transform) / folds
            pool_scores = part if pool_scores is None else pool_scores + part
        head = EntropyStrategy(num_classes, seed=seed).fit(x[train], y[train])
        for name, values in baseline_scores(head.predict_proba(x[test]), head.class_proportions_).items():
            scores[name][test] = values
    is_tail = np.isin(y, list(tail_idx))
    summary = stats.heldout_summary(is_tail, scores, fold_of)
    summary["tpr"], summary["fpr"] = stats.confusion_rates(is_tail, np.isin(predicted, list(tail_idx)))
    summary["pool_scores"] = pool_scores
    return summary


class HeldOut:
    """Each model version's held-out evaluation: computed once in a background thread, then read from disk."""

    def __init__(self, context: "Context", is_busy: Callable[[int], bool], clock: Callable[[], float] = time.time):
        self.context = context
        self.folds = int(context.settings.report_folds)
        self.is_busy = is_busy
        self.clock = clock
        self._pending: dict[int, str] = {}           # project -> version to evaluate (newest request wins)
        self._running: tuple[int, str] | None = None
        self._failed: dict[tuple[int, str], tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- results ------------------------------------------------------------------------------------
    def path(self, project_id: int, version: str) -> str:
        return os.path.join(self.context.projects.store(project_id).version_dir(version), "heldout.json")

    def read(self, project_id: int, version: str) -> dict | None:
        try:
            with open(self.path(project_id, version)) as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def latest_ready(self, project_id: int, up_to: str) -> dict | None:
        """The newest completed evaluation of `up_to` or an older version (shown while `up_to` is computed)."""
        versions = self.context.projects.store(project_id).versions()
        if up_to in versions:
            versions = versions[:versions.index(up_to) + 1]
        for version in reversed(versions):
            found = self.read(project_id, version)
            if found is not None and found.get("status") == "ready":
                return found
        return None

    def state(self, project_id: int, version: str) -> tuple[str, str | None]:
        """(ready | computing | queued | failed | disabled | not requested, message)."""
        if self.folds < 2:
            return "disabled", "MCM_REPORT_FOLDS is below 2: the held-out evaluation is switched off"
        if self.read(project_id, version) is not None:
            return "ready", None
        with self._lock:
            if self._running == (project_id, version):
                return "computing", None
            if self._pending.get(project_id) == version:
                waiting = " (waiting while the project trains)" if self.is_busy(project_id) else ""
                return "queued", f"queued{waiting}"
            failed = self._failed.get((project_id, version))
        if failed:
            return "failed", failed[1]
        return "not requested", None

    # -- background work ----------------------------------------------------------------------------
    def request(self, project_id: int, version: str) -> None:
        """Evaluate `version` in the background unless it is done, running, or failed recently."""
        if self.folds < 2 or self._stop.is_set() or self.read(project_id, version) is not None:
            return
        with self._lock:
            if self._running == (project_id, version):
                return
            failed = self._failed.get((project_id, version))
            if failed and self.clock() - failed[0] < RETRY_FAILED_SECONDS:
                return
            self._pending[project_id] = version
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="mcm-heldout", daemon=True)
                self._thread.start()
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()

    def _next(self) -> tuple[int, str] | None:
        with self._lock:
            for project_id, version in list(self._pending.items()):
                if not self.is_busy(project_id):
                    del self._pending[project_id]
                    self._running = (project_id, version)
                    return project_id, version
        return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self._next()
            if job is None:
                self._wake.wait(BUSY_RECHECK_SECONDS)
                self._wake.clear()
                continue
            project_id, version = job
            try:
                self.run(project_id, version)
            except Postponed as exc:  # retried later, unless a newer version of the project is waiting
                logger.info("project %s: held-out evaluation of %s postponed (%s)", project_id, version, exc)
                with self._lock:
                    self._pending.setdefault(project_id, version)
            except Exception as exc:  # one failing project never stops the others' evaluations
                logger.error("project %s: held-out evaluation of %s failed: %s", project_id, version,
                             describe_error(exc), exc_info=traceback_is_safe(exc))
                with self._lock:
                    self._failed[(project_id, version)] = (self.clock(), describe_error(exc))
            finally:
                with self._lock:
                    self._running = None

    def run(self, project_id: int, version: str) -> dict:
        """Compute and store the evaluation of `version` now (the background thread's job)."""
        started = time.monotonic()
        result = self.compute(project_id, version, should_stop=lambda: self._stop.is_set() or self.is_busy(project_id)
                              or self._pending.get(project_id, version) != version)  # a newer version waits
        result.update(version=version, computed_at=stats.iso(self.clock()),
                      seconds=round(time.monotonic() - started, 1))
        atomic_write_json(self.path(project_id, version), result)
        logger.info("project %s: held-out evaluation of %s: %s in %.1fs", project_id, version,
                    result.get("status"), result["seconds"])
        return result

    def pool_path(self, project_id: int, version: str) -> str:
        return os.path.join(self.context.projects.store(project_id).version_dir(version), "heldout_pool.npz")

    def read_pool(self, project_id: int, version: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(pool task ids, their mean fold-model score) stored with `version`'s evaluation."""
        try:
            with np.load(self.pool_path(project_id, version), allow_pickle=False) as data:
                return data["task_ids"], data["scores"]
        except (OSError, ValueError, KeyError):
            return None

    def compute(self, project_id: int, version: str, should_stop: Callable[[], bool] = lambda: False) -> dict:
        context, settings = self.context, self.context.settings
        meta = context.projects.store(project_id).read_meta(version)
        if not kind_of(config_from_meta(meta)).heldout_supported:
            return {"status": "unsupported", "message": DETECTION_UNSUPPORTED, "folds": self.folds}
        labeled = collect_labels(context.client(), project_id)
        config = labeled.config
        ok, keys, _skipped = context.ingest.cached_arrays(project_id, labeled.tasks, config)
        y = np.asarray([labeled.labels[i] for i in ok], dtype=np.int64)
        tails = [c for c in meta.get("tail_classes", []) if c in config.classes]
        tail_idx = [config.classes.index(c) for c in tails]
        base = {"folds": self.folds, "seed": settings.seed, "n_labeled": int(len(y)), "tail_classes": tails,
                "baseline_source": BASELINE_SOURCE}
        problem = too_little_data(y, tail_idx, self.folds)
        if problem:
            return {"status": "too_little_data", "message": problem, **base}
        cache = context.ingest.cache(project_id)
        cached = cache.get(keys)
        pool_ids, pool_cached, fraction = self._pool_rows(project_id, config, set(labeled.annotated_ids))
        extractor, num_classes = context.extractor, len(config.classes)

        def fold_features(train: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            if not extractor.trainable:
                return np.asarray(cached, dtype=np.float32), pool_cached
            if should_stop():
                raise Postponed("a training started")
            # as the version's own pre-fill folds (backend/fitting.py): a backbone that learns from unlabeled
            # images sees the pool and the held-out fold's images, never the held-out labels
            held = cached[~np.asarray(train, bool)]  # train: a mask over the labeled rows
            unlabeled = held if pool_cached is None else np.concatenate([pool_cached, held])
            cnn = extractor.train(cached[train], y[train], num_classes=num_classes, seed=settings.seed,
                                  unlabeled=unlabeled)
            pool = extractor.features(pool_cached, cnn) if pool_cached is not None and len(pool_cached) else None
            return extractor.features(cached, cnn), pool

        summary = cross_validate(y, num_classes, tail_idx, self.folds, settings.seed, fold_features,
                                 lambda: MinorityMiner(num_classes=num_classes, seed=settings.seed,
                                                       **settings.miner_kwargs),
                                 settings.score_transform, should_stop)
        pool_scores = summary.pop("pool_scores")
        if pool_scores is not None:
            atomic_savez(self.pool_path(project_id, version), task_ids=pool_ids, scores=pool_scores)
        return {"status": "ready", **base, **summary, "pool_evaluated": 0 if pool_scores is None else len(pool_ids),
                "pool_sample_fraction": fraction}

    def _pool_rows(self, project_id: int, config, annotated: set[int]
                   ) -> tuple[np.ndarray, np.ndarray | None, float]:
        """Task ids and cached rows of the unlabeled pool (a seeded sample of MAX_POOL beyond), and the
        sampled fraction."""
        tasks = [t for t in self.context.pool(project_id, config.image_key).tasks() if t["id"] not in annotated]
        fraction = 1.0
        if len(tasks) > MAX_POOL:
            rng = np.random.default_rng(self.context.settings.seed)
            fraction = MAX_POOL / len(tasks)
            tasks = [tasks[i] for i in sorted(rng.choice(len(tasks), MAX_POOL, replace=False).tolist())]
        _ok, keys, _skipped = self.context.ingest.cached_arrays(project_id, tasks, config)
        if not keys:
            return np.zeros(0, np.int64), None, fraction
        ids = np.asarray([k[0] for k in keys], dtype=np.int64)
        return ids, self.context.ingest.cache(project_id).get(keys), fraction
