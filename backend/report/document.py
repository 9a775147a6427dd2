"""A built mining report: the JSON summary and what its figures plot (built by source.py, drawn by
figures.py, shown by page.py)."""
from __future__ import annotations

import dataclasses
import threading

import numpy as np

from .stats import LabelEvent

FIGURES = ("tail_yield", "classes", "precision_recall", "pool_scores", "versions")


@dataclasses.dataclass
class Report:
    """One built report: the JSON summary and what the figures plot."""

    project_id: int
    summary: dict
    classes: list[str]
    tail: list[str]
    events: list[LabelEvent]
    enabled_at: float | None
    buckets: list[dict]
    pool_scores: np.ndarray | None
    heldout: dict | None
    versions: list[dict]
    figures: dict[str, bytes] = dataclasses.field(default_factory=dict)  # PNGs drawn so far (figures.png)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
