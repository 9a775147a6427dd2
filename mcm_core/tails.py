"""Which classes are the tail: declared by the admin, counted from the labels, or both.

Why not the skewness ratio alone (count / mean count < 0.3, `metrics.tail_classes`): with a few
dozen labels it is noise. 30 labels over 10 classes give counts like [4, 2, 4, 4, 1, 6, 2, 4, 2, 1]:
a class with one label has a ratio of 0.33, a hair from being "tail", and a common class that
happened to get few early labels is lifted to the front. The count rule here adds a test of
chance: a class is tail when its ratio is below 0.3 *and* so few labels would be improbable
(binomial probability < 10 %) for a class as common as the average one (share 1 / C). With many
labels the test always passes for a ratio below 0.3, and the rule is the skewness ratio again.
Why 10 % and not the customary 5 %: the two errors do not cost the same. A common class taken for
tail costs a few of its tasks served early, and their labels undo it at the next training; a rare
class taken for common is not mined at all, which is the product's one job. At 5 %, one label of a
rare digit among 40 over 10 classes (P = 0.08) was "chance", and the tab served rare digits at
0.67x the base rate where the paper's score served 2.17x (docs/quality.md, mnist-tail20).
A class with no label at all is always tail (in the label config, never seen). Classes the admin
declares are tail whatever their counts.

A counted tail class stays tail until it has as many labels as an average class (``kept``: the
previous version's counted classes). Why: the tail-first tab itself makes a rare class's labels
grow faster than its share of the data, so by the ratio alone the mining would switch itself off.
In the e2e detection project, 9 mined images took digit 1 from 9 to 14 boxes (ratio 0.25 -> 0.35):
it became "head", and the tab stopped hunting it. A common class counted tail by chance leaves as
soon as its labels reach the average, which its own share of the data brings quickly.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable

import numpy as np

SKEWNESS_THRESHOLD = 0.30  # the paper's tail threshold on count / mean count
CHANCE_LEVEL = 0.10        # a count this improbable for an average class is not chance (docstring)


@dataclasses.dataclass(frozen=True)
class TailSet:
    """The tail classes and why each is one."""
    classes: tuple[int, ...]   # sorted: declared + counted
    declared: tuple[int, ...]  # named by the admin
    counted: tuple[int, ...]   # found by the count rule (may overlap declared)
    rule: str                  # "declared", "counts" or "declared + counts"
    kept: tuple[int, ...] = ()  # of counted: rare no more by the rule, kept until labeled as an average class

    def describe(self, names: Iterable[str] | None = None) -> str:
        """One sentence for logs, /mcm/status and the report."""
        names = list(names) if names is not None else None

        def show(ks):
            return ", ".join(names[k] if names else str(k) for k in ks) or "none"
        parts = []
        if "declared" in self.rule:
            parts.append(f"declared by the admin: {show(self.declared)}")
        if "counts" in self.rule:
            fresh = [k for k in self.counted if k not in self.kept]
            parts.append(f"rare in the labels beyond chance (or never labeled): {show(fresh)}")
            if self.kept:
                parts.append(f"still fewer labels than an average class (kept from the previous version): "
                             f"{show(self.kept)}")
        return "; ".join(parts)


def binomial_cdf(count: int, total: int, p: float) -> float:
    """P(X <= count) for X ~ Binomial(total, p), summed exactly in log space."""
    if count >= total:
        return 1.0
    k = np.arange(int(count) + 1, dtype=np.float64)
    log_choose = math.lgamma(total + 1) - np.array([math.lgamma(i + 1) + math.lgamma(total - i + 1) for i in k])
    return float(min(1.0, np.exp(np.logaddexp.reduce(log_choose + k * math.log(p) + (total - k) * math.log1p(-p)))))


def class_counts(labels, num_classes: int) -> np.ndarray:
    """Labels per class index 0..num_classes-1 (labels beyond them are not counted)."""
    y = np.asarray(labels, dtype=np.int64)
    return np.bincount(y, minlength=num_classes)[:num_classes] if len(y) else np.zeros(num_classes, np.int64)


def counted_tail(labels, num_classes: int, threshold: float = SKEWNESS_THRESHOLD,
                 alpha: float = CHANCE_LEVEL) -> list[int]:
    """Classes never labeled, or whose skewness ratio is below `threshold` with a count improbable
    (P < alpha) for a class of the average share 1 / num_classes."""
    if num_classes < 2:
        return []
    counts = class_counts(labels, num_classes)
    total = int(counts.sum())
    if total == 0:
        return list(range(num_classes))
    mean = total / num_classes
    return [k for k, n in enumerate(counts.tolist())
            if n == 0 or (n / mean < threshold and binomial_cdf(n, total, 1.0 / num_classes) < alpha)]


def still_under_labeled(labels, num_classes: int, previous: Iterable[int]) -> list[int]:
    """Of `previous` (class indices), those with fewer labels than the mean count (module docstring)."""
    counts = class_counts(labels, num_classes)
    mean = counts.sum() / num_classes
    return sorted({int(k) for k in previous if 0 <= int(k) < num_classes and counts[int(k)] < mean})


def choose_tail_classes(labels, num_classes: int, declared: Iterable[int] = (), use_counts: bool = True,
                        threshold: float = SKEWNESS_THRESHOLD, alpha: float = CHANCE_LEVEL,
                        previous: Iterable[int] = ()) -> TailSet:
    """The tail set: `declared` class indices, plus the count rule's unless `use_counts` is False.
    `previous`: the classes the count rule gave the previous version; those with fewer labels than
    an average class stay (module docstring).

    Never every class: if the union would hold all of them, the declared ones alone are kept (with
    none declared, nothing): a tail needs a head to be rare against."""
    declared = tuple(sorted({int(k) for k in declared}))
    bad = [k for k in declared if not 0 <= k < num_classes]
    if bad:
        raise ValueError(f"declared tail classes {bad} are not class indices 0..{num_classes - 1}")
    if not use_counts and not declared:
        raise ValueError("use_counts=False needs declared tail classes")
    if len(declared) >= num_classes:
        raise ValueError("every class is declared tail: a tail needs at least one head class to be rare against")
    counted = tuple(counted_tail(labels, num_classes, threshold, alpha)) if use_counts else ()
    kept = tuple(k for k in still_under_labeled(labels, num_classes, previous) if k not in counted) \
        if use_counts else ()
    counted = tuple(sorted(set(counted) | set(kept)))
    classes = tuple(sorted(set(declared) | set(counted)))
    if len(classes) >= num_classes:
        classes, counted, kept = declared, (), ()
    rule = "declared + counts" if declared and use_counts else ("declared" if declared else "counts")
    return TailSet(classes=classes, declared=declared, counted=tuple(k for k in counted if k in classes), rule=rule,
                   kept=kept)
