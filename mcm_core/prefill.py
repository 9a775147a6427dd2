"""Pre-fills: the class a prediction pre-ticks, only where the project's own labels say it is right.

Why a second classifier: the miner's RC layer is trained with focal loss and alpha = inverse class
frequency to *lift* the tail outputs, which is what mining needs; read as a classifier it over-predicts
the tail (issue 21: 43 of 100 head images "predicted" as the rare class, 20 of 20 served tasks
pre-ticked wrong). A pre-ticked choice must be as accurate as possible instead: `PrefillClassifier`
is a plain multinomial logistic regression (softmax, cross-entropy, L2, no class weights) on the same
features.

Why a per-class rule: with few labels, or features that cannot tell the classes apart, even that
classifier is wrong, and a wrong pre-tick gets saved by an annotator who submits without looking.
`fit_prefill` estimates by stratified cross-validation on the labeled rows, for each class k, the
held-out precision of "predicted k with confidence >= t". Class k is pre-filled only at the lowest t
of `THRESHOLDS` where that precision is >= `MIN_PRECISION` over >= `MIN_SUPPORT` held-out predictions,
its one-sided 95 % lower confidence bound (Wilson) is >= `MIN_PRECISION_LOWER`, and so many right
answers are beyond chance (`PREFILL_CHANCE`); otherwise never. The bound matters: 5 of 5 right is
precision 100 % and happens with a true precision of 60 %; on newcomer images (docs/quality.md) the
point rule pre-ticked pool tasks at 41-83 % accuracy. The same held-out predictions give the
`separation` verdict: held-out accuracy against the rate of always answering the most common class;
when the features do not separate the classes, nothing is pre-filled at all. Features
learned from these very labels (a CNN trained on them) must be cross-validated with a featurizer
trained without each fold (`fold_features`): otherwise memorised rows look separable.

    clf, assessment = fit_prefill(features, labels, num_classes, seed=0)
    clf.prefill_labels(pool)   # (M,) int32: the class to pre-tick, -1 = none
    assessment.classes[k]      # ClassReliability: prefill, threshold, precision, support, reason
    assessment.separation      # Separation: accuracy vs majority rate, separated or not
    clf.save(path); PrefillClassifier.load(path)

Numpy in, numpy out; deterministic given the seed (folds and subsamples; the fit itself is L-BFGS
from zeros). Evaluated row-wise (mcm_core.rowwise), so a task gets the same pre-fill alone or in a pool.
"""
from __future__ import annotations

import dataclasses
import io
import os
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from .atomic import atomic_write
from .rowwise import apply_rowwise
from .tails import binomial_cdf
from .validation import check_features, check_labels, check_num_classes

FORMAT = "mcm_core.PrefillClassifier"
FORMAT_VERSION = 1
THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)  # task confidences tried, lowest first
MIN_PRECISION = 0.9     # held-out precision a pre-filled class needs
MIN_SUPPORT = 5         # held-out predictions of the class at that threshold
PREFILL_CHANCE = 0.01   # ... and so many right must be improbable for chance hits at the class's share
MIN_PRECISION_LOWER = 0.8  # ... and the precision's one-sided 95 % lower bound (Wilson) at least this
LOWER_BOUND_Z = 1.645      # one-sided 95 %
DEFAULT_FOLDS = 5
MIN_ROWS = 10           # fewer labeled rows: nothing can be checked, nothing is pre-filled
MAX_CV_ROWS = 3000      # cross-validation on a stratified subsample beyond this (cost bound)
MAX_FIT_ROWS = 20000    # the final fit likewise (a linear model needs no more)
KEEP_PER_CLASS = 50     # subsampling keeps up to this many groups of every class, so rare classes stay whole
LEARNED_FOLDS = 3       # features learned from the labels (simple-cnn): one featurizer per fold, so fewer folds
LEARNED_MAX_CV_ROWS = 1200  # ... and fewer rows (3 small-CNN trainings on 800 images: about 20 s on one core)
MIN_SKILL = 0.5         # separated: accuracy closes half the gap between the majority rate and 1 ...
CHANCE_LEVEL = 0.05     # ... and beats the majority rate beyond chance (one-sided binomial test)


