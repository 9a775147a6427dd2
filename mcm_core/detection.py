"""Object detection with the miner: boxes, box crops, background boxes, and image scores.

The paper scores a detection image from its candidate detections d_j (box, confidence s_j): the
box-level decision score of each of the top-K most confident candidates, averaged. The miner
itself works at box level (one feature row per box), so detection adds only what is specific to
boxes:
- boxes are (x0, y0, x1, y1) fractions of the image's width and height, so they do not depend on
  the image's pixel size (IoU is invariant to scaling each axis);
- `crop_box`: the square image patch a frozen backbone sees for a box (the box plus some context,
  centred, the outside filled with black), the same for labeled and candidate boxes;
- `jittered_boxes`: imprecise copies of the annotated boxes, labeled with their object's class;
- `sample_background_boxes`: boxes on a labeled image that overlap no annotated object much: the
  "background" class a detector's classification head also has, so that the miner learns what a
  false-positive candidate looks like instead of finding it novel;
- `box_scores`: the miner's box-level decision score, plus uncertainty x novelty until a tail
  class has a labeled box (a project's cold start, see its docstring);
- `image_scores`: the top-K aggregation over each image's candidates (scoring.aggregate_detection_scores).
"""
from __future__ import annotations

import numpy as np

from .baselines import entropy
from .scoring import aggregate_detection_scores, tail_or_novel

DEFAULT_TOP_K = 3          # the paper's K
CROP_CONTEXT = 0.15        # context added on each side of a box, as a fraction of its longer side
BACKGROUND_MAX_IOU = 0.3   # a background box overlaps every annotated object less than this


