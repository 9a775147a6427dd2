"""Shared pieces of the benchmarks against a real Label Studio: the server, a synthetic project, the
tail-first view, and the annotator probe.

Why a module of its own: the refresh benchmark and the cost probes must measure the same server set-up
(scripts/ls_server.sh, the same project shape, the same view) so their figures can be put side by side.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
LS_SERVER = ROOT / "scripts" / "ls_server.sh"


def load() -> str:
    """The machine's 1/5/15-minute load averages, to print beside every timing."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} cores)"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabelStudioServer:
    """A private Label Studio started by scripts/ls_server.sh (or an external one, which is never restarted)."""

    def __init__(self, db: str = "sqlite", state_dir: str | None = None, url: str | None = None,
                 api_key: str | None = None) -> None:
        self.db, self.external = db, url is not None
        self.url, self.api_key = url, api_key
        self.state_dir = state_dir or tempfile.mkdtemp(prefix=f"mcm-scale-{db}-", dir="/tmp")
        self.start_seconds: float | None = None

    def _script(self, command: str) -> None:
        env = {**os.environ, "MCM_LS_DB": self.db}
        env.setdefault("MCM_LS_PORT", str(free_port()))
        subprocess.run(["bash", str(LS_SERVER), command, self.state_dir], check=True, env=env)

    def start(self) -> "LabelStudioServer":
        if self.external:
            return self
        t0 = time.monotonic()
        self._script("start")
        self.start_seconds = time.monotonic() - t0
        values = dict(line.split("=", 1) for line in Path(self.state_dir, "ls.env").read_text().splitlines()
                      if "=" in line)
        self.url, self.api_key = values["LABEL_STUDIO_URL"], values["LABEL_STUDIO_API_KEY"]
        return self

    def stop(self, remove: bool = False) -> None:
        if not self.external:
            self._script("stop")
            if remove:
                shutil.rmtree(self.state_dir, ignore_errors=True)


class Http:
    """requests with the token, one session per thread; every call returns (status, seconds, body)."""

    def __init__(self, url: str, api_key: str) -> None:
        self.url, self.api_key = url.rstrip("/"), api_key
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
            self._local.session.headers["Authorization"] = f"Token {self.api_key}"
        return self._local.session

    def call(self, method: str, path: str, timeout: float = 600.0, **kwargs) -> tuple[int, float, str]:
        """status 0 means no HTTP answer (connection error or client timeout)."""
        t0 = time.monotonic()
        try:
            r = self._session().request(method, f"{self.url}/{path.lstrip('/')}", timeout=timeout, **kwargs)
            return r.status_code, time.monotonic() - t0, r.text
        except requests.RequestException as exc:
            return 0, time.monotonic() - t0, f"{type(exc).__name__}: {exc}"

    def json(self, method: str, path: str, timeout: float = 600.0, **kwargs):
        status, _, body = self.call(method, path, timeout=timeout, **kwargs)
        if not 200 <= status < 300:
            raise RuntimeError(f"{method} {path}: HTTP {status} {body[:300]}")
        return json.loads(body) if body else None


@dataclass
class Project:
    """A synthetic project on the server; `labels` are the true classes, `annotated` the task ids with one."""
    id: int
    classes: list[str]
    tasks: list[dict]
    features: np.ndarray
    labels: np.ndarray
    annotated: set[int] = field(default_factory=set)
    view_id: int | None = None

    def unlabeled(self) -> list[dict]:
        return [{"id": t["id"], "data": t["data"]} for t in self.tasks if t["id"] not in self.annotated]

    def true_result(self, task_id: int) -> list[dict]:
        """An annotation result naming the task's true class."""
        if not hasattr(self, "_row"):
            self._row = {t["id"]: i for i, t in enumerate(self.tasks)}
        return [{"from_name": "choice", "to_name": "image", "type": "choices",
                 "value": {"choices": [self.classes[int(self.labels[self._row[task_id]])]]}}]


def import_tasks(http: Http, project_id: int, tasks: list[dict], chunk: int = 5000) -> None:
    """Import `tasks` (with their annotations) in chunks; set each task's real `id` from Label Studio's answer."""
    for start in range(0, len(tasks), chunk):
        part = tasks[start:start + chunk]
        body = [{"data": t["data"], **({"annotations": [{"result": t["annotations"][0]["result"]}]}
                                       if t["annotations"] else {})} for t in part]
        ids = http.json("POST", f"api/projects/{project_id}/import", params={"return_task_ids": "true"},
                        json=body).get("task_ids") or []
        if len(ids) != len(part):
            raise RuntimeError(f"Label Studio returned {len(ids)} task ids for {len(part)} imported tasks")
        for task, task_id in zip(part, ids):
            task["id"] = int(task_id)


