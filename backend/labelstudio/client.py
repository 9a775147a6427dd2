"""Every call the backend makes to Label Studio's REST API (through label-studio-sdk 2.x's client).

Generic helpers (no mining logic) so the admin CLI and the jobs share them:
list annotated and unlabeled tasks, push predictions in checked chunks, set
`project.model_version`, find and delete one version's predictions one by one.
Deleting a whole version in one request (DELETE model-versions) is avoided on
purpose: Label Studio does it in one transaction with per-row signals, which
held a 100k-task PostgreSQL project locked for 54 minutes.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Callable, Iterator, Sequence

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

logger = logging.getLogger(__name__)

PAGE_SIZE = 1000
_ANNOTATED = {"conjunction": "and", "items": [
    {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}]}
_ALL = {"conjunction": "and", "items": []}


class LabelStudioError(RuntimeError):
    """Label Studio answered, but not with what we needed (message says what; `status_code`: its HTTP status)."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


ERROR_BODY_CHARS = 300


def describe_error(exc: BaseException) -> str:
    """One line for logs, `last_error` and HTTP answers: an HTTP error from Label Studio as its status
    and body (cut to ERROR_BODY_CHARS), never its headers.

    The sdk's ApiError str() holds every response header, `set-cookie: sessionid=...` issued for the
    backend's key included; anything else is `Class: message`.
    """
    if isinstance(exc, ApiError):
        return f"Label Studio answered HTTP {exc.status_code}: {str(exc.body)[:ERROR_BODY_CHARS]}"
    if isinstance(exc, httpx.HTTPStatusError):
        return f"Label Studio answered HTTP {exc.response.status_code}: {exc.response.text[:ERROR_BODY_CHARS]}"
    return f"{exc.__class__.__name__}: {exc}"


