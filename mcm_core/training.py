"""Early stopping shared by the RC layer (one model) and the autoencoder ensemble (M members).

After each epoch the trainer reports the held-out loss of every member; `EarlyStopping` keeps,
per member, the best loss so far and how many epochs passed without improving it by more than
`tolerance`. Both trainers restore each member's best weights at the end. Their warm-ups differ
on purpose and are passed in: the RC layer ignores its first epochs entirely (`consider=False`:
its held-out set has almost no tail example, so early dips are noise), the autoencoders keep
counting but cannot stop before a minimum number of optimisation steps, and a member that has
stopped no longer takes a new best (`active`).
"""
from __future__ import annotations

import numpy as np


class EarlyStopping:
    """Best loss and epochs-without-improvement for `n_members` models trained side by side."""

    def __init__(self, n_members: int, patience: int, tolerance: float) -> None:
        if n_members < 1 or patience < 0:
            raise ValueError(f"need n_members >= 1 and patience >= 0, got {n_members}, {patience}")
        self.patience = int(patience)
        self.tolerance = float(tolerance)
        self.best = np.full(n_members, np.inf)
        self.bad = np.zeros(n_members, int)

    def update(self, losses, *, consider: bool = True, active: np.ndarray | None = None) -> np.ndarray:
        """Record one epoch's held-out losses; returns the mask of members whose weights are the new best.

        consider=False: a warm-up epoch, nothing recorded. active: members allowed to take a new
        best (default all); a member that did not improve counts one more bad epoch either way."""
        losses = np.atleast_1d(np.asarray(losses, dtype=np.float64))
        if not consider:
            return np.zeros(len(self.best), bool)
        improved = losses < self.best - self.tolerance
        take = improved if active is None else improved & active
        self.best[take] = losses[take]
        self.bad[take] = 0
        self.bad[~improved] += 1
        return take

    def exhausted(self) -> np.ndarray:
        """Members whose patience ran out."""
        return self.bad >= self.patience