class PrefillClassifier:
    """Multinomial logistic regression on standardised features: softmax, mean cross-entropy +
    ||W||^2 / (2 C n) (scikit-learn's C), full-batch L-BFGS from zeros. Classes without a training
    row get probability 0. `thresholds_[k]`: the confidence a row needs to be pre-filled as k
    (inf = never; all inf until `fit_prefill` sets them)."""

    def __init__(self, num_classes: int, seed: int = 0, *, C: float = 1.0, max_iter: int = 100) -> None:
        self.num_classes = check_num_classes(num_classes)
        if not C > 0 or int(max_iter) < 1:
            raise ValueError(f"C must be > 0 and max_iter >= 1, got C={C}, max_iter={max_iter}")
        self.seed, self.C, self.max_iter = int(seed), float(C), int(max_iter)
        self.classes_ = np.zeros(0, np.int64)   # class indices seen in fit(), sorted
        self.mean_ = self.std_ = self.coef_ = self.intercept_ = None
        self.thresholds_ = np.full(self.num_classes, np.inf)

    @property
    def is_fitted(self) -> bool:
        return self.coef_ is not None

    def fit(self, features, labels) -> "PrefillClassifier":
        x = check_features(features).astype(np.float64)
        y = check_labels(labels, len(x), self.num_classes)
        self.classes_ = np.unique(y)
        self.mean_ = x.mean(0)
        std = x.std(0)
        self.std_ = np.where(std > 1e-6, std, 1.0)  # a constant column stays 0, whatever a new row holds
        z = (x - self.mean_) / self.std_
        self.coef_, self.intercept_ = _fit_softmax(z, np.searchsorted(self.classes_, y), len(self.classes_),
                                                   self.C, self.max_iter)
        return self

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise ValueError("PrefillClassifier is not fitted: call fit(features, labels) first")

    def predict_proba(self, features) -> np.ndarray:
        """(M, num_classes) float64 probabilities; row-wise (a row's value does not depend on its batch)."""
        self._check_fitted()
        x = check_features(features, dim=len(self.mean_))
        mean, std = torch.from_numpy(self.mean_), torch.from_numpy(self.std_)
        coef, intercept = torch.from_numpy(self.coef_), torch.from_numpy(self.intercept_)
        known = apply_rowwise(lambda b: torch.softmax(((b.double() - mean) / std) @ coef + intercept, dim=1), x)
        proba = np.zeros((len(x), self.num_classes))
        proba[:, self.classes_] = known
        return proba

    def prefill_labels(self, features) -> np.ndarray:
        """(M,) int32: the predicted class where its confidence reaches that class's threshold, else -1."""
        proba = self.predict_proba(features)
        return apply_thresholds(proba, self.thresholds_)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Atomic npz of plain arrays (loaded with allow_pickle=False: nothing is executed)."""
        self._check_fitted()
        arrays = {"format": np.asarray(FORMAT), "format_version": np.asarray(FORMAT_VERSION),
                  "num_classes": np.asarray(self.num_classes), "seed": np.asarray(self.seed),
                  "C": np.asarray(self.C), "max_iter": np.asarray(self.max_iter), "classes": self.classes_,
                  "mean": self.mean_, "std": self.std_, "coef": self.coef_, "intercept": self.intercept_,
                  "thresholds": self.thresholds_}
        atomic_write(path, lambda handle: np.savez(handle, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PrefillClassifier":
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
            with np.load(io.BytesIO(raw), allow_pickle=False) as data:
                if str(data["format"]) != FORMAT or int(data["format_version"]) != FORMAT_VERSION:
                    raise ValueError(f"not a {FORMAT} file of format version {FORMAT_VERSION}")
                clf = cls(int(data["num_classes"]), int(data["seed"]), C=float(data["C"]),
                          max_iter=int(data["max_iter"]))
                clf.classes_ = data["classes"].astype(np.int64)
                clf.mean_, clf.std_ = data["mean"].astype(np.float64), data["std"].astype(np.float64)
                clf.coef_, clf.intercept_ = data["coef"].astype(np.float64), data["intercept"].astype(np.float64)
                clf.thresholds_ = data["thresholds"].astype(np.float64)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"cannot read pre-fill classifier {os.fspath(path)}: {exc}") from exc
        d, k = len(clf.mean_), len(clf.classes_)
        if clf.coef_.shape != (d, k) or clf.intercept_.shape != (k,) or clf.thresholds_.shape != (clf.num_classes,) \
                or (k and (clf.classes_.min() < 0 or clf.classes_.max() >= clf.num_classes)):
            raise ValueError(f"{os.fspath(path)}: pre-fill classifier arrays have inconsistent shapes")
        return clf


def _fit_softmax(z: np.ndarray, y: np.ndarray, n_out: int, C: float, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) minimising mean cross-entropy + ||W||^2 / (2 C n); one class: a constant answer."""
    d = z.shape[1]
    if n_out == 1:
        return np.zeros((d, 1)), np.zeros(1)
    x, t = torch.from_numpy(np.ascontiguousarray(z)), torch.from_numpy(y.astype(np.int64))
    w = torch.zeros(d, n_out, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_out, dtype=torch.float64, requires_grad=True)
    penalty = 0.5 / (C * len(z))
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, t) + penalty * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy().copy(), b.detach().numpy().copy()


