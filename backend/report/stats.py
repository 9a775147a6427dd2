"""The mining report's numbers: pure functions over labels with times, scores and held-out results.

Nothing here talks to Label Studio or reads MODEL_DIR (backend/report/source.py gathers the
inputs), so every figure the page shows can be checked by hand in a unit test.

Definitions (docs/report.md explains them for admins):
- a *label event* is a task's first usable annotation: when it became labeled, with its current
  class (the most recent annotation wins, as in training); in an object detection project, with
  the classes of its current boxes (class counts are then object counts, as in training);
- *tail yield* is the share of label events whose class was a tail class when it was labeled (a
  tail class of the model version serving the queue then; detection: whose image held an object
  of such a class), per bucket of consecutive events; a bucket never spans the moment ordering
  was enabled;
- the *base rate* is what random order would have yielded since ordering was enabled, an estimate
  with a 95 % interval from one of two sources: the share of tail labels among the labels gathered
  before ordering (their order had nothing to do with the mining score), or the tail labels found
  since then plus the pool's expected tail count (the held-out evaluation's calibration: the tail
  share of held-out rows per score bin, applied to the pool's scores), over the tasks labeled since
  then plus the pool. The narrower one is shown when its interval lies within +-50 % of it
  (MAX_RELATIVE_ERROR); otherwise it is "unknown". Never the share of tasks *predicted* as tail: a
  model trained on few labels predicts its rare classes far more often than they occur.
"""
from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import logging
import time
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from mcm_core.metrics import auc_pr, pr_curve, skewness_ratios

from ..label_config import LabelConfig
from ..validation import Skipped, parse_timestamp

logger = logging.getLogger(__name__)

BUCKET_SIZE = 50
PRECISION_TARGET = 0.5          # "likely tail": held-out precision at least this high above the score
CURVE_POINTS = 300              # precision-recall points kept per curve


@dataclasses.dataclass(frozen=True)
class LabelEvent:
    task_id: int
    at: float        # epoch seconds of the task's first usable annotation
    label: str       # its current class ("" in a detection project)
    objects: tuple[str, ...] | None = None  # detection: the classes of its current boxes

    @property
    def classes(self) -> tuple[str, ...]:
        """Every class this event labeled: the task's, or each of its objects' (detection)."""
        return (self.label,) if self.objects is None else self.objects

    def has_any(self, classes: set[str]) -> bool:
        return any(c in classes for c in self.classes)


EARLIEST_TIME = 946_684_800.0   # 2000-01-01T00:00:00Z: no Label Studio date is older
FUTURE_SLACK = 86_400.0         # a date up to a day ahead of this clock is a skewed clock, not a forgery
TIME_RANGE = "2000-01-01 .. now + 1 day"