def traceback_is_safe(exc: BaseException) -> bool:
    """False when a traceback of `exc` would print an ApiError (and so Label Studio's headers)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ApiError):
            return False
        seen.add(id(current))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return True


def make_client(url: str | None, api_key: str | None, timeout: float = 60.0) -> LabelStudio:
    """An sdk client; personal access tokens are refreshed by the sdk itself."""
    if not url or not api_key:
        raise LabelStudioError("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must both be set to talk to Label Studio")
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


def request(client: LabelStudio, method: str, path: str, what: str, *, missing_ok: bool = False,
            timeout: float | None = None, **kwargs) -> httpx.Response | None:
    """One request through the sdk's authenticated HTTP client (for what the sdk has no typed call for,
    or parses too slowly). A refusal raises LabelStudioError naming `what`, the status and the body
    (never the headers); a 404 gives None when `missing_ok`."""
    options = {"timeout_in_seconds": timeout} if timeout else None
    response = client._client_wrapper.httpx_client.request(path, method=method, request_options=options, **kwargs)
    if response.status_code == 404 and missing_ok:
        return None
    if response.status_code >= 300:
        raise LabelStudioError(f"{what} failed: HTTP {response.status_code} {response.text[:200]}",
                               response.status_code)
    return response


def get_json(client: LabelStudio, path: str, what: str, params: dict | None = None, *, missing_ok: bool = False,
             timeout: float | None = None):
    """GET `path` and its JSON body (None for a 404 when `missing_ok`, or an empty body)."""
    response = request(client, "GET", path, what, params=params, missing_ok=missing_ok, timeout=timeout)
    return response.json() if response is not None and response.content else None


def _iter_tasks(client: LabelStudio, project_id: int, filters: dict, fields: str,
                include: str | None = None, selected: Sequence[int] | None = None) -> Iterator[dict]:
    """Page through GET /api/tasks/ with the sdk's authenticated HTTP client.

    The JSON is read as plain dicts: the sdk's typed `tasks.list` builds a
    pydantic object per task (and warns on annotation payloads), which costs
    seconds on a 100k-task project and buys nothing here.
    """
    query = {"filters": filters}
    if selected is not None:
        query["selectedItems"] = {"all": False, "included": [int(i) for i in selected]}
    query = json.dumps(query)
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
            raise LabelStudioError(f"listing tasks of project {project_id} failed: HTTP {response.status_code} "
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
    """Tasks without annotations, with `id` and `data` only (include=...: 5x faster than full tasks).

    Every task is listed, by id, and the annotated ones are dropped here rather than
    by a Data Manager filter: while annotators work, a filtered listing's pages
    shift under it and skip tasks (seen: 4 of 900 during a burst of annotations).
    """
    return [{"id": t["id"], "data": t.get("data") or {}}
            for t in _iter_tasks(client, project_id, _ALL, "task_only", include="id,data,total_annotations")
            if not t.get("total_annotations")]


def _has_version(version: str) -> dict:
    # a substring match: model version names are matched exactly by the caller
    return {"conjunction": "and", "items": [{"filter": "filter:tasks:predictions_model_versions",
                                             "operator": "contains", "type": "List", "value": [version]}]}


def list_version_predictions(client: LabelStudio, project_id: int, version: str,
                             task_ids: Sequence[int] | None = None) -> dict[int, list[dict]]:
    """{task id: its predictions of model version `version`} for the tasks that have one (all such
    tasks of the project, or those among `task_ids`, IDS_PER_REQUEST per request)."""
    found: dict[int, list[dict]] = {}
    chunks = [None] if task_ids is None else [list(task_ids)[i:i + IDS_PER_REQUEST]
                                               for i in range(0, len(task_ids), IDS_PER_REQUEST)]
    for chunk in chunks:
        for task in _iter_tasks(client, project_id, _has_version(version), "all", include="id,predictions",
                                selected=chunk):
            mine = [p for p in task.get("predictions") or [] if isinstance(p, dict) and p.get("model_version") == version]
            if mine and "id" in task:
                found[int(task["id"])] = mine
    return found


def get_label_config(client: LabelStudio, project_id: int) -> str:
    try:
        project = client.projects.get(id=int(project_id))
    except ApiError as exc:
        raise LabelStudioError(f"reading project {project_id} failed: {describe_error(exc)}") from None
    return project.label_config


MISSING_TASK = re.compile(r"task ID (\d+) not found")
# Label Studio validates and inserts an import in batches of 500 outside any transaction: a request of
# at most one batch is created entirely or not at all, so a retry never duplicates predictions.
IMPORT_BATCH = 500


def push_predictions(client: LabelStudio, project_id: int, predictions: Sequence[dict],
                     chunk_size: int = 1000, on_missing: Callable[[list[int]], None] | None = None) -> int:
    """POST predictions in chunks; raise if Label Studio created fewer than sent.

    Label Studio answers 201 even when it silently drops items (score outside
    [0, 1], from_name/to_name not in the config), so the `created` count is the
    only signal that a push worked. A task deleted since it was listed makes
    Label Studio refuse its whole chunk (400 "task ID N not found"): those
    tasks are dropped, reported to `on_missing`, and the chunk is sent again,
    so one deleted task never costs the others their scores. Requests carry at
    most IMPORT_BATCH predictions (see there).
    The body is encoded once with `json.dumps` and sent on the sdk client's own
    httpx connection with the sdk's auth headers: the typed
    `projects.import_predictions` walks every dict through type hints and
    `jsonable_encoder`, which made pushing 100k predictions 5-10x slower.
    """
    created_total = 0
    chunk_size = max(1, min(int(chunk_size), IMPORT_BATCH))
    for start in range(0, len(predictions), chunk_size):
        chunk = list(predictions[start:start + chunk_size])
        while chunk:
            response = post_json(client, f"api/projects/{int(project_id)}/import/predictions", chunk)
            missing = {int(m) for m in MISSING_TASK.findall(response.text)} if response.status_code == 400 else set()
            if missing:
                chunk = [p for p in chunk if int(p["task"]) not in missing]
                logger.warning("project %s: tasks %s no longer exist; pushing the rest of the chunk", project_id,
                               sorted(missing))
                if on_missing:
                    on_missing(sorted(missing))
                continue
            if response.status_code >= 300:
                raise LabelStudioError(f"project {project_id}: import/predictions failed: HTTP "
                                           f"{response.status_code} {response.text[:200]}")
            created = (response.json() or {}).get("created")
            if created is None or int(created) != len(chunk):
                raise LabelStudioError(
                    f"project {project_id}: Label Studio created {created} of {len(chunk)} predictions in chunk "
                    f"starting at {start} (scores outside [0,1] or from_name/to_name not matching the config?)")
            created_total += int(created)
            break
    return created_total


def get_project(client: LabelStudio, project_id: int) -> dict:
    """The project as plain JSON (model_version, sampling, min_annotations_to_start_training, ...)."""
    response = client._client_wrapper.httpx_client.request(f"api/projects/{int(project_id)}/", method="GET")
    if response.status_code >= 300:
        raise LabelStudioError(f"reading project {project_id} failed: HTTP {response.status_code} "
                                   f"{response.text[:200]}")
    return response.json()


def backend_titles(client: LabelStudio, project_id: int) -> list[str]:
    """Titles of the project's ML backends (Label Studio sets model_version to one of them on connect)."""
    try:
        return [b.get("title") or "" for b in list_ml_backends(client, project_id)]
    except LabelStudioError:
        return []


