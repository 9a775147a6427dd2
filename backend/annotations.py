"""Turn Label Studio annotations into one class label per task."""
from __future__ import annotations

import logging
from typing import Any

from .label_config import ImageChoicesConfig

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
