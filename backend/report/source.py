"""What the mining report shows, gathered: annotations from Label Studio, the rest from MODEL_DIR.

Inputs: the project's annotated tasks with their annotations' times (Label Studio's export,
backend/labelstudio/client.py), the Data Manager tabs (when `enable-ordering` created them), the
current model version's meta.json and held-out evaluation (backend/report/heldout.py), the published
version's ranking of the pool (ranking.npz) and the publishing ledger (training and re-scoring
times of each version). The numbers come from backend/report/stats.py, the figures from
backend/report/figures.py, the page from backend/report/page.py.

A report is built at most once per CACHE_SECONDS per project (the page, its JSON and its PNG
figures are usually fetched together), and again as soon as the held-out evaluation changes state.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Callable

import httpx
import numpy as np

from mcm_core.atomic import atomic_write_json

from ..label_config import parse_label_config
from ..labelstudio import client as labelstudio
from ..labelstudio.tabs import ENABLED_AT_KEY
from ..labelstudio.tabs import enabled_at as tab_enabled_at
from ..ledger import Ledger
from ..ranking import Ranking
from ..task_kinds import kind_of
from ..validation import Skipped
from ..versions import VERSION_RE, ModelStore, counted_tail_names
from . import stats
from .document import Report
from .figures import figure_states
from .heldout import HeldOut, too_few_labels

if TYPE_CHECKING:
    from ..context import Context

logger = logging.getLogger(__name__)

CACHE_SECONDS = 20.0
ORDERING_FILE = "ordering.json"
UNKNOWN_ORDERING = ("unknown: no Data Manager tab of the project carries the time `admin enable-ordering` records "
                    "(tabs made by hand, by an older backend, or edited in the UI before the backend read them)")


# ------------------------------------------------------------------------------ when ordering was enabled
# The time the backend saw first, per project directory, when MODEL_DIR could not keep it (read-only):
# this process still never adopts a later edit of the tab.
_first_seen: dict[str, dict] = {}
_memory_lock = threading.Lock()


def read_enabled_at(project_dir: str) -> dict | None:
    """The recorded first time ordering was enabled (ordering.json, else this process's memory)."""
    try:
        with open(os.path.join(project_dir, ORDERING_FILE)) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict) and stats.label_studio_time(data.get("enabled_at")) is not None:
        return data
    with _memory_lock:
        return _first_seen.get(project_dir)


def tab_times(client, project_id: int, skipped: Skipped) -> list[tuple[float, str]]:
    """(ENABLED_AT_KEY as epoch seconds, the tab's title) of each tab that carries a usable one; one
    that is no time, or a time outside stats.TIME_RANGE, is left out and counted in `skipped`."""
    views = labelstudio.list_views(client, project_id)
    found = []
    for view in views:
        record = tab_enabled_at(view, skipped)
        if record is None:
            continue
        at, title = record[0].timestamp(), record[1]
        if not stats.in_time_range(at):
            skipped.add("tabs", None, f"tab {title!r}: {ENABLED_AT_KEY} {stats.iso(at)} is outside "
                                      f"{stats.TIME_RANGE}")
            continue
        found.append((at, title))
    return found


def _note_if_moved(project_dir: str, known: dict, found: list[tuple[float, str]], skipped: Skipped) -> None:
    """When the tabs now say something else than what was recorded first: counted and logged (once per value)."""
    if not found:
        return
    at, title = min(found)
    if stats.iso(at) != known.get("enabled_at"):
        skipped.add("tabs", None, f"tab {title!r}: {ENABLED_AT_KEY} {stats.iso(at)} ignored: the backend recorded "
                                  f"{known.get('enabled_at')} first ({os.path.join(project_dir, ORDERING_FILE)}; "
                                  "delete it to re-read the tabs)")


