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

MIN_SIDE = 1e-4  # boxes thinner than this fraction of the image carry no pixels


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def image_size(region: dict) -> tuple[int, int]:
    """(original_width, original_height) of a result region, (0, 0) when not given."""
    w, h = _number(region.get("original_width")), _number(region.get("original_height"))
    return (int(w), int(h)) if w and h and w > 0 and h > 0 else (0, 0)


def region_box(region: dict) -> np.ndarray | None:
    """The (x0, y0, x1, y1) fractions of a rectanglelabels result region, or None if malformed."""
    value = region.get("value")
    if not isinstance(value, dict):
        return None
    x, y, w, h = (_number(value.get(k)) for k in ("x", "y", "width", "height"))
    if None in (x, y, w, h) or w <= 0 or h <= 0:
        return None
    rotation = _number(value.get("rotation")) or 0.0
    if rotation % 360:
        width, height = image_size(region)
        sx, sy = (width, height) if width else (1.0, 1.0)  # unknown size: rotate as if square
        theta = math.radians(rotation)
        corners = [(0, 0), (w * sx, 0), (w * sx, h * sy), (0, h * sy)]
        xs = [x * sx + cx * math.cos(theta) - cy * math.sin(theta) for cx, cy in corners]
        ys = [y * sy + cx * math.sin(theta) + cy * math.cos(theta) for cx, cy in corners]
        box = np.array([min(xs) / sx, min(ys) / sy, max(xs) / sx, max(ys) / sy]) / 100.0
    else:
        box = np.array([x, y, x + w, y + h]) / 100.0
    box = np.clip(box, 0.0, 1.0)
    if box[2] - box[0] < MIN_SIDE or box[3] - box[1] < MIN_SIDE:
        return None
    return box


def region_label(region: dict) -> str | None:
    labels = (region.get("value") or {}).get("rectanglelabels") if isinstance(region.get("value"), dict) else None
    return str(labels[0]) if isinstance(labels, list) and labels else None


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
    if size[0] > 0 and size[1] > 0:
        region.update(original_width=int(size[0]), original_height=int(size[1]), image_rotation=0)
    return region


def box_key(url: str, box) -> str:
    """The feature cache's key text of one box of an image (a changed box is a new key)."""
    return url + "#box=" + ",".join(f"{float(v):.4f}" for v in box)
