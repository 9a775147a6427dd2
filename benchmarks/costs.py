"""Single-call costs of Label Studio 1.23.2 that a refresh design depends on (run by scale_ls --costs).

(d) import/predictions of 100 / 200 / 1,000 / 5,000 rows under fresh versions (the fast-import flag
    is set by scripts/ls_server.sh);
(b) ways to find the prediction ids of one version for known task ids;
(a) DELETE /api/predictions/<id>/, one call at a time, with the annotator probe running;
(c) DELETE /api/projects/<id>/model-versions/ for versions of 200, 1,000 and 5,000 predictions, probe running.
"""
from __future__ import annotations

import json
import logging
import statistics
import time

from benchmarks.lsbench import Http, Probe, Project, load, model_version_counts

logger = logging.getLogger("scale_ls.costs")
SIZES = {"cost-100": 100, "cost-200": 200, "cost-1000": 1000, "cost-5000": 5000}


def _stats(seconds: list[float]) -> dict:
    return {"calls": len(seconds), "median_s": round(statistics.median(seconds), 4),
            "max_s": round(max(seconds), 4)} if seconds else {"calls": 0}


def _with_probe(http: Http, project: Project, work, timeout: float) -> tuple[object, dict]:
    probe = Probe(http, project, sorted(project.annotated)[:20], timeout=timeout)
    probe.start()
    try:
        result = work()
    finally:
        probe.stop()
        probe.join(timeout=timeout)
    return result, probe.summary()["all"]


def push_versions(http: Http, project: Project) -> tuple[dict, dict[str, list[int]]]:
    """Push one prediction per task for each cost version (disjoint unlabeled tasks); time each push."""
    pool = [t["id"] for t in project.unlabeled()]
    out, tasks_of, start = {}, {}, 0
    for version, size in SIZES.items():
        ids = pool[start:start + size]
        start += size
        if len(ids) < size:
            raise RuntimeError(f"--costs needs {sum(SIZES.values())} unlabeled tasks; the project has {len(pool)}")
        items = [{"task": tid, "model_version": version, "score": 0.5,
                  "result": [{"from_name": "choice", "to_name": "image", "type": "choices",
                              "value": {"choices": [project.classes[0]]}}]} for tid in ids]
        t0 = time.monotonic()
        created = http.json("POST", f"api/projects/{project.id}/import/predictions", json=items).get("created")
        out[f"import_predictions_{size}_rows_s"] = round(time.monotonic() - t0, 2)
        if created != len(items):
            raise RuntimeError(f"import/predictions created {created} of {len(items)} predictions")
        tasks_of[version] = ids
    return out, tasks_of


def find_ids(http: Http, project: Project, version: str, task_ids: list[int]) -> tuple[dict, list[dict]]:
    """Time the ways to get the prediction ids of `version` on `task_ids`; also every listed prediction."""
    out: dict = {}
    seconds, found = [], 0
    for tid in task_ids[:50]:
        status, s, body = http.call("GET", "api/predictions/", params={"task": tid})
        seconds.append(s)
        if status == 200:
            found += sum(1 for p in json.loads(body) if p.get("model_version") == version)
    out["GET /api/predictions/?task=<id> (per call)"] = {**_stats(seconds), "found_of_50": found}
    status, s, body = http.call("GET", "api/predictions/", params={"project": project.id}, timeout=1800)
    listed = json.loads(body) if status == 200 else None
    out["GET /api/predictions/?project=<id>"] = {
        "status": status, "seconds": round(s, 2), "bytes": len(body),
        "paginated": isinstance(listed, dict), "items": len(listed) if isinstance(listed, list) else None}
    query = json.dumps({"filters": {"conjunction": "and", "items": [
        # The value must be a list: Label Studio ORs `model_version__contains` over its items, so a
        # plain string would be iterated character by character and match almost every task.
        {"filter": "filter:tasks:predictions_model_versions", "operator": "contains", "type": "List",
         "value": [version]}]}})
    t0, pages, ids = time.monotonic(), 0, []
    while True:
        pages += 1
        status, _, body = http.call("GET", "api/tasks/", timeout=1800, params={
            "project": project.id, "page": pages, "page_size": 1000, "fields": "all", "query": query})
        if status != 200:
            break
        tasks = json.loads(body).get("tasks", [])
        ids += [p["id"] for t in tasks for p in t.get("predictions", []) if p.get("model_version") == version]
        if len(tasks) < 1000:
            break
    out["GET /api/tasks/?fields=all + predictions_model_versions filter"] = {
        "seconds": round(time.monotonic() - t0, 2), "pages": pages, "ids_found": len(ids), "last_status": status}
    return out, listed if isinstance(listed, list) else []


def single_deletes(http: Http, project: Project, ids: list[int], timeout: float) -> dict:
    """DELETE /api/predictions/<id>/ for each id, one after the other, probe running."""
    seconds: list[float] = []
    failures = 0

    def work():
        nonlocal failures
        for pid in ids:
            status, s, _ = http.call("DELETE", f"api/predictions/{pid}/", timeout=timeout)
            seconds.append(s)
            failures += status != 204
    _, probe = _with_probe(http, project, work, timeout)
    return {"delete_one_prediction": _stats(seconds), "failures": failures, "probe_during": probe}


def bulk_delete(http: Http, project: Project, version: str, timeout: float) -> dict:
    """DELETE /api/projects/<id>/model-versions/ for `version`, probe running; timed until LS stops listing it."""
    def work():
        t0 = time.monotonic()
        status, s, body = http.call("DELETE", f"api/projects/{project.id}/model-versions/",
                                    json={"model_version": version}, timeout=timeout)
        while True:  # the client may have given up; the server decides when it is done
            counts = model_version_counts(http, project.id, timeout=60)
            if counts is not None and not counts.get(version):
                return {"status": status, "request_s": round(s, 2), "until_gone_s": round(time.monotonic() - t0, 2),
                        "answer": body[:100]}
            if time.monotonic() - t0 > timeout:
                return {"status": status, "request_s": round(s, 2), "until_gone_s": f"> {timeout}"}
            time.sleep(2.0)
    result, probe = _with_probe(http, project, work, timeout)
    return {**result, "probe_during": probe}


def measure_costs(http: Http, project: Project, args) -> dict:
    timeout = args.max_delete_seconds
    out: dict = {"load_before": load()}
    pushes, tasks_of = push_versions(http, project)
    out["d_import_predictions"] = pushes
    logger.info("costs: pushes %s", pushes)
    out["b_find_ids_version_200"], listed = find_ids(http, project, "cost-200", tasks_of["cost-200"])
    logger.info("costs: find ids %s", out["b_find_ids_version_200"])
    single = [p["id"] for p in listed if p.get("model_version") == "cost-100"]
    out["a_single_deletes_100"] = single_deletes(http, project, single, timeout)
    logger.info("costs: single deletes %s", out["a_single_deletes_100"])
    for version in ("cost-200", "cost-1000", "cost-5000"):
        out[f"c_bulk_delete_{SIZES[version]}"] = bulk_delete(http, project, version, timeout)
        logger.info("costs: bulk delete %s: %s", version, out[f"c_bulk_delete_{SIZES[version]}"])
    out["load_after"] = load()
    out["predictions_in_project"] = sum((model_version_counts(http, project.id) or {}).values())
    return out