def remember_enabled_at(client, project_id: int, project_dir: str, skipped: Skipped | None = None) -> dict | None:
    """When ordering was first enabled: the earliest ENABLED_AT_KEY of the project's tabs the first time
    the backend saw one, kept in MODEL_DIR/<project>/ordering.json (atomically written).

    First seen wins: Label Studio's UI may drop the key when a tab is edited, and any Label Studio user
    can write another date into a tab, which would move the report's before/after split. A later,
    different value is ignored and logged. Unusable tab times are counted in `skipped`."""
    skipped = skipped if skipped is not None else Skipped(project_id)
    known = read_enabled_at(project_dir)
    try:
        found = tab_times(client, project_id, skipped)
    except (labelstudio.LabelStudioError, httpx.HTTPError, ValueError):
        if known:
            return known
        raise
    if known:
        _note_if_moved(project_dir, known, found, skipped)
        return known
    if not found:
        return None
    at, title = min(found)
    record = {"enabled_at": stats.iso(at), "tab": title, "read_at": stats.iso(time.time())}
    try:
        atomic_write_json(os.path.join(project_dir, ORDERING_FILE), record)
    except OSError as exc:  # read-only MODEL_DIR: this process remembers it
        logger.warning("project %s: cannot record when ordering was enabled (%s); kept in memory", project_id, exc)
        with _memory_lock:
            record = _first_seen.setdefault(project_dir, record)
    return record


# ------------------------------------------------------------------------------ versions
def version_rows(store: ModelStore, ledger: dict, current: str | None) -> list[dict]:
    """One row per version of ours known to the store (meta.json) or the ledger, oldest first."""
    names = {v for v in list(store.versions()) + list(ledger.get("versions", {})) if VERSION_RE.match(v)}
    rows = []
    for version in sorted(names, key=lambda v: int(VERSION_RE.match(v).group(1))):
        entry = ledger["versions"].get(version, {})
        try:
            meta = store.read_meta(version)
        except (OSError, ValueError):
            meta = {}
        info = {**entry, **meta}
        if not info.get("trained_at"):
            continue  # adopted from an older install: nothing known about it
        parts = [entry[k] for k in ("pool_s", "score_s", "push_head_s", "switch_s") if entry.get(k) is not None]
        rows.append({"version": version, "number": int(VERSION_RE.match(version).group(1)),
                     "trained_at": info.get("trained_at"), "n_labeled": info.get("n_labeled"),
                     "train_seconds": info.get("train_seconds"), "tail_classes": info.get("tail_classes"),
                     "rescore_seconds": round(sum(parts), 3) if parts else None,
                     "published_at": stats.iso(entry.get("published_at")),
                     "retired": bool(entry.get("retired_at")), "current": version == current})
    return rows


def _heldout_part(heldout: HeldOut, project_id: int, version: str | None,
                  labels_now: tuple[int, int, bool] | None = None) -> tuple[dict, dict | None]:
    """(the summary's "heldout" entry, the evaluation shown: the version's, or an older one meanwhile).
    `labels_now`: (labeled tasks, of them tail, whether there is a tail class) as Label Studio has them:
    when they are too few, the answer is "too little data" at once, not "being computed"."""
    if version is None:
        return {"status": "too_little_data", "message": "no trained model yet", "version": None}, None
    state, message = heldout.state(project_id, version)
    problem = too_few_labels(*labels_now, heldout.folds) if labels_now and state != "ready" and heldout.folds >= 2 \
        else None
    if problem:
        return {"status": "too_little_data", "message": problem, "version": version}, None
    if state in ("not requested", "failed"):  # a failure is retried after RETRY_FAILED_SECONDS
        heldout.request(project_id, version)
        state, message = heldout.state(project_id, version)
    result = heldout.read(project_id, version) if state == "ready" else None
    if result is not None and result.get("status") != "ready":  # e.g. too little data, stored
        return {"status": result.get("status"), "message": result.get("message"), "version": version}, None
    shown = result or heldout.latest_ready(project_id, version)
    part = {"status": state, "message": message, "version": version}
    if shown:
        best = shown.get("best_baseline")
        verdict = stats.beats_random(shown["miner"]["auc_pr"], shown["prevalence"], shown["miner"]["fold_auc_pr"])
        part.update(better_than_random=verdict["better"], random_margin=verdict["margin"])
        part.update(
            evaluated_version=shown.get("version"), folds=shown.get("folds"), seed=shown.get("seed"),
            n_labeled=shown.get("n_labeled"), n_tail=shown.get("n_tail"), prevalence=shown.get("prevalence"),
            tail_classes=shown.get("tail_classes"), auc_pr=shown["miner"]["auc_pr"],
            fold_auc_pr=shown["miner"]["fold_auc_pr"], best_baseline=best,
            best_baseline_auc_pr=shown["baselines"][best]["auc_pr"] if best else None,
            baselines_auc_pr={k: v["auc_pr"] for k, v in shown["baselines"].items()},
            baseline_source=shown.get("baseline_source"), threshold=shown.get("threshold"),
            tpr=shown.get("tpr"), fpr=shown.get("fpr"), pool_evaluated=shown.get("pool_evaluated"),
            pool_sample_fraction=shown.get("pool_sample_fraction"), calibration=shown.get("calibration"),
            computed_at=shown.get("computed_at"),
            seconds=shown.get("seconds"))
    return part, shown