def parse_time(value: object) -> float | None:
    """ISO-8601 timestamps ('2026-01-02T03:04:05.123456Z') as epoch seconds; None if unusable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
        if parsed.tzinfo is None:  # Label Studio stores UTC
            parsed = parsed.replace(tzinfo=dt.timezone.utc)
        return parsed.timestamp()
    except (ValueError, OverflowError):
        return None


def in_time_range(seconds: float | None, now: float | None = None) -> bool:
    """Whether a time can be a real Label Studio date (TIME_RANGE)."""
    now = time.time() if now is None else now
    return seconds is not None and EARLIEST_TIME <= seconds <= now + FUTURE_SLACK


def label_studio_time(value: object, now: float | None = None) -> float | None:
    """A date read from Label Studio (annotations, tabs) as epoch seconds; None if unusable or outside
    TIME_RANGE. Why the range: any Label Studio user can write such dates (a tab's data, an import), and
    a year-1 date cannot even be printed back (`iso`), a far-future one would split the report anywhere."""
    parsed = parse_timestamp(value)
    seconds = None if parsed is None else parsed.timestamp()
    return seconds if in_time_range(seconds, now) else None


def iso(seconds: float | None) -> str | None:
    """Epoch seconds as '2026-01-02T03:04:05Z' (None for None or a time no calendar date holds)."""
    if seconds is None:
        return None
    try:
        return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):
        return None


def label_events(tasks: Iterable[dict], config: LabelConfig, read: Callable, skipped: Skipped | None = None,
                 now: float | None = None) -> tuple[list[LabelEvent], int]:
    """(one LabelEvent per task with a usable label, in time order; non-cancelled annotations).

    `read(task, annotations, config)`: the task kind's `label_event` (backend/task_kinds.py), which
    says what the task is labeled (its class; an image's box classes) and by which annotations.

    The annotations count is Label Studio's `total_annotations_number` (skips excluded). A task's
    time is the creation of its first annotation with a choice (updated_at if Label Studio sent
    no created_at); times outside TIME_RANGE are ignored, and a task left with no time is left out
    of the events (counted in `skipped` as "dates", with its id).
    """
    events, n_annotations = [], 0
    for task in tasks:
        annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
        n_annotations += sum(1 for a in annotations if not a.get("was_cancelled"))
        found = read(task, annotations, config)
        if found is None:
            continue
        label, objects, usable = found
        times = [label_studio_time(a.get("created_at"), now) or label_studio_time(a.get("updated_at"), now)
                 for a in usable]
        times = [t for t in times if t is not None]
        if times:
            events.append(LabelEvent(int(task["id"]), min(times), label, objects))
        elif skipped is not None:
            skipped.add("dates", int(task["id"]), f"no annotation time within {TIME_RANGE}: left out of the report")
    events.sort(key=lambda e: (e.at, e.task_id))
    return events, n_annotations


def phase(at: float, enabled_at: float | None) -> str:
    if enabled_at is None:
        return "unknown"
    return "after" if at >= enabled_at else "before"


TailTest = Callable[[LabelEvent], bool]


def tail_when_labeled(history: Iterable[tuple[float | None, Iterable[str] | None]], fallback: Iterable[str]) -> TailTest:
    """Whether an event's class was a tail class of the model that ordered the queue when it was labeled.

    history: (time the version started serving, its tail classes) per version, entries with either
    unknown left out; an event before the first version uses `fallback` (the current tail classes). Why: a tail class the team has labeled
    enough of stops being tail; judged by today's tail classes, its labels found earlier would count
    as common ones, and a queue that did its job would show a yield of 0."""
    steps = sorted((float(at), frozenset(tail)) for at, tail in history if at is not None and tail is not None)
    times = [at for at, _ in steps]
    default = frozenset(fallback)

    def is_tail(event: LabelEvent) -> bool:
        i = bisect.bisect_right(times, event.at) - 1
        return event.has_any(steps[i][1] if i >= 0 else default)
    return is_tail


def _tail_test(tail: Iterable[str] | TailTest) -> TailTest:
    if callable(tail):
        return tail
    names = set(tail)
    return lambda event: event.has_any(names)


def yield_buckets(events: Sequence[LabelEvent], tail: Iterable[str] | TailTest, enabled_at: float | None,
                  size: int = BUCKET_SIZE) -> list[dict]:
    """Consecutive groups of at most `size` label events (in time order), each with its tail share.

    A new bucket starts when the phase (before / after ordering was enabled) changes, so no bar
    mixes the two regimes.
    """
    if size < 1:
        raise ValueError(f"bucket size must be >= 1, got {size}")
    is_tail = _tail_test(tail)
    buckets: list[dict] = []
    for index, event in enumerate(sorted(events, key=lambda e: (e.at, e.task_id))):
        where = phase(event.at, enabled_at)
        if not buckets or buckets[-1]["n"] >= size or buckets[-1]["phase"] != where:
            buckets.append({"start": index, "n": 0, "n_tail": 0, "phase": where, "first_at": event.at})
        bucket = buckets[-1]
        bucket["n"] += 1
        bucket["n_tail"] += is_tail(event)
        bucket["last_at"] = event.at
    for bucket in buckets:
        bucket["share"] = bucket["n_tail"] / bucket["n"]
    return buckets


def phase_yield(events: Sequence[LabelEvent], tail: Iterable[str] | TailTest, enabled_at: float | None) -> dict:
    """{"before"|"after"|"unknown": {n, n_tail, share}} over every label event."""
    is_tail = _tail_test(tail)
    out: dict[str, dict] = {}
    for event in events:
        part = out.setdefault(phase(event.at, enabled_at), {"n": 0, "n_tail": 0})
        part["n"] += 1
        part["n_tail"] += is_tail(event)
    for part in out.values():
        part["share"] = part["n_tail"] / part["n"]
    return out


def class_counts(events: Iterable[LabelEvent], classes: Sequence[str]) -> dict[str, int]:
    counts = {c: 0 for c in classes}
    for event in events:
        for label in event.classes:
            if label in counts:
                counts[label] += 1
    return counts


def class_steps(events: Sequence[LabelEvent], classes: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per class, the cumulative count as a step function: (event numbers 1..n where it changed, the count
    from there on), starting at (0, 0) and ending at (n, final count). Its size is the number of labels,
    not classes x events, so thousands of classes stay cheap to draw."""
    index = {c: k for k, c in enumerate(classes)}
    xs: list[list[int]] = [[0] for _ in classes]
    ys: list[list[int]] = [[0] for _ in classes]
    ordered = sorted(events, key=lambda e: (e.at, e.task_id))
    for number, event in enumerate(ordered, start=1):
        for name in event.classes:
            k = index.get(name)
            if k is None:
                continue
            if xs[k][-1] == number:
                ys[k][-1] += 1
            else:
                xs[k].append(number)
                ys[k].append(ys[k][-1] + 1)
    for x, y in zip(xs, ys):
        if x[-1] != len(ordered):
            x.append(len(ordered))
            y.append(y[-1])
    return {c: (np.asarray(x, dtype=np.int64), np.asarray(y, dtype=np.int64)) for c, x, y in zip(classes, xs, ys)}


def cumulative_per_class(events: Sequence[LabelEvent], classes: Sequence[str]) -> dict[str, np.ndarray]:
    """Per class, how many tasks of it were labeled after each label event (time order)."""
    ordered = sorted(events, key=lambda e: (e.at, e.task_id))
    return {c: np.cumsum([e.classes.count(c) for e in ordered]).astype(np.int64) for c in classes}


def skewness(counts: Mapping[str, int], config: LabelConfig,
             previous: Sequence[str] = ()) -> tuple[dict[str, float], list[str]]:
    """(per-class skewness ratio = count / mean count, the tail classes by the training rule,
    LabelConfig.tail_set: declared ones plus those rare beyond chance, plus the `previous` version's
    counted ones while they have fewer labels than an average class)."""
    classes = config.classes
    labels = np.repeat(np.arange(len(classes)), [int(counts.get(c, 0)) for c in classes])
    tail = [classes[k] for k in config.tail_set(labels, previous).classes]
    if len(labels) == 0:
        return {c: 0.0 for c in classes}, tail
    return {c: round(float(r), 4) for c, r in zip(classes, skewness_ratios(labels, len(classes)))}, tail


# ---------------------------------------------------------------------------------- held-out ranking
def stratified_folds(labels: Sequence[int], k: int, seed: int) -> np.ndarray:
    """Fold index per row: each class's rows shuffled (seeded) and dealt round-robin, so every fold
    gets its share of each class; the dealing continues across classes so folds stay equal-sized."""
    y = np.asarray(labels, dtype=np.int64)
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    if len(y) < k:
        raise ValueError(f"{len(y)} labeled rows cannot be split into {k} folds")
    rng = np.random.default_rng(seed)
    folds = np.empty(len(y), dtype=np.int64)
    offset = 0
    for cls in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == cls))
        folds[rows] = (offset + np.arange(len(rows))) % k
        offset += len(rows)
    return folds