def build_project(http: Http, n_tasks: int, n_annotated: int, n_classes: int = 10, dim: int = 512,
                  seed: int = 0) -> tuple[Project, float]:
    """Create the project, import its tasks (annotated ones with their annotation) and its tail-first view.

    Returns the project and the import seconds.
    """
    from benchmarks import scale_backend as backend

    classes, tasks, features, labels = backend.synthetic_project(n_annotated, n_tasks - n_annotated, n_classes,
                                                                 dim, seed)
    project_id = http.json("POST", "api/projects", json={"title": f"mcm scale {n_tasks} {time.strftime('%H%M%S')}",
                                                          "label_config": backend.label_config(classes)})["id"]
    t0 = time.monotonic()
    import_tasks(http, project_id, tasks)
    import_seconds = time.monotonic() - t0
    project = Project(project_id, classes, tasks, features, labels,
                      annotated={t["id"] for t in tasks[:n_annotated]})
    view = http.json("POST", "api/dm/views", json={"project": project_id, "data": {
        "title": backend.VIEW_TITLE, "ordering": backend.VIEW_ORDERING, "filters": backend.VIEW_FILTERS}})
    project.view_id = int(view["id"])
    return project, import_seconds


def view_head(http: Http, view_id: int, n: int = 50, timeout: float = 600.0) -> tuple[int, float, list[tuple]]:
    """(status, seconds, [(task id, predictions_score, predictions_model_versions)]) of the view's first n tasks."""
    status, seconds, body = http.call("GET", "api/tasks/", timeout=timeout, params={
        "view": view_id, "page": 1, "page_size": n, "fields": "task_only",
        "include": "id,predictions_score,predictions_model_versions"})
    rows = []
    if status == 200:
        rows = [(t["id"], t.get("predictions_score"), t.get("predictions_model_versions"))
                for t in json.loads(body).get("tasks", [])]
    return status, seconds, rows


def model_version_counts(http: Http, project_id: int, timeout: float = 60.0) -> dict[str, int] | None:
    """{version: predictions} from Label Studio, or None when it did not answer in time (e.g. locked)."""
    status, _, body = http.call("GET", f"api/projects/{project_id}/model-versions/", timeout=timeout)
    return json.loads(body) if status == 200 else None


def is_locked_error(body: str) -> bool:
    """SQLite's lock timeout as Label Studio answers it (LabelStudioDatabaseLockedException links the
    Django docs' #database-is-locked-errors; a raw error says "database is locked")."""
    return "database is locked" in body or "database-is-locked" in body


class Probe(threading.Thread):
    """Does what an annotator does on the project, every `interval` seconds, until stopped.

    One round: GET the next task of the tail-first view, POST an annotation on an already annotated
    task (so the unlabeled pool stays the same), DELETE that annotation. Each request's latency and
    status is recorded: a request that waits on a lock shows up as a long latency, a SQLite lock as
    a 500 "database is locked".
    """

    def __init__(self, http: Http, project: Project, task_ids: list[int], interval: float = 0.25,
                 timeout: float = 7200.0) -> None:
        super().__init__(daemon=True, name="annotator-probe")
        self.http, self.project, self.task_ids = http, project, task_ids
        self.interval, self.timeout = interval, timeout
        self.records: list[dict] = []
        self._halt = threading.Event()

    def _record(self, kind: str, status: int, seconds: float, body: str) -> None:
        self.records.append({"kind": kind, "status": status, "seconds": seconds,
                             "locked": is_locked_error(body), "http_5xx": status >= 500, "no_answer": status == 0})

    def run(self) -> None:
        i = 0
        while not self._halt.is_set():
            task_id = self.task_ids[i % len(self.task_ids)]
            i += 1
            status, seconds, body = self.http.call(
                "GET", f"api/projects/{self.project.id}/next/", timeout=self.timeout,
                params={"view": self.project.view_id})
            self._record("next", status, seconds, body)
            status, seconds, body = self.http.call(
                "POST", f"api/tasks/{task_id}/annotations/", timeout=self.timeout,
                json={"result": self.project.true_result(task_id), "was_cancelled": False})
            self._record("submit", status, seconds, body)
            if status == 201:
                annotation_id = json.loads(body)["id"]
                status, seconds, body = self.http.call("DELETE", f"api/annotations/{annotation_id}/",
                                                       timeout=self.timeout)
                self._record("delete_annotation", status, seconds, body)
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()

    def summary(self) -> dict:
        """max and p99 latency, request count and errors, overall and per request kind."""
        def stats(rows: list[dict]) -> dict:
            if not rows:
                return {"requests": 0}
            seconds = np.array([r["seconds"] for r in rows])
            return {"requests": len(rows), "max_s": round(float(seconds.max()), 3),
                    "p99_s": round(float(np.percentile(seconds, 99)), 3),
                    "median_s": round(float(np.median(seconds)), 3),
                    "errors_5xx_or_no_answer": sum(r["http_5xx"] or r["no_answer"] for r in rows),
                    "http_5xx": sum(r["http_5xx"] for r in rows), "no_answer": sum(r["no_answer"] for r in rows),
                    "database_is_locked": sum(r["locked"] for r in rows)}
        out = {"all": stats(self.records)}
        for kind in ("next", "submit", "delete_annotation"):
            out[kind] = stats([r for r in self.records if r["kind"] == kind])
        return out