def list_ml_backends(client: LabelStudio, project_id: int, timeout: float = 20.0) -> list[dict]:
    """The project's ML backends as Label Studio lists them (`url`, `title`, ...); [] for a project
    Label Studio does not have (404). Raises LabelStudioError on any other refusal.

    Label Studio calls /health and /setup of every listed backend before it answers (its
    `update_state`), so this backend must never call it from its own /setup.
    """
    body = get_json(client, "api/ml", f"listing the ML backends of project {project_id}",
                    {"project": int(project_id)}, missing_ok=True, timeout=timeout)
    if body is None:
        return []
    if not isinstance(body, list):
        raise LabelStudioError(f"listing the ML backends of project {project_id}: expected a JSON list, got "
                               f"{type(body).__name__}")
    return [b for b in body if isinstance(b, dict)]


def set_model_version(client: LabelStudio, project_id: int, version: str) -> None:
    """Make the project's score column (and so the tail-first tab) use `version`'s predictions."""
    try:
        client.projects.update(id=int(project_id), model_version=version)
    except ApiError as exc:
        raise LabelStudioError(f"setting project {project_id}'s model_version to {version!r} failed: "
                               f"{describe_error(exc)}") from None


def model_versions(client: LabelStudio, project_id: int) -> list[dict]:
    """The project's prediction versions, newest first: [{model_version, count, latest}]."""
    body = get_json(client, f"api/projects/{int(project_id)}/model-versions/",
                    f"listing model versions of project {project_id}", {"extended": "true"})
    rows = body.get("static", []) if isinstance(body, dict) else body
    return [r for r in rows or [] if isinstance(r, dict) and r.get("model_version")]


def model_version_counts(client: LabelStudio, project_id: int) -> dict[str, int]:
    """{model_version: number of predictions} of the project."""
    return {r["model_version"]: int(r.get("count") or 0) for r in model_versions(client, project_id)}


def list_views(client: LabelStudio, project_id: int) -> list:
    """The project's Data Manager tabs (views) as Label Studio lists them."""
    views = get_json(client, "api/dm/views/", f"listing the Data Manager tabs of project {project_id}",
                     {"project": int(project_id)})
    return views if isinstance(views, list) else []


def version_prediction_ids(client: LabelStudio, project_id: int, version: str, limit: int = 100) -> list[int]:
    """Ids of (at most about `limit`) predictions of `version`: the tasks holding one, with their predictions.

    Label Studio has no listing of predictions by version; the Data Manager's
    predictions_model_versions filter (a substring match; version names are
    never substrings of one another) narrows the tasks, and the exact version is
    checked on each prediction.
    """
    body = get_json(client, "api/tasks/", f"listing predictions of {version!r} in project {project_id}", {
        "project": int(project_id), "page": 1, "page_size": int(limit), "fields": "all",
        "include": "id,predictions", "query": json.dumps({"filters": _has_version(version)})},
        missing_ok=True, timeout=120)
    if body is None:
        return []
    tasks = body.get("tasks", []) if isinstance(body, dict) else body
    return [int(p["id"]) for t in tasks for p in (t.get("predictions") or [])
            if isinstance(p, dict) and p.get("model_version") == version and "id" in p]


def delete_prediction(client: LabelStudio, prediction_id: int) -> bool:
    """Delete one prediction (one short transaction in Label Studio); False if it was already gone."""
    return request(client, "DELETE", f"api/predictions/{int(prediction_id)}/",
                   f"deleting prediction {prediction_id}", missing_ok=True) is not None


# Webhook payloads are never trusted for task data: a TASKS_CREATED payload only names tasks, and
# their image URLs are read back from Label Studio (which returns only tasks of the given project).
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
            raise LabelStudioError(f"reading tasks {chunk[0]}..{chunk[-1]} of project {project_id} failed: "
                                       f"HTTP {response.status_code} {response.text[:200]}")
        body = response.json()
        for task in (body.get("tasks", []) if isinstance(body, dict) else body):
            task_id = task.get("id") if isinstance(task, dict) else None
            project = task.get("project", project_id) if isinstance(task, dict) else None
            if task_id in chunk and project in (None, int(project_id)) and isinstance(task.get("data"), dict):
                found[int(task_id)] = {"id": int(task_id), "data": task["data"]}
    return [found[i] for i in wanted if i in found]