def thin_curve(precision: np.ndarray, recall: np.ndarray, threshold: np.ndarray,
               points: int = CURVE_POINTS) -> dict:
    """At most `points` points of a PR curve (always the first and last), as lists for JSON."""
    keep = np.arange(len(precision))
    if len(keep) > points:
        keep = np.unique(np.r_[np.linspace(0, len(keep) - 1, points).round().astype(int), len(keep) - 1])
    return {"precision": [round(float(v), 5) for v in precision[keep]],
            "recall": [round(float(v), 5) for v in recall[keep]],
            "threshold": [round(float(v), 6) for v in threshold[keep]]}


def score_at_precision(is_tail: np.ndarray, scores: np.ndarray, target: float = PRECISION_TARGET) -> dict | None:
    """The lowest score s such that the held-out rows scoring >= s are at least `target` tail
    (None when no threshold reaches it)."""
    precision, recall, threshold = pr_curve(is_tail, scores)
    reached = np.flatnonzero(precision >= target)
    if len(reached) == 0:
        return None
    i = int(reached[-1])
    return {"target": target, "score": float(threshold[i]), "precision": float(precision[i]),
            "recall": float(recall[i])}


def strategy_summary(is_tail: np.ndarray, scores: np.ndarray, folds: np.ndarray) -> dict:
    """AUC-PR of the pooled held-out scores, per fold (folds with a tail row), and the curve."""
    per_fold = [round(auc_pr(is_tail[folds == f], scores[folds == f]), 4)
                for f in np.unique(folds) if is_tail[folds == f].any()]
    return {"auc_pr": round(auc_pr(is_tail, scores), 4), "fold_auc_pr": per_fold,
            "curve": thin_curve(*pr_curve(is_tail, scores))}


