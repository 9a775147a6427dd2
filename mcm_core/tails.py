"""Which classes are the tail: declared by the admin, counted from the labels, or both.

Why not the skewness ratio alone (count / mean count < 0.3, `metrics.tail_classes`): with a few
dozen labels it is noise. 30 labels over 10 classes give counts like [4, 2, 4, 4, 1, 6, 2, 4, 2, 1]:
nothing is below 0.3 x the mean, so no class is tail, and a common class that happened to get
one early label would be lifted to the front next time. The count rule here asks whether a class
is rare *beyond what chance allows*: its share of the labels, at the optimistic end of a one-sided
Wilson interval, is still below 0.3 x the balanced share 1 / C. With many labels the interval
shrinks to the observed share and the rule becomes the skewness ratio again; a class with no label
at all is always tail (in the label config, never seen). Classes the admin declares are tail
whatever their counts.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

SKEWNESS_THRESHOLD = 0.30  # the paper's tail threshold on count / mean count
CONFIDENCE_Z = 1.645       # one-sided 95 %


@dataclasses.dataclass(frozen=True)
class TailSet:
    """The tail classes and why each is one."""
    classes: tuple[int, ...]   # sorted: declared + counted
    declared: tuple[int, ...]  # named by the admin
    counted: tuple[int, ...]   # found by the count rule (may overlap declared)
    rule: str                  # "declared", "counts" or "declared + counts"

    def describe(self, names: Iterable[str] | None = None) -> str:
        """One sentence for logs, /mcm/status and the report."""
        names = list(names) if names is not None else None

        def show(ks):
            return ", ".join(names[k] if names else str(k) for k in ks) or "none"
        parts = []
        if "declared" in self.rule:
            parts.append(f"declared by the admin: {show(self.declared)}")
        if "counts" in self.rule:
            parts.append(f"rare in the labels beyond chance (or never labeled): {show(self.counted)}")
        return "; ".join(parts)


def wilson_upper(count: np.ndarray, total: int, z: float = CONFIDENCE_Z) -> np.ndarray:
    """One-sided upper Wilson bound of each share count / total (total > 0)."""
    n = float(total)
    p = np.asarray(count, np.float64) / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return (centre + spread) / (1 + z2 / n)


def counted_tail(labels, num_classes: int, threshold: float = SKEWNESS_THRESHOLD,
                 z: float = CONFIDENCE_Z) -> list[int]:
    """Classes never labeled, or whose share is below threshold / C even at its upper bound."""
    y = np.asarray(labels, dtype=np.int64)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    counts = np.bincount(y, minlength=num_classes)[:num_classes] if len(y) else np.zeros(num_classes, int)
    if counts.sum() == 0:
        return list(range(num_classes)) if num_classes > 1 else []
    rare = (counts == 0) | (wilson_upper(counts, int(counts.sum()), z) < threshold / num_classes)
    return [int(k) for k in np.flatnonzero(rare)]


def choose_tail_classes(labels, num_classes: int, declared: Iterable[int] = (), use_counts: bool = True,
                        threshold: float = SKEWNESS_THRESHOLD, z: float = CONFIDENCE_Z) -> TailSet:
    """The tail set: `declared` class indices, plus the count rule's unless `use_counts` is False.

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
    counted = tuple(counted_tail(labels, num_classes, threshold, z)) if use_counts else ()
    classes = tuple(sorted(set(declared) | set(counted)))
    if len(classes) >= num_classes:
        classes, counted = declared, ()
    rule = "declared + counts" if declared and use_counts else ("declared" if declared else "counts")
    return TailSet(classes=classes, declared=declared, counted=tuple(k for k in counted if k in classes), rule=rule)