def apply_thresholds(proba: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(M,) int32: argmax class where its probability >= its threshold, else -1."""
    proba = np.asarray(proba, np.float64)
    if len(proba) == 0:
        return np.zeros(0, np.int32)
    top = proba.argmax(1)
    ok = proba[np.arange(len(proba)), top] >= np.asarray(thresholds, np.float64)[top]
    return np.where(ok, top, -1).astype(np.int32)


# ---------------------------------------------------------------------- cross-validation
def _group_index(n: int, groups) -> np.ndarray:
    if groups is None:
        return np.arange(n)
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must have one entry per row ({n}), got shape {g.shape}")
    return np.unique(g, return_inverse=True)[1].reshape(-1)


def _group_labels(y: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Each group's stratum: the label of its first row (detection: an image's first annotated box)."""
    first = np.unique(g, return_index=True)[1]
    return y[first]


def stratified_folds(labels, folds: int, seed: int = 0, groups=None) -> np.ndarray:
    """(N,) fold index per row: groups (e.g. all boxes of one image) stay in one fold; within each
    stratum the groups are shuffled and dealt round-robin, continuing across strata so that the
    classes with fewer groups than folds do not all land in fold 0."""
    y = np.asarray(labels, np.int64)
    g = _group_index(len(y), groups)
    strata = _group_labels(y, g)
    rng = np.random.default_rng(seed)
    fold_of_group = np.empty(len(strata), np.int64)
    dealt = 0
    for k in np.unique(strata):
        members = np.flatnonzero(strata == k)
        members = members[rng.permutation(len(members))]
        fold_of_group[members] = (dealt + np.arange(len(members))) % folds
        dealt += len(members)
    return fold_of_group[g]


def stratified_subsample(labels, max_rows: int, seed: int = 0, groups=None,
                         keep_per_class: int = KEEP_PER_CLASS) -> np.ndarray:
    """Sorted row indices of whole groups, about `max_rows` rows: every stratum keeps the same share of
    its groups, but at least `keep_per_class` of them (so rare classes are kept whole)."""
    y = np.asarray(labels, np.int64)
    if len(y) <= max_rows:
        return np.arange(len(y))
    g = _group_index(len(y), groups)
    strata = _group_labels(y, g)
    share = max_rows / len(y)
    rng = np.random.default_rng([seed, 1])
    kept = []
    for k in np.unique(strata):
        members = np.flatnonzero(strata == k)
        n_keep = min(len(members), max(keep_per_class, int(np.ceil(share * len(members)))))
        kept.append(members[rng.permutation(len(members))[:n_keep]])
    return np.flatnonzero(np.isin(g, np.concatenate(kept)))


# fold_features(train rows, held-out rows) -> (their feature rows): features from a featurizer that
# learned only from the train rows' labels (row indices into the arrays given to fit_prefill)
FoldFeatures = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def cross_validated_proba(features, labels, num_classes: int, folds: int = DEFAULT_FOLDS, seed: int = 0,
                          groups=None, fold_features: FoldFeatures | None = None, rows=None,
                          **options) -> np.ndarray:
    """(N, num_classes): each row's probabilities from a `PrefillClassifier` fitted without its fold.

    Features that were learned from these very labels (a CNN trained on them) would make the held-out
    rows look separable when they are only memorised (seen: 100 % held-out precision on images of pure
    noise); `fold_features` then gives each fold features of a featurizer trained without it. `rows`:
    the indices of `labels` in the caller's arrays, which `fold_features` receives (default 0..N-1)."""
    y = np.asarray(labels, np.int64)
    x = None if fold_features is not None else check_features(features)
    y = check_labels(y, len(y) if x is None else len(x), num_classes)
    rows = np.arange(len(y)) if rows is None else np.asarray(rows, np.int64)
    fold = stratified_folds(y, folds, seed, groups)
    proba = np.zeros((len(y), num_classes))
    for f in np.unique(fold):
        test = fold == f
        if test.all():
            raise ValueError("cross-validation needs at least two groups of rows")
        if fold_features is None:
            x_train, x_test = x[~test], x[test]
        else:
            x_train, x_test = (check_features(a) for a in fold_features(rows[~test], rows[test]))
        clf = PrefillClassifier(num_classes, seed, **options).fit(x_train, y[~test])
        proba[test] = clf.predict_proba(x_test)
    return proba


# ---------------------------------------------------------------------- the verdicts
@dataclasses.dataclass(frozen=True)
class ClassReliability:
    """Whether class k is pre-filled, and the held-out evidence."""
    prefill: bool
    threshold: float | None   # the confidence a task needs (None: never pre-filled)
    precision: float | None   # held-out precision at that threshold (not pre-filled: the best with enough support)
    support: int              # held-out predictions of the class at that threshold
    labeled: int              # labeled rows of the class
    reason: str               # one plain sentence

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Separation:
    """Do the features separate the classes? Held-out accuracy against always answering the most
    common class (`majority_rate`); separated when the accuracy closes at least MIN_SKILL of the gap
    to 1 and beats the majority rate beyond chance."""
    separated: bool
    accuracy: float | None
    majority_rate: float | None
    skill: float | None       # (accuracy - majority_rate) / (1 - majority_rate)
    p_value: float | None     # P(so many right | each right with probability majority_rate)
    n: int


@dataclasses.dataclass(frozen=True)
class PrefillAssessment:
    classes: tuple[ClassReliability, ...]
    separation: Separation
    folds: int
    n_rows: int               # labeled rows the cross-validation held out
    min_precision: float
    min_support: int

    @property
    def thresholds(self) -> np.ndarray:
        return np.asarray([c.threshold if c.prefill else np.inf for c in self.classes], np.float64)


def wilson_lower(right: int, n: int, z: float = LOWER_BOUND_Z) -> float:
    """The Wilson score interval's lower end for `right` successes in `n` trials (0 for n = 0)."""
    if n <= 0:
        return 0.0
    p, z2 = right / n, z * z
    return float((p + z2 / (2 * n) - z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))) / (1 + z2 / n))