def _likely_tail(heldout: HeldOut, project_id: int, shown: dict | None, ranking: Ranking) -> dict:
    """How many unlabeled tasks the fold models score at or above the held-out precision threshold,
    and the score of the tab (current ranking) above which as many tasks sit."""
    threshold = ((shown or {}).get("threshold") or {}).get("score")
    stored = heldout.read_pool(project_id, shown["version"]) if shown and threshold is not None else None
    if stored is None:
        return {"threshold_score": threshold, "likely_tail_left": None, "queue_score_at_likely": None}
    ids, scores = stored
    still = np.isin(ids, ranking.task_ids)  # not labeled since the evaluation
    fraction = float(shown.get("pool_sample_fraction") or 1.0)
    left = min(len(ranking), int(round(stats.count_at_or_above(scores[still], threshold) / fraction)))
    return {"threshold_score": threshold, "likely_tail_left": left,
            "queue_score_at_likely": float(ranking.scores[left - 1]) if left else None,
            "histogram_likely": stats.histogram(ranking.scores[:left])["counts"]}


def _calibrated_rate(heldout: HeldOut, project_id: int, shown: dict | None, ranking: Ranking,
                     after: dict) -> dict | None:
    """The base rate from the held-out calibration applied to the fold models' scores of the tasks still
    unlabeled (same scale; a sampled pool is scaled up), or None without a usable evaluation."""
    table = (shown or {}).get("calibration")
    stored = heldout.read_pool(project_id, shown["version"]) if table else None
    if stored is None:
        return None
    ids, scores = stored
    still = np.isin(ids, ranking.task_ids)  # not labeled since the evaluation
    if not still.any():
        return None
    try:
        expected, variance = stats.calibrated_count(table, scores[still])
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("project %s: unusable calibration table in the held-out evaluation: %s", project_id, exc)
        return None
    fraction = float(shown.get("pool_sample_fraction") or 1.0)
    scale = len(ranking) / max(1, int(still.sum())) if fraction < 1.0 else 1.0
    return stats.rate_from_calibration(after["n_tail"], after["n"], expected * scale, variance * scale * scale,
                                        len(ranking))


