"""Mining-quality metrics. The "positives" are tail-class examples; a strategy's ranking is good
when they come first."""
from __future__ import annotations

import numpy as np


def _check(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} entries, scores {s.size}")
    if y.size == 0:
        raise ValueError("empty input")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    return y, s


def precision_at_k(y_true, scores, k: int) -> float:
    """Fraction of positives among the k highest scores (ties broken by input order)."""
    y, s = _check(y_true, scores)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    order = np.argsort(-s, kind="stable")[:k]
    return float(y[order].sum() / min(k, len(y)))


def pr_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds), one point per distinct score, from high to low threshold.
    Tied scores enter together, as in sklearn.metrics.precision_recall_curve."""
    y, s = _check(y_true, scores)
    n_pos = y.sum()
    if n_pos == 0:
        raise ValueError("y_true has no positive example")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(s_sorted) != 0), len(s_sorted) - 1]
    tp = np.cumsum(y_sorted)[last_of_group]
    n_sel = last_of_group + 1
    return tp / n_sel, tp / n_pos, s_sorted[last_of_group]


def auc_pr(y_true, scores) -> float:
    """Area under the PR curve as average precision: sum_k (R_k - R_{k-1}) P_k
    (equals sklearn.metrics.average_precision_score)."""
    p, r, _ = pr_curve(y_true, scores)
    return float(np.sum(np.diff(np.r_[0.0, r]) * p))


def average_f_score(y_true, scores, beta: float = 1.0) -> float:
    """Mean F_beta over the PR-curve points (a threshold-free summary, like AUC-PR)."""
    p, r, _ = pr_curve(y_true, scores)
    b2 = beta ** 2
    denom = b2 * p + r
    f = np.where(denom > 0, (1 + b2) * p * r / np.where(denom > 0, denom, 1.0), 0.0)
    return float(f.mean())


def relative_improvement(value: float, baseline: float) -> float:
    """100 * (value - baseline) / baseline, in percent (inf if the baseline is 0)."""
    if baseline == 0:
        return float("inf") if value > 0 else 0.0
    return float(100.0 * (value - baseline) / baseline)


def skewness_ratios(labels, num_classes: int) -> np.ndarray:
    """Per-class count / mean class count (1 = balanced, << 1 = tail)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    mean = counts.mean()
    if mean == 0:
        raise ValueError("no labels")
    return counts / mean


def tail_classes(labels, num_classes: int, threshold: float = 0.30) -> list[int]:
    """Classes whose skewness ratio is below ``threshold`` (unlabeled classes included)."""
    return [int(k) for k in np.flatnonzero(skewness_ratios(labels, num_classes) < threshold)]