def wilson_upper(right: int, n: int, z: float = LOWER_BOUND_Z) -> float:
    """The Wilson score interval's upper end for `right` successes in `n` trials (1 for n = 0)."""
    return 1.0 - wilson_lower(n - right, n, z) if n > 0 else 1.0


def class_reliability(labels, proba: np.ndarray, eligible: Iterable[int] | None = None,
                      thresholds: Sequence[float] = THRESHOLDS, min_precision: float = MIN_PRECISION,
                      min_support: int = MIN_SUPPORT, alpha: float = PREFILL_CHANCE,
                      min_lower: float = MIN_PRECISION_LOWER) -> tuple[ClassReliability, ...]:
    """One `ClassReliability` per column of the held-out `proba`. `eligible`: the classes that may be
    pre-filled (default all; e.g. not a detection project's background class).

    Class k is pre-filled at the lowest threshold t where the held-out predictions "k with confidence
    >= t" number >= min_support, are right >= min_precision of the time with a lower confidence bound
    >= min_lower (wilson_lower: 12 of 12 right gives 0.82, 5 of 5 only 0.65), and so many right answers
    are improbable (P < alpha) for guesses that hit k as often as k occurs in the labels: with several
    thresholds tried, 5 of 5 right happens by chance for a class of half the labels (P = 3 %)."""
    y = np.asarray(labels, np.int64)
    proba = np.asarray(proba, np.float64)
    n_classes = proba.shape[1]
    allowed = set(range(n_classes)) if eligible is None else {int(k) for k in eligible}
    top, confidence = proba.argmax(1), proba.max(1)
    out = []
    for k in range(n_classes):
        labeled = int((y == k).sum())
        if k not in allowed:
            out.append(ClassReliability(False, None, None, 0, labeled, "never pre-filled"))
            continue
        share = labeled / max(len(y), 1)
        chosen, best = None, None
        for t in thresholds:
            picked = (top == k) & (confidence >= t)
            support = int(picked.sum())
            if support < min_support:
                continue
            right = int((y[picked] == k).sum())
            precision = right / support
            chance = 1.0 - binomial_cdf(right - 1, support, share) if 0 < share < 1 else 1.0
            if best is None or precision > best[1]:
                best = (float(t), precision, support, chance)
            if precision >= min_precision and chance < alpha and wilson_lower(right, support) >= min_lower:
                chosen = (float(t), precision, support)
                break
        if chosen:
            t, p, s = chosen
            out.append(ClassReliability(True, t, p, s, labeled, f"held-out precision {p:.0%} on {s} predictions "
                                                                f"at confidence >= {t:g}"))
        elif labeled == 0:
            out.append(ClassReliability(False, None, None, 0, 0, "no labeled example"))
        elif best is None:
            s = int((top == k).sum())
            out.append(ClassReliability(False, None, None, s, labeled, f"only {s} held-out prediction(s) of it "
                                                                       f"(needs {min_support})"))
        elif best[1] >= min_precision and best[3] >= alpha:
            t, p, s, _ = best
            out.append(ClassReliability(False, None, p, s, labeled, f"held-out precision {p:.0%} on only {s} "
                                                                     f"predictions: not beyond chance for a class of "
                                                                     f"{share:.0%} of the labels"))
        elif best[1] >= min_precision:
            t, p, s, _ = best
            out.append(ClassReliability(False, None, p, s, labeled, f"held-out precision {p:.0%} on only {s} "
                                                                     f"predictions: its 95 % lower bound "
                                                                     f"{wilson_lower(round(p * s), s):.0%} is below "
                                                                     f"{min_lower:.0%} (needs more labels)"))
        else:
            t, p, s, _ = best
            out.append(ClassReliability(False, None, p, s, labeled, f"held-out precision {p:.0%} at best (on {s} "
                                                                     f"predictions; needs {min_precision:.0%})"))
    return tuple(out)


