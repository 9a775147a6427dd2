"""Read tasks from Label Studio by id, so webhook payloads are never trusted for task data.

A TASKS_CREATED payload names tasks; their image URLs are read back from Label
Studio (which only returns tasks of the given project), because anyone who can
reach /webhook could otherwise make the backend fetch a URL of their choice.
"""
from __future__ import annotations

import json
from typing import Sequence

from label_studio_sdk import LabelStudio

from .ls_sync import LabelStudioSyncError

IDS_PER_REQUEST = 200


def get_tasks(client: LabelStudio, project_id: int, ids: Sequence[int]) -> list[dict]:
    """`{id, data}` of the tasks among `ids` that belong to `project_id` (others are silently absent)."""
    wanted = sorted({int(i) for i in ids})
    http = client._client_wrapper.httpx_client
    found: dict[int, dict] = {}
    for start in range(0, len(wanted), IDS_PER_REQUEST):
        chunk = wanted[start:start + IDS_PER_REQUEST]
        query = json.dumps({"selectedItems": {"all": False, "included": chunk}})
        params = {"project": int(project_id), "page": 1, "page_size": len(chunk), "fields": "task_only",
                  "include": "id,data,project", "query": query}
        response = http.request("api/tasks/", method="GET", params=params, request_options={"timeout_in_seconds": 120})
        if response.status_code >= 300:
            raise LabelStudioSyncError(f"reading tasks {chunk[0]}..{chunk[-1]} of project {project_id} failed: "
                                       f"HTTP {response.status_code} {response.text[:200]}")
        body = response.json()
        for task in (body.get("tasks", []) if isinstance(body, dict) else body):
            task_id = task.get("id") if isinstance(task, dict) else None
            project = task.get("project", project_id) if isinstance(task, dict) else None
            if task_id in chunk and project in (None, int(project_id)) and isinstance(task.get("data"), dict):
                found[int(task_id)] = {"id": int(task_id), "data": task["data"]}
    return [found[i] for i in wanted if i in found]
