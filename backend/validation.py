"""Shape checks for what callers send, at the HTTP boundary.

Every view validates its input here before anything else runs, so a malformed
request gets a 400 whose message names the field (e.g. `tasks[3].id`), never a
500 from deep inside the model code.
"""
from __future__ import annotations

import re
from typing import Any

_DIGITS = re.compile(r"[0-9]{1,15}")
MAX_ID = 2**53  # ids are JSON numbers: larger ones are not exact anyway


class HttpError(Exception):
    """An answer other than 2xx, with the message the caller sees."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _integer_id(value: Any, field: str, allow_suffix: bool = False) -> int:
    """A non-negative integer id: a JSON integer or ASCII digits (with '.<anything>' if `allow_suffix`)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < MAX_ID:
            return value
    elif isinstance(value, str):
        text = value.strip()
        if allow_suffix:
            text = text.split(".", 1)[0]
        if _DIGITS.fullmatch(text):
            return int(text)
    raise HttpError(400, f"'{field}' must be a non-negative integer id, got {_short(value)}")


def project_id(value: Any, field: str = "project") -> int:
    """Label Studio sends "<id>.<created_ts>" to /setup and /predict and {"id": ...} in webhooks."""
    if value is None:
        raise HttpError(400, f"missing '{field}' (expected a project id, '<id>.<timestamp>' or {{'id': ...}})")
    if isinstance(value, dict):
        value, field = value.get("id"), f"{field}.id"
        if value is None:
            raise HttpError(400, f"missing '{field}'")
    return _integer_id(value, field, allow_suffix=True)


def optional_text(data: dict, key: str, field: str | None = None) -> str | None:
    """`data[key]` when it is a string, None when absent or null; 400 for any other type."""
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise HttpError(400, f"'{field or key}' must be a string, got {type(value).__name__}")


def choice(value: Any, allowed: tuple[str, ...], field: str, default: str | None = None) -> str:
    """One of `allowed` (a query parameter such as ?format=), `default` when absent."""
    if value is None and default is not None:
        return default
    if isinstance(value, str) and value in allowed:
        return value
    raise HttpError(400, f"'{field}' must be one of {', '.join(allowed)}, got {_short(value)}")


def tasks(value: Any, field: str = "tasks") -> list[dict]:
    """Label Studio tasks as {id: int, data: dict, ...}; ids normalised to int."""
    if not isinstance(value, list):
        raise HttpError(400, f"'{field}' must be a list of Label Studio tasks, got {type(value).__name__}")
    checked = []
    for index, task in enumerate(value):
        name = f"{field}[{index}]"
        if not isinstance(task, dict):
            raise HttpError(400, f"'{name}' must be an object with an 'id', got {type(task).__name__}")
        if "id" not in task:
            raise HttpError(400, f"'{name}' has no 'id'")
        data = task.get("data")
        if data is not None and not isinstance(data, dict):
            raise HttpError(400, f"'{name}.data' must be an object, got {type(data).__name__}")
        checked.append({**task, "id": _integer_id(task["id"], f"{name}.id"), "data": data or {}})
    return checked


def task_ids(value: Any, field: str = "tasks") -> list[int]:
    """The ids of a webhook's task list (each item a task object or a bare id)."""
    if not isinstance(value, list):
        raise HttpError(400, f"'{field}' must be a list of tasks, got {type(value).__name__}")
    ids = []
    for index, task in enumerate(value):
        raw = task.get("id") if isinstance(task, dict) else task
        ids.append(_integer_id(raw, f"{field}[{index}].id"))
    return ids


def webhook(data: dict) -> str:
    """Check a webhook payload's parts this backend reads; return its action."""
    action = data.get("action")
    if not isinstance(action, str) or not action:
        raise HttpError(400, "webhook payload has no 'action' (a string such as 'ANNOTATION_CREATED')")
    project = data.get("project")
    if isinstance(project, dict):
        optional_text(project, "label_config", "project.label_config")
    annotation = data.get("annotation")
    if annotation is not None:
        if not isinstance(annotation, dict):
            raise HttpError(400, f"'annotation' must be an object, got {type(annotation).__name__}")
        result = annotation.get("result")
        if result is not None and not isinstance(result, list):
            raise HttpError(400, f"'annotation.result' must be a list of regions, got {type(result).__name__}")
        for index, region in enumerate(result or []):
            name = f"annotation.result[{index}]"
            if not isinstance(region, dict):
                raise HttpError(400, f"'{name}' must be an object, got {type(region).__name__}")
            value = region.get("value")
            if value is not None and not isinstance(value, dict):
                raise HttpError(400, f"'{name}.value' must be an object, got {type(value).__name__}")
            choices = (value or {}).get("choices")
            if choices is not None and not isinstance(choices, list):
                raise HttpError(400, f"'{name}.value.choices' must be a list, got {type(choices).__name__}")
    return action
