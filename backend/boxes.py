"""Label Studio's rectangle format <-> the boxes mcm_core works with.

Label Studio stores a rectangle as percentages of the image (`x`, `y`, `width`, `height`,
`rotation` in degrees clockwise around the top-left corner) plus `original_width/height` in
pixels when it knows them. mcm_core.detection works with (x0, y0, x1, y1) fractions of the image.
A rotated rectangle becomes its axis-aligned bounding box (what a crop or a box head can use).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .validation import MAX_IMAGE_SIDE, finite_number, image_side, short

MIN_SIDE = 1e-4  # boxes thinner than this fraction of the image carry no pixels
MAX_PERCENT = 10_000.0  # coordinates beyond 100 image widths are not a rectangle of the image


def checked_image_size(region: dict) -> tuple[tuple[int, int], str | None]:
    """((original_width, original_height), None); ((0, 0), None) when Label Studio gave neither;
    ((0, 0), why) when they are not pixel counts in 1..MAX_IMAGE_SIDE (0.5, 1e300, NaN, text)."""
    width, height = region.get("original_width"), region.get("original_height")
    if width is None and height is None:
        return (0, 0), None
    w, h = image_side(width), image_side(height)
    if w is None or h is None:
        return (0, 0), (f"original_width {short(width)}, original_height {short(height)}: expected pixel counts "
                        f"in 1..{MAX_IMAGE_SIDE}; the image size is taken as unknown")
    return (w, h), None


def image_size(region: dict) -> tuple[int, int]:
    """(original_width, original_height) of a result region, (0, 0) when not given or not usable."""
    return checked_image_size(region)[0]


def rectangle(region: Any) -> tuple[np.ndarray | None, str | None]:
    """(the (x0, y0, x1, y1) fractions of a rectanglelabels result region, None), or (None, why not)."""
    if not isinstance(region, dict):
        return None, f"a region must be an object, got {type(region).__name__}"
    value = region.get("value")
    if not isinstance(value, dict):
        return None, f"a rectangle's 'value' must be an object, got {type(value).__name__}"
    raw = [value.get(k) for k in ("x", "y", "width", "height")]
    x, y, w, h = (finite_number(v) for v in raw)
    if None in (x, y, w, h):
        return None, f"a rectangle's x, y, width, height must be finite numbers, got {short(raw)}"
    if w <= 0 or h <= 0 or max(abs(x), abs(y), w, h) > MAX_PERCENT:
        return None, f"a rectangle needs width, height > 0 and coordinates within {MAX_PERCENT:g}%, got {short(raw)}"
    rotation = value.get("rotation")
    degrees = 0.0 if rotation is None else finite_number(rotation)
    if degrees is None:
        return None, f"a rectangle's rotation must be a finite number of degrees, got {short(rotation)}"
    if degrees % 360:
        width, height = image_size(region)
        sx, sy = (width, height) if width else (1.0, 1.0)  # unknown size: rotate as if square
        theta = math.radians(degrees % 360)
        corners = [(0, 0), (w * sx, 0), (w * sx, h * sy), (0, h * sy)]
        xs = [x * sx + cx * math.cos(theta) - cy * math.sin(theta) for cx, cy in corners]
        ys = [y * sy + cx * math.sin(theta) + cy * math.cos(theta) for cx, cy in corners]
        box = np.array([min(xs) / sx, min(ys) / sy, max(xs) / sx, max(ys) / sy]) / 100.0
    else:
        box = np.array([x, y, x + w, y + h]) / 100.0
    box = np.clip(box, 0.0, 1.0)
    if not np.isfinite(box).all() or box[2] - box[0] < MIN_SIDE or box[3] - box[1] < MIN_SIDE:
        return None, f"the rectangle {short(raw)} (rotation {degrees:g}) is outside the image or has no area"
    return box, None


def region_box(region: dict) -> np.ndarray | None:
    """The (x0, y0, x1, y1) fractions of a rectanglelabels result region, or None if malformed."""
    return rectangle(region)[0]


def region_label(region: dict) -> str | None:
    """The first of the region's `rectanglelabels` (a label name), or None."""
    value = region.get("value") if isinstance(region, dict) else None
    labels = value.get("rectanglelabels") if isinstance(value, dict) else None
    return labels[0] if isinstance(labels, list) and labels and isinstance(labels[0], str) else None


def rectangle_result(control_name: str, image_name: str, box, label: str, score: float,
                     size: tuple[int, int] = (0, 0), region_id: str | None = None) -> dict:
    """A RectangleLabels pre-annotation region in Label Studio's result format."""
    x0, y0, x1, y1 = (float(v) * 100.0 for v in box)
    region = {"from_name": control_name, "to_name": image_name, "type": "rectanglelabels",
              "value": {"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0, "rotation": 0,
                        "rectanglelabels": [label]},
              "score": float(score)}
    if region_id:
        region["id"] = region_id
    width, height = image_side(size[0]), image_side(size[1])
    if width and height:
        region.update(original_width=width, original_height=height, image_rotation=0)
    return region


def box_key(url: str, box) -> str:
    """The feature cache's key text of one box of an image (a changed box is a new key)."""
    return url + "#box=" + ",".join(f"{float(v):.4f}" for v in box)