def heldout_summary(is_tail: Sequence[bool], scores: Mapping[str, Sequence[float]], folds: Sequence[int],
                    miner: str = "miner") -> dict:
    """Ranking quality of the miner and each baseline on held-out rows; the best baseline by AUC-PR;
    the miner's calibration table (the pool's expected tail count, `calibrated_count`)."""
    y = np.asarray(is_tail, dtype=bool)
    f = np.asarray(folds, dtype=np.int64)
    if not y.any():
        raise ValueError("no held-out tail row: ranking quality is undefined")
    arrays = {name: np.asarray(s, dtype=np.float64) for name, s in scores.items()}
    strategies = {name: strategy_summary(y, s, f) for name, s in arrays.items()}
    baselines = {name: v for name, v in strategies.items() if name != miner}
    best = max(baselines, key=lambda n: (baselines[n]["auc_pr"], n)) if baselines else None
    return {"prevalence": round(float(y.mean()), 5), "n_rows": int(len(y)), "n_tail": int(y.sum()),
            "miner": strategies[miner], "baselines": baselines, "best_baseline": best,
            "threshold": score_at_precision(y, arrays[miner]), "calibration": calibration_table(y, arrays[miner])}


RANDOM_MARGIN = 0.05   # held-out AUC-PR must beat the prevalence by at least this much (and by 2 standard errors)


def beats_random(auc: float, prevalence: float, fold_aucs: Sequence[float]) -> dict:
    """Whether the held-out AUC-PR is above random order's (the prevalence) by a margin: the larger of
    RANDOM_MARGIN and two standard errors of the per-fold AUC-PRs (few tail rows make them noisy)."""
    folds = np.asarray(list(fold_aucs), dtype=np.float64)
    se = float(folds.std(ddof=1) / np.sqrt(len(folds))) if len(folds) > 1 else 0.0
    margin = max(RANDOM_MARGIN, 2.0 * se)
    return {"better": bool(auc > prevalence + margin), "margin": round(margin, 4)}


def confusion_rates(is_tail: Sequence[bool], predicted_tail: Sequence[bool]) -> tuple[float | None, float | None]:
    """(true-positive rate, false-positive rate) of "predicted class is a tail class" on held-out rows."""
    y = np.asarray(is_tail, dtype=bool)
    p = np.asarray(predicted_tail, dtype=bool)
    tpr = float(p[y].mean()) if y.any() else None
    fpr = float(p[~y].mean()) if (~y).any() else None
    return tpr, fpr