def base_rate_part(before: dict | None, calibrated: dict | None) -> dict:
    """The summary's base-rate fields: the estimate shown (None: "unknown") and the best candidate."""
    from_labels = stats.rate_from_labels(before["n_tail"], before["n"]) if before else None
    shown, best = stats.choose_base_rate([from_labels, calibrated])

    def rounded(estimate: dict | None) -> dict | None:
        return None if estimate is None else {**estimate, **{k: round(float(estimate[k]), 4)
                                                               for k in ("value", "low", "high")}}
    if shown is not None:
        note = None
    elif best is not None:
        note = (f"unknown: best estimate {best['value']:.1%}, 95 % interval {best['low']:.1%}-{best['high']:.1%} "
                f"({best['method']}): not known to within +-{stats.MAX_RELATIVE_ERROR:.0%}")
    else:
        note = ("unknown: it needs labels gathered before ordering, or the held-out evaluation's calibration "
                "(never the share of tasks predicted as tail)")
    return {"base_rate": None if shown is None else round(float(shown["value"]), 4),
            "base_rate_estimate": rounded(shown), "base_rate_best": rounded(best),
            "base_rate_method": shown["method"] if shown else note}


def _pool_part(heldout: HeldOut, project_id: int, project_dir: str, published: str | None, annotated: list,
               tail_idx: list[int], shown: dict | None, phases: dict
               ) -> tuple[dict, np.ndarray | None, dict]:
    """The unlabeled pool as the published ranking saw it (minus tasks labeled since): its score
    histogram, how many tail tasks are likely left, and the base rate a random queue would have had."""
    pool_scores = pool_pred = ranking = None
    if published:
        try:
            ranking = Ranking.load(os.path.join(project_dir, published, "ranking.npz"))
            ranking = ranking.without([int(t["id"]) for t in annotated])  # labeled since it was ranked
            pool_scores, pool_pred = ranking.scores, ranking.labels
        except (OSError, ValueError, KeyError):
            pass
    pool = {"version": published, "n_unlabeled": None if pool_scores is None else int(len(pool_scores))}
    calibrated = None
    if pool_scores is not None:
        likely = _likely_tail(heldout, project_id, shown, ranking)
        # what the current model predicts, for comparison only: not an estimate of the pool's tail count
        pool.update(predicted_tail=int(np.isin(pool_pred, tail_idx).sum()),
                    histogram=stats.histogram(pool_scores), precision_target=stats.PRECISION_TARGET, **likely)
        calibrated = _calibrated_rate(heldout, project_id, shown, ranking, phases.get("after", {"n": 0, "n_tail": 0}))
    return pool, pool_scores, base_rate_part(phases.get("before"), calibrated)


