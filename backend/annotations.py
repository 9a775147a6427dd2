"""Reading one annotated task: its class (classification) or its boxes and their classes (object
detection), from Label Studio's annotations, treated as untrusted input (each bad item is counted in
a `Skipped` and left out). Pure functions; the task kinds (backend/classification.py,
backend/detection.py) choose which reading a project gets."""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np

from .boxes import checked_image_size, rectangle, region_label
from .label_config import LabelConfig
from .validation import Skipped, parse_timestamp, short

logger = logging.getLogger(__name__)


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _result(annotation: Any) -> list | None:
    """The annotation's regions, or None when it is not an annotation (not an object, or its
    `result` is neither absent nor a list)."""
    if not isinstance(annotation, dict):
        return None
    result = annotation.get("result")
    if result is None:
        return []
    return result if isinstance(result, list) else None


def _region_choice(region: Any, config: LabelConfig) -> tuple[str | None, str | None]:
    """(the class a Choices region of our control picks, None), (None, why it is unusable), or
    (None, None) for a region of another control."""
    if not isinstance(region, dict):
        return None, f"a region must be an object, got {type(region).__name__}"
    if region.get("from_name") != config.control_name:
        return None, None
    value = region.get("value")
    choices = value.get("choices") if isinstance(value, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], str):
        return None, f"value.choices must be a non-empty list of class names, got {short(value)}"
    return choices[0], None


def annotation_choice(annotation: Any, config: LabelConfig, skipped: Skipped | None = None,
                      task_id: Any = None) -> str | None:
    """The chosen class of one annotation for our Choices control, or None (malformed regions are
    counted in `skipped`)."""
    if _field(annotation, "was_cancelled", False):
        return None
    for region in _result(annotation) or []:
        choice, problem = _region_choice(region, config)
        if problem and skipped is not None:
            skipped.add("regions", task_id, problem)
        if choice is not None:
            return choice
    return None


def _latest_first(task: dict, skipped: Skipped | None = None) -> list[dict]:
    """The task's annotations, most recently updated first: an edit by a reviewer replaces the
    original rather than voting with it. Anything that is not an annotation is counted and left out."""
    raw = task.get("annotations")
    annotations = []
    for annotation in raw if isinstance(raw, list) else []:
        if _result(annotation) is None:
            if skipped is not None:
                skipped.add("annotations", task.get("id"), "an annotation must be an object whose 'result' is a "
                            f"list of regions, got {short(annotation)}")
            continue
        annotations.append(annotation)

    def recency(annotation: dict) -> tuple[float, int]:
        updated, number = annotation.get("updated_at"), annotation.get("id")
        at = parse_timestamp(updated)
        if at is None and updated is not None and skipped is not None:
            skipped.add("dates", task.get("id"), f"annotation {short(number)}: updated_at {short(updated)} is not an "
                                                 "ISO-8601 time between 1970 and 2200; taken as the oldest")
        return (at.timestamp() if at is not None else -math.inf,
                number if isinstance(number, int) and not isinstance(number, bool) else 0)
    annotations.sort(key=recency, reverse=True)
    return annotations


def task_label(task: dict, config: LabelConfig, skipped: Skipped | None = None) -> tuple[str | None, str | None]:
    """(label, None) for the task's most recent usable annotation, or (None, reason)."""
    for annotation in _latest_first(task, skipped):
        label = annotation_choice(annotation, config, skipped, task.get("id"))
        if label is None:
            continue
        if label not in config.classes:
            return None, f"unknown label {label[:200]!r} (config classes: {list(config.classes)})"
        return label, None
    return None, "no non-cancelled annotation with a choice for control " + repr(config.control_name)


@dataclasses.dataclass
class TaskBoxes:
    """The objects of one annotated image: boxes (n, 4) as fractions and their class index
    (-1 for a label the config does not know: kept so no background box is drawn over it)."""

    boxes: np.ndarray
    classes: np.ndarray


def task_boxes(task: dict, config: LabelConfig, skipped: Skipped | None = None) -> tuple[TaskBoxes | None, str | None]:
    """(the boxes of the task's most recent non-cancelled annotation, None), or (None, reason).

    An annotation without any rectangle is an image without objects (its background still
    teaches the miner what a false detection looks like); malformed regions are skipped (and
    counted in `skipped`), an unusable image size only makes a rotated box's size a guess."""
    task_id = task.get("id")
    for annotation in _latest_first(task, skipped):
        if annotation.get("was_cancelled", False):
            continue
        boxes, classes = [], []
        for region in _result(annotation) or []:
            if isinstance(region, dict) and region.get("from_name") != config.control_name:
                continue
            box, problem = rectangle(region)
            label = region_label(region) if box is not None else None
            if box is not None and label is None:
                problem = f"value.rectanglelabels must be a non-empty list of label names, got {short(region)}"
            if problem:
                if skipped is not None:
                    skipped.add("regions", task_id, problem)
                continue
            _size, size_problem = checked_image_size(region)
            if size_problem and skipped is not None:
                skipped.add("image_sizes", task_id, size_problem)
            boxes.append(box)
            classes.append(config.classes.index(label) if label in config.classes else -1)
        return TaskBoxes(np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(classes, np.int64)), None
    return None, "no non-cancelled annotation"


@dataclasses.dataclass
class LabeledTasks:
    """A project's config and its annotated tasks: those with a usable label, and all of them."""

    config: LabelConfig
    tasks: list[dict]          # usable: {id, data, ...}
    labels: list[int]          # class index per usable task (classification)
    annotated_ids: list[int]   # every annotated task (they leave the pool of unlabeled tasks)
    objects: list[TaskBoxes] = dataclasses.field(default_factory=list)  # per usable task (detection)


@dataclasses.dataclass
class TrainingRows:
    """What a task kind trains the miner on (backend/fitting.py)."""

    keys: list              # feature cache keys, one per row
    y: np.ndarray           # int64 class per row
    objects: np.ndarray     # int64 class per labeled object (a task, or an annotated box): counts, tail classes
    n_classes: int          # the miner's outputs
    cache_kind: str | None = None   # the feature cache the rows are in (None: the extractor's)
    options: dict | None = None     # the miner's options (None: MCM_MINER_OPTIONS)
    n_tasks: int = 0        # labeled tasks the rows come from
    unlabeled_keys: list = dataclasses.field(default_factory=list)  # pool images a backbone may learn from


def usable_tasks(project_id: int, annotated: list[dict], read) -> tuple[list[dict], list]:
    """(tasks, read(task)'s value of each) for the tasks `read` finds a value in; the others are logged."""
    tasks, values = [], []
    for task in annotated:
        value, reason = read(task)
        if value is None:
            logger.warning("project %s: skipping annotated task %s for training: %s", project_id, task.get("id"),
                           reason)
            continue
        tasks.append(task)
        values.append(value)
    return tasks, values
