"""Collecting labels from Label Studio: one class label per annotated task."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

from . import labelstudio
from .label_config import ImageChoicesConfig, parse_label_config

logger = logging.getLogger(__name__)


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def annotation_choice(annotation: Any, config: ImageChoicesConfig) -> str | None:
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


def task_label(task: dict, config: ImageChoicesConfig) -> tuple[str | None, str | None]:
    """(label, None) for the task's most recent usable annotation, or (None, reason).

    The most recently updated non-cancelled annotation wins: an edit by a
    reviewer replaces the original choice rather than voting with it.
    """
    annotations = list(task.get("annotations") or [])
    annotations.sort(key=lambda a: (str(_field(a, "updated_at") or ""), _field(a, "id") or 0), reverse=True)
    for annotation in annotations:
        label = annotation_choice(annotation, config)
        if label is None:
            continue
        if label not in config.classes:
            return None, f"unknown label {label!r} (config classes: {list(config.classes)})"
        return label, None
    return None, "no non-cancelled annotation with a choice for control " + repr(config.control_name)


@dataclasses.dataclass
class LabeledTasks:
    """A project's config and its annotated tasks: those with a usable label, and all of them."""

    config: ImageChoicesConfig
    tasks: list[dict]          # usable: {id, data, ...}
    labels: list[int]          # class index per usable task
    annotated_ids: list[int]   # every annotated task (they leave the pool of unlabeled tasks)


def collect_labels(client, project_id: int) -> LabeledTasks:
    """The project's label config and annotated tasks from Label Studio; unusable ones are logged."""
    config = parse_label_config(labelstudio.get_label_config(client, project_id))
    annotated = labelstudio.list_annotated_tasks(client, project_id)
    tasks, labels = [], []
    for task in annotated:
        label, reason = task_label(task, config)
        if label is None:
            logger.warning("project %s: skipping annotated task %s for training: %s", project_id, task.get("id"),
                           reason)
            continue
        tasks.append(task)
        labels.append(config.class_index(label))
    return LabeledTasks(config, tasks, labels, [int(t["id"]) for t in annotated])
