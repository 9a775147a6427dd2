"""Talk back to Label Studio through label-studio-sdk 2.x.

Generic helpers (no mining logic) so the admin CLI and the training job share
them: list annotated tasks, list unlabeled tasks, push predictions in checked
chunks, set `project.model_version`, delete a model version's predictions.
"""
from __future__ import annotations

import json
import logging
from typing import Iterable, Iterator, Sequence

from label_studio_sdk import LabelStudio

logger = logging.getLogger(__name__)

PAGE_SIZE = 1000
_ANNOTATED = {"conjunction": "and", "items": [
    {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}]}
_UNLABELED = {"conjunction": "and", "items": [
    {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}]}


class LabelStudioSyncError(RuntimeError):
    """Label Studio answered, but not with what we needed (message says what)."""


def make_client(url: str | None, api_key: str | None, timeout: float = 60.0) -> LabelStudio:
    """An sdk client; personal access tokens are refreshed by the sdk itself."""
    if not url or not api_key:
        raise LabelStudioSyncError("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must both be set to talk to Label Studio")
    return LabelStudio(base_url=url.rstrip("/"), api_key=api_key, timeout=timeout)


def auth_header(client: LabelStudio) -> str:
    """The Authorization header value the sdk would send (`Token <key>` or `Bearer <access>`)."""
    return client._client_wrapper.get_headers()["Authorization"]


def post_json(client: LabelStudio, path: str, payload, timeout: float = 300.0):
    """POST pre-encoded JSON through the sdk client's httpx connection, with its auth headers."""
    wrapper = client._client_wrapper
    headers = {**wrapper.get_headers(), "Content-Type": "application/json"}
    url = wrapper.get_base_url().rstrip("/") + "/" + path.lstrip("/")
    return wrapper.httpx_client.httpx_client.post(url, content=json.dumps(payload), headers=headers, timeout=timeout)


def _iter_tasks(client: LabelStudio, project_id: int, filters: dict, fields: str,
                include: str | None = None) -> Iterator[dict]:
    """Page through GET /api/tasks/ with the sdk's authenticated HTTP client.

    The JSON is read as plain dicts: the sdk's typed `tasks.list` builds a
    pydantic object per task (and warns on annotation payloads), which costs
    seconds on a 100k-task project and buys nothing here.
    """
    query = json.dumps({"filters": filters})
    http = client._client_wrapper.httpx_client
    page, seen = 1, 0
    while True:
        params = {"project": int(project_id), "page": page, "page_size": PAGE_SIZE, "fields": fields, "query": query}
        if include:
            params["include"] = include
        response = http.request("api/tasks/", method="GET", params=params,
                                request_options={"timeout_in_seconds": 600})
        if response.status_code == 404 and page > 1:  # Label Studio answers 404 past the last page
            return
        if response.status_code >= 300:
            raise LabelStudioSyncError(f"listing tasks of project {project_id} failed: HTTP {response.status_code} "
                                       f"{response.text[:200]}")
        body = response.json()
        items = body.get("tasks", []) if isinstance(body, dict) else body
        yield from items
        seen += len(items)
        total = body.get("total") if isinstance(body, dict) else None
        if not items or (total is not None and seen >= total) or len(items) < PAGE_SIZE:
            return
        page += 1


def list_annotated_tasks(client: LabelStudio, project_id: int) -> list[dict]:
    """Tasks with at least one annotation, with `id`, `data` and `annotations`.

    Uses the project export (`download_all_tasks=false`: annotated tasks only),
    measured 2.5x faster than paging the Data Manager API with fields=all on a
    10k-annotated project; falls back to paging if the export is refused.
    """
    http = client._client_wrapper.httpx_client
    try:
        response = http.request(f"api/projects/{int(project_id)}/export", method="GET",
                                params={"exportType": "JSON", "download_all_tasks": "false"},
                                request_options={"timeout_in_seconds": 600})
        if response.status_code == 200:
            body = response.json()
            if isinstance(body, list):
                return [t for t in body if t.get("annotations")]
        logger.info("project %s: export answered HTTP %s; listing annotated tasks page by page", project_id,
                    response.status_code)
    except ValueError as exc:  # not JSON
        logger.info("project %s: export unusable (%s); listing annotated tasks page by page", project_id, exc)
    return list(_iter_tasks(client, project_id, _ANNOTATED, "all"))


def list_unlabeled_tasks(client: LabelStudio, project_id: int) -> list[dict]:
    """Tasks without annotations, with `id` and `data` only (include=id,data: 5x faster than full tasks)."""
    return [{"id": t["id"], "data": t.get("data") or {}}
            for t in _iter_tasks(client, project_id, _UNLABELED, "task_only", include="id,data")]


def list_unlabeled_task_ids(client: LabelStudio, project_id: int) -> list[int]:
    return [int(t["id"]) for t in list_unlabeled_tasks(client, project_id)]


def get_label_config(client: LabelStudio, project_id: int) -> str:
    project = client.projects.get(id=int(project_id))
    return project.label_config


def push_predictions(client: LabelStudio, project_id: int, predictions: Sequence[dict],
                     chunk_size: int = 1000) -> int:
    """POST predictions in chunks; raise if Label Studio created fewer than sent.

    Label Studio answers 201 even when it silently drops items (score outside
    [0, 1], from_name/to_name not in the config), so the `created` count is the
    only signal that a push worked.
    The body is encoded once with `json.dumps` and sent on the sdk client's own
    httpx connection with the sdk's auth headers: the typed
    `projects.import_predictions` walks every dict through type hints and
    `jsonable_encoder`, which made pushing 100k predictions 5-10x slower.
    """
    created_total = 0
    for start in range(0, len(predictions), chunk_size):
        chunk = list(predictions[start:start + chunk_size])
        response = post_json(client, f"api/projects/{int(project_id)}/import/predictions", chunk)
        if response.status_code >= 300:
            raise LabelStudioSyncError(f"project {project_id}: import/predictions failed: HTTP "
                                       f"{response.status_code} {response.text[:200]}")
        created = (response.json() or {}).get("created")
        if created is None or int(created) != len(chunk):
            raise LabelStudioSyncError(
                f"project {project_id}: Label Studio created {created} of {len(chunk)} predictions in chunk "
                f"starting at {start} (scores outside [0,1] or from_name/to_name not matching the config?)")
        created_total += int(created)
    return created_total


def set_model_version(client: LabelStudio, project_id: int, version: str) -> None:
    """Make the project's score column and Uncertainty sampling use `version`'s predictions."""
    client.projects.update(id=int(project_id), model_version=version)


def delete_model_version(client: LabelStudio, project_id: int, version: str) -> None:
    """Delete all predictions of `version` in the project."""
    response = client._client_wrapper.httpx_client.request(
        f"api/projects/{int(project_id)}/model-versions/", method="DELETE", json={"model_version": version})
    if response.status_code >= 300:
        raise LabelStudioSyncError(f"deleting model version {version!r} of project {project_id} failed: "
                                   f"HTTP {response.status_code} {response.text[:200]}")


def chunked(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
