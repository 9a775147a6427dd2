"""Each task's pre-annotation regions of one version (detection projects): beside ranking.npz.

A classification prediction is one class per task (ranking.ChoiceResults); a detection
prediction is a set of boxes, each with the pre-fill classifier's class (only boxes whose class is
reliable: backend/detection.py, mcm_core.prefill) and the detector's confidence. They
are written to MODEL_DIR/<project>/<version>/regions.npz when the ranking is saved and read back
when predictions are built (publish, fill, new tasks), so detection goes through the same
publishing path as classification.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from mcm_core.atomic import atomic_savez

from .boxes import rectangle_result
from .shown import TaskItems
from .validation import image_side


def _pixels(size) -> tuple[int, int]:
    """An image size that fits the file: both sides in 1..MAX_IMAGE_SIDE, else (0, 0) (unknown)."""
    width, height = image_side(size[0]), image_side(size[1])
    return (width, height) if width and height else (0, 0)


@dataclasses.dataclass
class Region:
    boxes: np.ndarray        # (n, 4) x0, y0, x1, y1 fractions
    labels: np.ndarray       # (n,) class index
    confidences: np.ndarray  # (n,) the candidate's confidence
    size: tuple[int, int] = (0, 0)  # the image's original width, height (0: unknown)


class TaskRegions(TaskItems):
    """{task id: Region}; empty for a task without a region above the confidence threshold."""

    file_name = "regions.npz"  # beside the version's ranking.npz (backend/ranking.py)

    def result(self, task_id: int, config, version_tag: str = "mcm") -> list[dict]:
        """The task's regions in Label Studio's result format (RectangleLabels)."""
        region = self.items.get(int(task_id))
        if region is None:
            return []
        return [rectangle_result(config.control_name, config.image_name, box, config.classes[int(label)],
                                 float(conf), region.size, f"{version_tag}-{int(task_id)}-{j}")
                for j, (box, label, conf) in enumerate(zip(region.boxes, region.labels, region.confidences))]

    def save(self, path: str) -> None:
        ids = list(self.items)
        regions = [self.items[t] for t in ids]
        offsets = np.concatenate([[0], np.cumsum([len(r.boxes) for r in regions])]).astype(np.int64)
        cat = lambda parts, shape: np.concatenate(parts) if parts else np.zeros(shape)  # noqa: E731
        atomic_savez(path, task_ids=np.asarray(ids, np.int64), offsets=offsets,
                     boxes=cat([r.boxes for r in regions], (0, 4)).astype(np.float32).reshape(-1, 4),
                     labels=cat([r.labels for r in regions], 0).astype(np.int32),
                     confidences=cat([r.confidences for r in regions], 0).astype(np.float32),
                     sizes=np.asarray([_pixels(r.size) for r in regions], np.int64).reshape(-1, 2))

    @classmethod
    def load(cls, path: str) -> "TaskRegions":
        with np.load(path, allow_pickle=False) as data:
            ids, offsets, sizes = data["task_ids"], data["offsets"], data["sizes"]
            boxes, labels, conf = data["boxes"], data["labels"], data["confidences"]
        return cls({int(t): Region(boxes[offsets[i]:offsets[i + 1]].astype(np.float64),
                                   labels[offsets[i]:offsets[i + 1]], conf[offsets[i]:offsets[i + 1]].astype(np.float64),
                                   (int(sizes[i][0]), int(sizes[i][1])))
                    for i, t in enumerate(ids.tolist())})
