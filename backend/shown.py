"""What a version's predictions show per task ({task id: item}), the part every task kind shares.

A kind's subclass (ranking.ChoiceResults: a pre-ticked class; regions.TaskRegions: boxes) says how an
item becomes Label Studio's `result` and how the items are saved beside ranking.npz; merging the
predictions of new tasks into a version's and taking the slice a push needs are the same for both.
"""
from __future__ import annotations

from typing import Iterable, TypeVar

T = TypeVar("T", bound="TaskItems")


class TaskItems:
    """{task id: what its prediction shows}; a task without an item starts blank (result [])."""

    file_name = ""  # beside the version's ranking.npz

    def __init__(self, items: dict | None = None) -> None:
        self.items = dict(items or {})

    def __len__(self) -> int:
        return len(self.items)

    def merged(self: T, other: T) -> T:
        """These items, and `other`'s (which win for a task in both)."""
        return type(self)({**self.items, **other.items})

    def subset(self: T, task_ids: Iterable[int]) -> T:
        """The items of `task_ids` (tasks without one are left out)."""
        return type(self)({int(t): self.items[int(t)] for t in task_ids if int(t) in self.items})
