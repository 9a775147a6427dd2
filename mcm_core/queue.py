"""Queue ordering for a labeling budget: every rare class early, and labels that teach the model.

Why: ranking by tail likelihood alone fills the budget with the tail examples the model already
recognises (the most typical ones, close to the labeled examples of their class), often of a
single tail class, and they teach it little (docs/quality.md, annotation loop). The queue keeps
the tail yield by choosing only among the ``window`` highest-scored examples, and within them:
- covers the tail classes: round-robin over buckets = the RC layer's predicted class when it
  is a tail class, the least-labeled class first (so each retraining starts with the class the
  labels have seen least, and an annotator served one task per version still sees every class);
- teaches (``teach`` in [0, 1]): within a bucket, greedily the largest score x ((1 - w) + w x v).
  By default v = the **novel doubt**: (1 - a plain classifier's probability of the bucket's class)
  x the example's novelty against the labeled common rows, i.e. the likely rare examples the model
  does not recognise yet, w = teach; but only in a bucket the evidence says is mostly rare
  (`bucket_purity` >= the miner's queue_doubt_purity, 0.8: the RC layer's false alarms on held-out
  common rows, scaled to the pool, are at most a fifth of the bucket). Elsewhere v = the distance d
  = cosine distance to the nearest labeled example of that class or example already queued in that
  bucket, w = teach x min(1, labels of the class / ``teach_ramp``). Why the gate: in a bucket full
  of the RC layer's mistakes (few labels, weak features) "the classifier doubts this is a 6" mostly
  means "it is not a 6": ungated, the doubt served 7-10 rare digits in the first 12 live (browser
  stage), while no bucket of that project passes the gate (its queue is the distance's, 12 of 12).
  In the annotation loop (20 seeds) the gated novel doubt gives a final tail recall above every
  baseline's in all four cells (the distance alone: 2 of 4). The distance:
  w=0, the bucket in score order (the most likely first); w=1, score x d, examples unlike what is
  labeled first (more to learn, and more often not of that class). Its ramp: a class with few
  labels has unreliable predicted members, whose unusual ones are often another class (the browser
  stage: 10 rare digits in 12 tasks at w=0.5), so they are served most likely first; with labels,
  the typical members are what the model already recognises, so the unlike ones teach it
  (annotation loop: final tail recall 0.60-0.85 at w=0 against 0.81-0.97 with teaching, 10 seeds);
- keeps the tail yield: the examples predicted as a head class (in the window for their
  novelty: the "novel" bucket) keep their places in the score order, and the tail buckets' queue
  fills the other places. (Giving the novel bucket an equal turn cut the share of rare digits
  among the first 50 of a 900-task Label Studio queue from 0.96 to 0.66.)
The result is one descending score per pool example, so a queue sorted by it is that order.
The window (the miner's ``queue_window``, MCM_QUEUE_WINDOW, 500) must also hold the rare examples
the model ranks below those it already recognises: with 200 of a 1,500-example pool whose tail is
450, the queue taught from the recognised ones only (mnist-three: final tail recall 0.81 / 0.86,
with 500: 0.87 / 0.92; live tail share and precision@50 unchanged: docs/quality.md).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from .novelty import l2_normalise
from .prefill import wilson_upper

NOVEL_BUCKET = -1
# The teaching weight in full once a class has 50 labels, in proportion below. Browser stage (rare digits
# with 2 labels each, then 2-10 more): full weight 0.5 from the start served 10 rare digits in 12 tasks;
# ramp 20: 12 in 12, but 7 in 10 in the two-annotator lanes once the digits had 9-14 labels; ramp 50:
# 20 in 20. The annotation loop's final tail recall is the full weight's (docs/quality.md, "The queue").
DEFAULT_QUEUE_TEACH = 1.0
DEFAULT_TEACH_RAMP = 50
# What the teaching term v weighs (the miner's queue_teach_by): the distance to what is labeled; the doubt of a
# plain classifier; or that doubt x the example's novelty against the labeled common rows ("novel_doubt": the
# doubt counts where the example is unlike every labeled common one, so an unrecognised rare example comes
# before a common one the RC layer lifted). The doubt forms need the classifier's probabilities; they teach a
# bucket in full, and only a bucket whose estimated share of rare examples (`bucket_purity`) reaches the
# miner's queue_doubt_purity; the others keep the distance and its ramp. Without the purity gate the doubt
# served the RC layer's mistakes live (browser stage: tail share 0.77 and 0.62; docs/quality.md).
TEACH_BY = ("distance", "doubt", "novel_doubt")
DEFAULT_TEACH_BY = "novel_doubt"
DEFAULT_DOUBT_PURITY = 0.8
QUEUE_FLOOR = 0.5  # queued examples score (QUEUE_FLOOR, 1]; the others QUEUE_FLOOR x score, below them


def bucket_purity(false_alarms: int, held_out: int, bucket_size: int, pool_size: int) -> float:
    """A lower estimate of the share of a tail class's bucket that is really of a rare class: 1 - (the
    false alarms expected in the pool) / (the bucket's size). `false_alarms` of `held_out` labeled
    common rows the RC layer never trained on were predicted as that class; the rate's one-sided 95 %
    upper bound (Wilson) x `pool_size` is what the bucket may hold of common examples (their high tail
    mass puts them all in the queue window). Few held-out rows give a loose bound and a low purity:
    the doubt waits for evidence."""
    if bucket_size <= 0:
        return 0.0
    expected = wilson_upper(int(false_alarms), int(held_out)) * max(int(pool_size), 0)
    return float(1.0 - min(1.0, expected / bucket_size))


def greedy_queue(scores: np.ndarray, buckets: np.ndarray, features: np.ndarray,
                 references: dict[int, np.ndarray], window: int, teach: float = 1.0,
                 teach_ramp: int = 0, doubt: np.ndarray | None = None,
                 doubt_buckets: Iterable[int] | None = None) -> np.ndarray:
    """Descending queue scores for a pool.

    scores (M,) in [0, 1] (pointwise tail likelihood); buckets (M,) int (tail class or
    NOVEL_BUCKET); features (M, D); references: bucket -> (R, D) labeled rows of that bucket (unit
    rows or not; may be empty). The ``window`` highest scores (stable ties) get queue scores in
    (0.5, 1]: the examples of the tail buckets in greedy round-robin order, in the places they
    hold in the score order, the novel bucket's in score order in theirs; every other example
    gets 0.5 * score, below them and in score order. The ring starts with the bucket with the fewest
    reference rows (then the lower class); ``teach`` weighs the teaching term (module docstring): the
    distance, in full for a bucket with ``teach_ramp`` reference rows or more, in proportion below (0:
    always in full); or, in the ``doubt_buckets`` (None: every tail bucket) when ``doubt`` (M,) in [0, 1]
    is given, that doubt, in full.
    Deterministic: ties go to the lower pool index."""
    s = np.asarray(scores, dtype=np.float64)
    b = np.asarray(buckets)
    if s.ndim != 1 or b.shape != s.shape or len(features) != len(s):
        raise ValueError(f"scores {s.shape}, buckets {b.shape} and {len(features)} features must align")
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    if not 0.0 <= teach <= 1.0:
        raise ValueError(f"teach must be in [0, 1], got {teach}")
    if teach_ramp < 0:
        raise ValueError(f"teach_ramp must be >= 0, got {teach_ramp}")
    if doubt is not None:
        doubt = np.asarray(doubt, dtype=np.float64)
        if doubt.shape != s.shape or not np.all((doubt >= 0.0) & (doubt <= 1.0)):
            raise ValueError(f"doubt must be {s.shape} values in [0, 1], got shape {doubt.shape}")
    out = QUEUE_FLOOR * np.clip(s, 0.0, 1.0)
    cand = window_rows(s, window)
    if len(cand) == 0:
        return out
    xu = l2_normalise(np.asarray(features)[cand]).astype(np.float64)
    cb = b[cand]
    novel = cb == NOVEL_BUCKET
    dmin = np.full(len(cand), 2.0)  # cosine distance <= 2
    for k in np.unique(cb[~novel]):
        ref = references.get(int(k))
        if ref is not None and len(ref):
            sel = cb == k
            dmin[sel] = np.maximum(1.0 - xu[sel] @ l2_normalise(ref).astype(np.float64).T, 0.0).min(1)
    cs = s[cand]
    avail = ~novel
    order = []
    ring = sorted((int(k) for k in np.unique(cb[~novel])), key=lambda k: (_n_rows(references.get(k)), k))
    doubted = set() if doubt is None else set(ring) if doubt_buckets is None else {int(k) for k in doubt_buckets}
    weight = {k: teach if k in doubted else
              teach * (min(1.0, _n_rows(references.get(k)) / teach_ramp) if teach_ramp else 1.0) for k in ring}
    cd = None if doubt is None else doubt[cand]
    while avail.any():
        for k in ring:
            m = avail & (cb == k)
            if not m.any():
                continue
            value = cd if k in doubted else dmin  # dmin is updated in place as the buckets fill
            i = int(np.argmax(np.where(m, cs * ((1.0 - weight[k]) + weight[k] * value), -np.inf)))
            order.append(i)
            avail[i] = False
            same = cb == k
            dmin[same] = np.minimum(dmin[same], np.maximum(1.0 - xu[same] @ xu[i], 0.0))
    # The tail buckets' queue order fills the places their examples hold in the score order; the
    # novel examples keep theirs, so the window's tail yield at every depth is the score's.
    final = np.arange(len(cand))
    final[np.flatnonzero(~novel)] = order
    n = len(final)
    out[cand[final]] = QUEUE_FLOOR + (1.0 - QUEUE_FLOOR) * (n - np.arange(n)) / n
    return out


def window_rows(scores: np.ndarray, window: int) -> np.ndarray:
    """Indices of the ``window`` highest scores, best first (stable: ties keep pool order)."""
    return np.argsort(-np.asarray(scores), kind="stable")[:min(window, len(scores))]


def _n_rows(ref) -> int:
    return 0 if ref is None else len(ref)
