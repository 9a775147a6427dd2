"""Shape checks for what callers send, at the HTTP boundary, and for data read from Label Studio.

Every view validates its input here before anything else runs, so a malformed
request gets a 400 whose message names the field (e.g. `tasks[3].id`), never a
500 from deep inside the model code. What the backend reads back from Label Studio
(annotations, predictions, tabs) is checked with the helpers at the end, which never
raise: one bad item is skipped, counted in `Skipped` and logged, never stops a project.
"""
from __future__ import annotations

import collections
import logging
import math
import re
import threading
from datetime import datetime, timezone
from typing import Any

logger = logging.getLogger(__name__)

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


# --- data read from Label Studio ------------------------------------------------------------------
# Annotations, predictions, tabs and label configs are stored by people and other tools: the
# checks below never raise, they say why a value is unusable, and the caller skips that item only.
MAX_IMAGE_SIDE = 100_000  # pixels: no image Label Studio can show is wider or taller
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(2200, 1, 1, tzinfo=timezone.utc)  # later ones are typos; epoch seconds stay exact
MAX_TIMESTAMP_CHARS = 64


def short(value: Any) -> str:
    """`value` for a log line or an error message: its repr, at most 80 characters."""
    return _short(value)


def finite_number(value: Any) -> float | None:
    """A JSON number as a finite float; None for anything else (bool, text, NaN, infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond a float's range
        return None
    return number if math.isfinite(number) else None


def image_side(value: Any) -> int | None:
    """An image width or height in pixels (`original_width`/`original_height`), or None if it is
    not a finite number in 1..MAX_IMAGE_SIDE: 0.5 would become 0 (a division by zero), 1e300 an
    integer no array can hold."""
    number = finite_number(value)
    if number is None or not 1 <= number <= MAX_IMAGE_SIDE:
        return None
    return int(number)


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO-8601 time as an aware UTC datetime, or None if it is not one or falls outside
    1970..2200. A naive time is UTC (Label Studio's). Refused: e.g. '0001-01-01T00:00:00+14:00',
    a valid string whose UTC time is before year 1 (no epoch conversion or date display survives it)."""
    if not isinstance(value, str) or not value or len(value) > MAX_TIMESTAMP_CHARS:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        parsed = parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None
    return parsed if EARLIEST <= parsed < LATEST else None


class Skipped:
    """Items read from Label Studio that were skipped, per kind, and the last few reasons (thread-safe).

    Kinds: annotations, predictions, regions, image_sizes, label_values, tabs, dates. Counts are
    since the process started: an item read at every retraining counts each time. Each skip is
    logged with the task id and the reason (a warning the first time); /mcm/status reports `as_dict()`."""

    KINDS = ("annotations", "predictions", "regions", "image_sizes", "label_values", "tabs", "dates")
    RECENT = 10
    LOGGED = 1000  # distinct items logged as warnings (the same item read again is logged at debug level)

    def __init__(self, project_id: int | None = None) -> None:
        self.project_id = project_id
        self._counts = dict.fromkeys(self.KINDS, 0)
        self._recent: collections.deque = collections.deque(maxlen=self.RECENT)
        self._logged: set[tuple[str, int | None, str]] = set()
        self._lock = threading.Lock()

    def add(self, kind: str, task_id: Any, reason: str) -> None:
        """Count, remember and log one skipped item (`task_id` None for a project-wide one)."""
        if kind not in self._counts:
            raise ValueError(f"unknown kind of skipped item {kind!r}; expected one of {self.KINDS}")
        task, reason = (task_id if isinstance(task_id, int) and not isinstance(task_id, bool) else None), reason[:300]
        with self._lock:
            self._counts[kind] += 1
            self._recent.append({"kind": kind, "task": task, "reason": reason})
            first = (kind, task, reason) not in self._logged
            if first:
                if len(self._logged) >= self.LOGGED:
                    self._logged.clear()
                self._logged.add((kind, task, reason))
        where = f"task {task}" if task is not None else "project-wide"
        logger.log(logging.WARNING if first else logging.DEBUG, "project %s: skipped one of the %s read from Label "
                   "Studio (%s): %s", self.project_id, kind, where, reason)

    def count(self, kind: str) -> int:
        with self._lock:
            return self._counts[kind]

    def as_dict(self) -> dict:
        with self._lock:
            return {**self._counts, "recent": list(self._recent)}