def separation(labels, proba: np.ndarray, min_skill: float = MIN_SKILL, alpha: float = CHANCE_LEVEL) -> Separation:
    """Held-out accuracy of argmax(proba) against the majority-class rate of `labels`."""
    y = np.asarray(labels, np.int64)
    n = len(y)
    correct = int((np.asarray(proba).argmax(1) == y).sum())
    majority = float(np.bincount(y).max() / n)
    accuracy = correct / n
    if majority >= 1.0:
        return Separation(False, accuracy, majority, None, None, n)
    skill = (accuracy - majority) / (1.0 - majority)
    p_value = 1.0 - binomial_cdf(correct - 1, n, majority) if correct > 0 else 1.0
    return Separation(bool(skill >= min_skill and p_value < alpha), accuracy, majority, skill, p_value, n)


def fit_prefill(features, labels, num_classes: int, *, seed: int = 0, folds: int | None = None, groups=None,
                eligible: Iterable[int] | None = None, fold_features: FoldFeatures | None = None,
                thresholds: Sequence[float] = THRESHOLDS, min_precision: float = MIN_PRECISION,
                min_support: int = MIN_SUPPORT, max_cv_rows: int | None = None, max_fit_rows: int = MAX_FIT_ROWS,
                **options) -> tuple[PrefillClassifier, PrefillAssessment]:
    """The classifier on all labeled rows (up to `max_fit_rows`) with the thresholds the cross-validation
    allows, and the assessment. `groups`: rows that must share a fold (a detection image's boxes, which
    include jittered copies of one another). `fold_features`: for features learned from these labels
    (see cross_validated_proba); folds and rows default to LEARNED_FOLDS and LEARNED_MAX_CV_ROWS then,
    DEFAULT_FOLDS and MAX_CV_ROWS otherwise. Fewer than MIN_ROWS rows or two groups: nothing pre-filled."""
    x = check_features(features)
    y = check_labels(labels, len(x), num_classes)
    g = _group_index(len(y), groups)
    n_groups = int(g.max()) + 1
    fit_rows = stratified_subsample(y, max_fit_rows, seed, g)
    clf = PrefillClassifier(num_classes, seed, **options).fit(x[fit_rows], y[fit_rows])
    if len(y) < MIN_ROWS or n_groups < 2:
        reason = f"only {len(y)} labeled rows: too few to check a pre-fill (needs {MIN_ROWS})"
        classes = tuple(ClassReliability(False, None, None, 0, int((y == k).sum()), reason)
                        for k in range(num_classes))
        return clf, PrefillAssessment(classes, Separation(False, None, None, None, None, len(y)), 0, 0,
                                      min_precision, min_support)
    learned = fold_features is not None
    if max_cv_rows is None:
        max_cv_rows = LEARNED_MAX_CV_ROWS if learned else MAX_CV_ROWS
    rows = stratified_subsample(y, max_cv_rows, seed, g)
    folds = (LEARNED_FOLDS if learned else DEFAULT_FOLDS) if folds is None else int(folds)
    k = min(folds, len(np.unique(g[rows])))
    proba = cross_validated_proba(x[rows], y[rows], num_classes, k, seed, g[rows], fold_features, rows, **options)
    verdicts = class_reliability(y[rows], proba, eligible, thresholds, min_precision, min_support)
    if len(rows) < len(y):  # the labeled count of each class, not of the subsample
        verdicts = tuple(dataclasses.replace(v, labeled=int((y == c).sum())) for c, v in enumerate(verdicts))
    separated = separation(y[rows], proba)
    if not separated.separated:  # a weak model pre-ticks nothing, whatever one class's few predictions say
        why = (f"the features do not separate the classes (held-out accuracy {separated.accuracy:.0%} against "
               f"{separated.majority_rate:.0%} for the most common class)")
        verdicts = tuple(dataclasses.replace(v, prefill=False, threshold=None, reason=why) if v.prefill else v
                         for v in verdicts)
    assessment = PrefillAssessment(verdicts, separated, k, len(rows), min_precision, min_support)
    clf.thresholds_ = assessment.thresholds
    return clf, assessment