def build_report(context: "Context", heldout: HeldOut, project_id: int, last_error: str | None = None) -> Report:
    """Read everything the report shows and compute its numbers (raises LabelStudioError if Label
    Studio cannot be read). Half its length is the summary's literal: the JSON schema in one place."""
    client = context.client()
    project_dir = context.settings.project_dir(project_id)
    config = parse_label_config(labelstudio.get_label_config(client, project_id))
    classes = list(config.classes)
    annotated = labelstudio.list_annotated_tasks(client, project_id)
    skipped = context.projects.get(project_id).skipped
    events, n_annotations = stats.label_events(annotated, config, kind_of(config).label_event, skipped)
    counts = stats.class_counts(events, classes)
    model = context.projects.get(project_id).model
    meta = model.meta if model else {}
    ratios, tail_now = stats.skewness(counts, config, counted_tail_names(meta))
    tail = list(meta.get("tail_classes", tail_now)) if model else tail_now
    try:
        ordering, ordering_note = remember_enabled_at(client, project_id, project_dir, skipped), UNKNOWN_ORDERING
    except labelstudio.LabelStudioError as exc:  # the tabs could not be read: the rest of the report still can
        ordering, ordering_note = None, f"unknown: {exc}"
    enabled_at = stats.label_studio_time((ordering or {}).get("enabled_at"))
    store = context.projects.store(project_id)
    ledger = Ledger(project_dir).read()
    published = ledger.get("current") or (model.version if model else None)
    versions = version_rows(store, ledger, published)
    tail_then = stats.tail_when_labeled(
        [(stats.parse_time(v["published_at"] or v["trained_at"]), v["tail_classes"]) for v in versions], fallback=tail)
    buckets = stats.yield_buckets(events, tail_then, enabled_at)
    phases = stats.phase_yield(events, tail_then, enabled_at)
    version_tail = [c for c in tail if c in classes]
    labels_now = (len(events), sum(counts[c] for c in version_tail), bool(version_tail))
    heldout_part, shown = _heldout_part(heldout, project_id, model.version if model else None,
                                        labels_now if kind_of(config).heldout_supported else None)

    after = phases.get("after", {"n": 0, "n_tail": 0})
    pool, pool_scores, rate_part = _pool_part(heldout, project_id, project_dir, published, annotated,
                                              [classes.index(c) for c in version_tail], shown, phases)
    rate = rate_part["base_rate"]
    after_share = after.get("share")
    summary = {
        "project": project_id, "generated_at": stats.iso(time.time()),
        "model_version": model.version if model else None, "published_version": published,
        "classes": classes,
        "n_annotations": n_annotations, "n_labeled_tasks": len(events),
        "labeled_per_class": counts, "skewness_ratio": ratios, "tail_classes": tail, "tail_classes_now": tail_now,
        # declared by the admin (label config mcm_tail="true") vs counted; the rule of the model's version
        "tail_declared": list(meta.get("tail_declared", config.declared_tail)) if model else list(config.declared_tail),
        "tail_rule": meta.get("tail_rule") or ("declared by the admin and counted" if config.declared_tail
                                               else "counted: rare beyond chance, or never labeled"),
        "model": {"n_labeled": meta.get("n_labeled"), "labeled_per_class": meta.get("labeled_per_class"),
                  "trained_at": meta.get("trained_at")} if model else None,
        # do the features separate the classes (backend/fitting.reliability_meta): the first card says when not
        "reliability": meta.get("reliability") if model and isinstance(meta.get("reliability"), dict) else None,
        "ordering": {"enabled_at": (ordering or {}).get("enabled_at"), "tab": (ordering or {}).get("tab"),
                     "note": None if ordering else ordering_note},
        "tail_yield": {**{k: phases.get(k) for k in ("before", "after", "unknown")},
                       "bucket_size": stats.BUCKET_SIZE,
                       "buckets": [{**b, "first_at": stats.iso(b["first_at"]), "last_at": stats.iso(b["last_at"]),
                                    "share": round(b["share"], 4)} for b in buckets],
                       **rate_part,  # base_rate (None: unknown), base_rate_estimate, _best, _method
                       "lift_after": round(after_share / rate, 2) if after_share is not None and rate else None},
        "heldout": heldout_part, "pool": pool, "versions": versions, "last_error": last_error,
    }
    built = Report(project_id, summary, classes, tail, events, enabled_at, buckets, pool_scores, shown, versions)
    summary["figures"] = {name: {**state, "path": f"/mcm/report/{name}.png?project={project_id}"}
                          for name, state in figure_states(built).items()}
    return built


class Reports:
    """Built reports per project, reused for CACHE_SECONDS while the held-out evaluation's state is unchanged."""

    def __init__(self, context: "Context", heldout: HeldOut, last_error: Callable[[int], str | None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.context = context
        self.heldout = heldout
        self.last_error = last_error
        self.clock = clock
        self._cache: dict[int, tuple[float, tuple, Report]] = {}
        self._locks: dict[int, threading.Lock] = {}
        self._lock = threading.Lock()

    def _token(self, project_id: int) -> tuple:
        model = self.context.projects.get(project_id).model
        version = model.version if model else None
        return (version, self.heldout.state(project_id, version)[0] if version else None,
                Ledger(self.context.settings.project_dir(project_id)).read().get("current"))

    def get(self, project_id: int) -> Report:
        with self._lock:
            lock = self._locks.setdefault(project_id, threading.Lock())
        with lock:
            token = self._token(project_id)
            cached = self._cache.get(project_id)
            if cached and self.clock() - cached[0] < CACHE_SECONDS and cached[1] == token:
                return cached[2]
            built = build_report(self.context, self.heldout, project_id, self.last_error(project_id))
            self._cache[project_id] = (self.clock(), self._token(project_id), built)
            return built
