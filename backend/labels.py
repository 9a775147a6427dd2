"""Collecting labels from Label Studio: one class label per annotated task (classification), or the
boxes and their classes of each annotated task (object detection)."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from . import labelstudio
from .boxes import region_box, region_label
from .label_config import LabelConfig, parse_label_config

logger = logging.getLogger(__name__)


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def annotation_choice(annotation: Any, config: LabelConfig) -> str | None:
    """The chosen class of one annotation for our Choices control, or None."""
    if _field(annotation, "was_cancelled", False):
        return None
    for region in _field(annotation, "result", None) or []:
        if _field(region, "from_name") != config.control_name:
            continue
        choices = (_field(region, "value") or {}).get("choices") or []
        if choices:
            return str(choices[0])
    return None


def _latest_first(task: dict) -> list:
    """The task's annotations, most recently updated first: an edit by a reviewer replaces the
    original rather than voting with it."""
    annotations = list(task.get("annotations") or [])
    annotations.sort(key=lambda a: (str(_field(a, "updated_at") or ""), _field(a, "id") or 0), reverse=True)
    return annotations


def task_label(task: dict, config: LabelConfig) -> tuple[str | None, str | None]:
    """(label, None) for the task's most recent usable annotation, or (None, reason)."""
    for annotation in _latest_first(task):
        label = annotation_choice(annotation, config)
        if label is None:
            continue
        if label not in config.classes:
            return None, f"unknown label {label!r} (config classes: {list(config.classes)})"
        return label, None
    return None, "no non-cancelled annotation with a choice for control " + repr(config.control_name)


@dataclasses.dataclass
class TaskBoxes:
    """The objects of one annotated image: boxes (n, 4) as fractions and their class index
    (-1 for a label the config does not know: kept so no background box is drawn over it)."""

    boxes: np.ndarray
    classes: np.ndarray


def task_boxes(task: dict, config: LabelConfig) -> tuple[TaskBoxes | None, str | None]:
    """(the boxes of the task's most recent non-cancelled annotation, None), or (None, reason).

    An annotation without any rectangle is an image without objects (its background still
    teaches the miner what a false detection looks like); malformed regions are skipped."""
    for annotation in _latest_first(task):
        if _field(annotation, "was_cancelled", False):
            continue
        boxes, classes = [], []
        for region in _field(annotation, "result", None) or []:
            if not isinstance(region, dict) or region.get("from_name") != config.control_name:
                continue
            box, label = region_box(region), region_label(region)
            if box is None or label is None:
                continue
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


def collect_labels(client, project_id: int) -> LabeledTasks:
    """The project's label config and annotated tasks from Label Studio; unusable ones are logged."""
    config = parse_label_config(labelstudio.get_label_config(client, project_id))
    annotated = labelstudio.list_annotated_tasks(client, project_id)
    annotated_ids = [int(t["id"]) for t in annotated]
    if config.detection:
        tasks, objects = _usable(project_id, annotated, lambda task: task_boxes(task, config))
        for task, found in zip(tasks, objects):
            if (found.classes < 0).any():
                logger.warning("project %s: task %s: %d boxes with labels not in the config %s are not trained on",
                               project_id, task.get("id"), int((found.classes < 0).sum()), list(config.classes))
        return LabeledTasks(config, tasks, [], annotated_ids, objects)
    tasks, labels = _usable(project_id, annotated, lambda task: task_label(task, config))
    return LabeledTasks(config, tasks, [config.class_index(label) for label in labels], annotated_ids)


def _usable(project_id: int, annotated: list[dict], read) -> tuple[list[dict], list]:
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