def as_boxes(boxes) -> np.ndarray:
    """(n, 4) float64 (x0, y0, x1, y1) fractions; ValueError for a malformed or empty-area box."""
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return np.zeros((0, 4))
    if b.ndim != 2 or b.shape[1] != 4 or not np.isfinite(b).all():
        raise ValueError(f"boxes must be finite (n, 4) arrays of x0, y0, x1, y1, got shape {b.shape}")
    if ((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any():
        raise ValueError("every box needs x1 > x0 and y1 > y0")
    return b


def box_iou(a, b) -> np.ndarray:
    """(n, m) intersection over union of two sets of boxes."""
    a, b = as_boxes(a), as_boxes(b)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda c: (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def crop_region(box, width: int, height: int, context: float = CROP_CONTEXT) -> tuple[int, int, int, int]:
    """The square pixel region (left, top, right, bottom) a box is cropped to: centred on the box,
    side = longer box side x (1 + 2 context), at least 1 pixel; it may reach outside the image."""
    x0, y0, x1, y1 = as_boxes([box])[0]
    cx, cy = (x0 + x1) / 2 * width, (y0 + y1) / 2 * height
    side = max(1.0, max((x1 - x0) * width, (y1 - y0) * height) * (1 + 2 * context))
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    size = max(1, int(round(side)))
    return left, top, left + size, top + size


def crop_box(image, box, context: float = CROP_CONTEXT):
    """The PIL image patch of `box` (see crop_region); pixels outside the image are black."""
    return image.crop(crop_region(box, image.width, image.height, context))


def sample_background_boxes(gt_boxes, n: int, rng: np.random.Generator, max_iou: float = BACKGROUND_MAX_IOU,
                            default_size: float = 0.2, tries: int = 50) -> np.ndarray:
    """Up to `n` boxes whose IoU with every box of `gt_boxes` is below `max_iou`.

    Sizes follow the image's annotated boxes (x 0.7-1.4), or `default_size` on an image without
    any; positions are uniform. Partial overlaps with objects are allowed on purpose: they are the
    false positives a detector proposes."""
    gt = as_boxes(gt_boxes)
    sizes = gt[:, 2:] - gt[:, :2] if len(gt) else np.full((1, 2), float(default_size))
    out = []
    for _ in range(max(0, int(n)) * tries):
        if len(out) >= n:
            break
        w, h = np.clip(sizes[rng.integers(len(sizes))] * rng.uniform(0.7, 1.4, 2), 0.02, 1.0)
        x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        box = np.array([[x0, y0, x0 + w, y0 + h]])
        if not len(gt) or box_iou(box, gt).max() < max_iou:
            out.append(box[0])
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)


def jittered_boxes(gt_boxes, n: int, rng: np.random.Generator, shift: float = 0.15,
                   scale: tuple[float, float] = (0.85, 1.2)) -> np.ndarray:
    """`n` imprecise copies of each box (centre moved up to `shift` x its size, sides scaled within
    `scale`), in order box 0's copies, box 1's, ...: the proposals a detector's box head is trained
    on with the class of the object they cover, so that the miner knows candidates that are not
    pixel-exact."""
    gt = as_boxes(gt_boxes)
    out = np.zeros((len(gt) * max(0, int(n)), 4))
    for i, (x0, y0, x1, y1) in enumerate(np.repeat(gt, max(0, int(n)), axis=0)):
        w, h = x1 - x0, y1 - y0
        cx, cy = (x0 + x1) / 2 + rng.uniform(-shift, shift) * w, (y0 + y1) / 2 + rng.uniform(-shift, shift) * h
        w, h = w * rng.uniform(*scale), h * rng.uniform(*scale)
        out[i] = np.clip([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 0.0, 1.0)
    return out


def cold_start_classes(miner, n_object_classes: int) -> list[int]:
    """The tail object classes when none of them has a labeled box, else []: the cold start of
    `box_scores`. Object classes are 0 .. n_object_classes - 1 (a background class after them is
    not one); a class without any labeled box is always a tail class of the miner."""
    counts = list(miner.fit_info_.get("labeled_per_class", []))[:int(n_object_classes)]
    counts += [0] * (int(n_object_classes) - len(counts))
    tail = [int(k) for k in miner.tail_ if k < int(n_object_classes)]
    return tail if tail and not any(counts[k] for k in tail) else []


def box_scores(miner, features, n_object_classes: int, cold_start: bool = True,
               probs: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """(Each box's decision score, the scores' upper bound) from a fitted MinorityMiner.

    The miner's score S (reconstruction error by default) points at the tail classes the RC layer
    was taught. Before any tail class has a labeled box (cold start: `cold_start_classes`), it has
    none, and a never-labeled class's objects look like a head class or background to it. The
    score is then 1 - (1 - S / bound)(1 - H N): H = the entropy of the RC probabilities / log C
    (the layer cannot place the box), N = the miner's feature novelty against the labeled head
    boxes (the box is unlike every one of them). Either alone also rises on ambiguous head objects
    or odd crops of them; the product keeps the boxes that are both. Once one tail class has a
    labeled box, S alone ranks better, even for the tail classes still without one (detection
    benchmark, det-few and det-zero: docs/detection.md). A miner without a novelty reference
    (saved by an older version) uses H alone. `probs`: miner.predict_proba(features) when the
    caller already has it (the backend also labels the boxes with it)."""
    s = np.asarray(miner.score_samples(features), np.float64)
    bound = float(miner.score_upper_bound)
    has_own = miner.config.get("strategy") == "reconstruction_cold"  # its score holds the cold-start term already
    if has_own or not cold_start or not cold_start_classes(miner, n_object_classes) or not len(s):
        return s, bound
    p = np.asarray(miner.predict_proba(features) if probs is None else probs, np.float64)
    unsure = entropy(p) / np.log(p.shape[1]) if p.shape[1] > 1 else np.zeros(len(p))
    if miner.novelty_ is not None:
        unsure = unsure * miner.novelty_score(features)
    return tail_or_novel(s / bound, unsure), 1.0


def image_scores(scores, confidences, offsets, k: int | None = DEFAULT_TOP_K) -> np.ndarray:
    """Per image: the mean box score over its `k` most confident candidates (all with k=None);
    0 for an image without candidates (it ranks last).

    scores, confidences: (n_boxes,) of all images' candidates, image i's being
    [offsets[i], offsets[i + 1])."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    c = np.asarray(confidences, dtype=np.float64).reshape(-1)
    o = np.asarray(offsets, dtype=np.int64).reshape(-1)
    if s.shape != c.shape or len(o) < 1 or o[0] != 0 or o[-1] != len(s) or (np.diff(o) < 0).any():
        raise ValueError(f"{len(s)} box scores, {len(c)} confidences and offsets {o[:3]}... do not align")
    if len(o) == 1:
        return np.zeros(0)
    top = len(s) + 1 if k is None else int(k)
    return aggregate_detection_scores(np.split(s, o[1:-1]), np.split(c, o[1:-1]), k=top)