# ---------------------------------------------------------------------------------- pool and base rate
Z95 = 1.959964                 # two-sided 95 % normal quantile
MAX_RELATIVE_ERROR = 0.5       # a base rate is shown when its 95 % interval lies within +-50 % of it
CALIBRATION_BINS = 5           # score bins of the calibration table (fewer with few held-out rows)
MIN_ROWS_PER_BIN = 10


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k / n (sensible at k = 0 and for small n)."""
    if n <= 0:
        raise ValueError(f"need at least one trial, got n={n}")
    p = k / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, float(center - half)), min(1.0, float(center + half))


def relative_error(estimate: Mapping) -> float:
    """How far the 95 % interval reaches from the estimate, relative to it (inf for an estimate of 0)."""
    value = float(estimate["value"])
    if value <= 0:
        return float("inf")
    return max(float(estimate["high"]) - value, value - float(estimate["low"])) / value


def rate_from_labels(n_tail: int, n: int) -> dict | None:
    """The base rate as the tail share of the labels gathered before ordering, with its Wilson interval.
    Assumes they were labeled in an order unrelated to their class (not imported folder by folder)."""
    if n <= 0:
        return None
    low, high = wilson_interval(n_tail, n)
    return {"value": n_tail / n, "low": low, "high": high, "source": "labels before ordering",
            "method": f"{n_tail} tail of the {n} labels gathered before ordering (Wilson interval)"}


def calibration_table(is_tail: np.ndarray, scores: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Held-out rows per score bin (quantile edges of their scores) and how many of them are tail."""
    y, s = np.asarray(is_tail, dtype=bool), np.asarray(scores, dtype=np.float64)
    k = max(1, min(bins, len(s) // MIN_ROWS_PER_BIN))
    edges = np.unique(np.quantile(s, np.linspace(0, 1, k + 1)[1:-1])) if k > 1 else np.zeros(0)
    which = np.searchsorted(edges, s, side="right")
    n = np.bincount(which, minlength=len(edges) + 1)
    n_tail = np.bincount(which, weights=y.astype(np.float64), minlength=len(edges) + 1)
    return {"edges": [float(e) for e in edges], "n": n.astype(int).tolist(), "n_tail": n_tail.astype(int).tolist()}


def calibrated_count(table: Mapping, pool_scores: np.ndarray) -> tuple[float, float]:
    """(expected tail tasks among `pool_scores`, its variance): per score bin, the held-out tail share
    times the pool tasks in the bin. The variance adds the uncertainty of each bin's share (with the
    Jeffreys share (tail + 0.5) / (n + 1), so that a bin without a tail row is not certain) and the
    pool's own binomial spread."""
    edges = np.asarray(table["edges"], dtype=np.float64)
    n, n_tail = np.asarray(table["n"], dtype=np.float64), np.asarray(table["n_tail"], dtype=np.float64)
    if len(n) != len(edges) + 1 or len(n_tail) != len(n):
        raise ValueError(f"calibration table: {len(edges)} edges need {len(edges) + 1} bins, got {len(n)}")
    share = np.divide(n_tail, n, out=np.zeros_like(n), where=n > 0)
    smooth = (n_tail + 0.5) / (n + 1.0)
    m = np.bincount(np.searchsorted(edges, np.asarray(pool_scores, dtype=np.float64), side="right"),
                    minlength=len(n)).astype(np.float64)
    variance = m * m * smooth * (1 - smooth) / (n + 1.0) + m * smooth * (1 - smooth)
    return float(np.sum(m * share)), float(np.sum(variance))


def rate_from_calibration(n_tail_after: int, n_after: int, expected: float, variance: float,
                          pool_size: int) -> dict | None:
    """Tail labels found since ordering plus the pool's expected tail count, over the labeled and the pool."""
    total = n_after + pool_size
    if total <= 0:
        return None
    value = (n_tail_after + expected) / total
    half = Z95 * float(np.sqrt(max(variance, 0.0))) / total
    return {"value": value, "low": max(0.0, value - half), "high": min(1.0, value + half),
            "source": "calibrated expected count",
            "method": f"{n_tail_after} tail labels since ordering + {expected:.1f} expected among {pool_size} "
                      "unlabeled tasks (held-out tail share per score bin)"}


def choose_base_rate(candidates: Sequence[dict | None]) -> tuple[dict | None, dict | None]:
    """(the estimate to show, or None for "unknown"; the most precise candidate, shown or not)."""
    found = [c for c in candidates if c is not None]
    if not found:
        return None, None
    best = min(found, key=relative_error)
    return (best if relative_error(best) <= MAX_RELATIVE_ERROR else None), best


def count_at_or_above(scores: np.ndarray, threshold: float | None) -> int | None:
    if threshold is None:
        return None
    return int(np.count_nonzero(np.asarray(scores, dtype=np.float64) >= threshold))


def histogram(scores: np.ndarray, bins: int = 40) -> dict:
    counts, edges = np.histogram(np.asarray(scores, dtype=np.float64), bins=bins, range=(0.0, 1.0))
    return {"edges": [round(float(e), 4) for e in edges], "counts": counts.astype(int).tolist()}
