"""Speed benchmark of the backend with features cached (a script, not a test).

    python -m benchmarks.backend_speed [--annotated 10000] [--unlabeled 100000] [--ls-url URL --api-key KEY]

Builds a project of `annotated` labeled + `unlabeled` tasks whose (synthetic,
class-clustered, skewed) 512-d features are already in the feature cache, then
measures: one training job (list annotated tasks, fit the miner, save,
rank every unlabeled task, push the head of the queue, switch model_version;
backend/refresh.py), `/predict` for 100 tasks and `/setup`. Without --ls-url the Label Studio API is a small in-process HTTP
server (same JSON shapes); with --ls-url a project is created on that real
Label Studio and its tasks are imported first (import time not counted).
Prints one JSON object with the figures.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import threading
import time

import numpy as np

LABEL_CONFIG_TEMPLATE = ('<View><Image name="image" value="$image"/><Choices name="choice" toName="image">'
                         '{choices}</Choices></View>')


def _label_config(classes: list[str]) -> str:
    return LABEL_CONFIG_TEMPLATE.format(choices="".join(f'<Choice value="{c}"/>' for c in classes))


class _BenchLabelStudio:
    """Minimal in-process Label Studio API (tasks list, project get/patch, predictions)."""

    def __init__(self, token: str) -> None:
        from flask import Flask, Response, jsonify, request
        from werkzeug.serving import make_server

        self.project: dict = {}
        self.tasks: list[dict] = []
        self.filtered: dict[bool, list[dict]] = {}
        self.n_predictions = 0
        app = Flask("bench-ls")
        fake = self

        @app.before_request
        def auth():
            if request.headers.get("Authorization") != f"Token {token}":
                return jsonify({"detail": "unauthorized"}), 401

        @app.route("/api/projects/<int:pid>/", methods=["GET", "PATCH"])
        def project(pid):
            if request.method == "PATCH":
                fake.project.update(request.get_json())
            return jsonify({"id": pid, **fake.project})

        @app.route("/api/tasks/")
        def tasks():
            items_filter = json.loads(request.args["query"])["filters"].get("items") or []
            annotated = items_filter[0]["operator"] == "greater" if items_filter else None  # None: every task
            if annotated not in fake.filtered:
                fake.filtered[annotated] = [{**t, "total_annotations": len(t.get("annotations") or [])}
                                            for t in fake.tasks
                                            if annotated is None or bool(t.get("annotations")) == annotated]
            items = fake.filtered[annotated]
            page, size = int(request.args["page"]), int(request.args["page_size"])
            chunk = items[(page - 1) * size: page * size]
            if page > 1 and not chunk:
                return jsonify({"detail": "Invalid page."}), 404
            return Response(json.dumps({"tasks": chunk, "total": len(items)}), mimetype="application/json")

        @app.route("/api/projects/<int:pid>/import/predictions", methods=["POST"])
        def predictions(pid):
            items = request.get_json()
            created = sum(1 for p in items if 0 <= p["score"] <= 1)
            fake.n_predictions += created
            return jsonify({"created": created}), 201

        @app.route("/api/projects/<int:pid>/model-versions/", methods=["DELETE"])
        def delete_version(pid):
            return jsonify({"count": 0})

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def synthetic_tasks(labels: np.ndarray, classes: list[str], n_unlabeled: int) -> list[dict]:
    """Annotated tasks (one Choices annotation each, ids 1..N) followed by `n_unlabeled` unlabeled ones."""
    tasks = []
    for i, label in enumerate(labels.tolist()):
        tasks.append({"id": i + 1, "data": {"image": f"https://images.example/{i + 1}.png"},
                      "annotations": [{"id": i + 1, "was_cancelled": False, "updated_at": "2026",
                                       "result": [{"from_name": "choice", "to_name": "image", "type": "choices",
                                                   "value": {"choices": [classes[label]]}}]}]})
    for tid in range(len(labels) + 1, len(labels) + n_unlabeled + 1):
        tasks.append({"id": tid, "data": {"image": f"https://images.example/{tid}.png"}, "annotations": []})
    return tasks


def _synthetic_features(n: int, labels: np.ndarray, centers: np.ndarray, rng) -> np.ndarray:
    return (centers[labels] + rng.normal(scale=2.0, size=(n, centers.shape[1]))).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotated", type=int, default=10_000)
    parser.add_argument("--unlabeled", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--ls-url", default=None, help="a real Label Studio (else an in-process fake)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--ls-project", type=int, default=None,
                        help="reuse a project a previous --ls-url run created (same sizes and seed)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (MCM_TORCH_THREADS)")
    parser.add_argument("--miner-options", default="", help="MCM_MINER_OPTIONS (JSON), e.g. '{\"n_models\": 1}'")
    parser.add_argument("--out", default=None, help="also write the JSON figures here")
    args = parser.parse_args(argv)

    import torch
    import torchvision

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(name)s] %(message)s")
    for noisy in ("werkzeug", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from backend.app import create_app
    from backend.ingest.extractor import Extractor
    from backend.context import Context
    from backend.fitting import train_project
    from backend.settings import Settings

    work = tempfile.mkdtemp(prefix="mcm-bench-")
    rng = np.random.default_rng(0)
    classes = [f"class{i}" for i in range(args.classes)]
    head = args.classes // 2
    weights = np.array([20.0] * head + [1.0] * (args.classes - head))
    labels = rng.choice(args.classes, args.annotated, p=weights / weights.sum())
    hidden = rng.choice(args.classes, args.unlabeled, p=weights / weights.sum())
    centers = rng.normal(size=(args.classes, args.dim)).astype(np.float32)

    # A resnet18 backbone with random weights from a local file: only its identity matters,
    # the features come from the cache.
    weights_path = os.path.join(work, "resnet18-random.pt")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights_path)

    tasks = synthetic_tasks(labels, classes, args.unlabeled)

    import_seconds = None
    if args.ls_url:
        from backend.labelstudio.client import make_client
        client = make_client(args.ls_url, args.api_key)
        if args.ls_project:
            project_id = args.ls_project
        else:
            project_id = client.projects.create(title=f"mcm bench {time.strftime('%H%M%S')}",
                                                label_config=_label_config(classes)).id
        started = time.monotonic()
        http = client._client_wrapper.httpx_client
        for start in range(0, len(tasks) if not args.ls_project else 0, 5000):
            body = [{"data": t["data"], **({"annotations": [{"result": t["annotations"][0]["result"]}]}
                                           if t["annotations"] else {})} for t in tasks[start:start + 5000]]
            r = http.request(f"api/projects/{project_id}/import", method="POST", json=body,
                             request_options={"timeout_in_seconds": 600})
            r.raise_for_status()
        import_seconds = time.monotonic() - started
        # Real task ids are assigned by Label Studio: map them back by image URL.
        from backend.labelstudio.client import _ALL, _iter_tasks
        ids = {t["data"]["image"]: t["id"] for t in _iter_tasks(client, project_id, _ALL, "task_only", include="id,data")}
        for t in tasks:
            t["id"] = ids[t["data"]["image"]]
        ls_url, api_key = args.ls_url, args.api_key
    else:
        api_key = "bench-token"
        fake = _BenchLabelStudio(api_key)
        fake.project.update({"label_config": _label_config(classes), "model_version": ""})
        fake.tasks = tasks
        ls_url, project_id = fake.url, 1

    settings = Settings(model_dir=os.path.join(work, "models"), backbone="resnet18", backbone_weights=weights_path,
                        label_studio_url=ls_url, label_studio_api_key=api_key, debounce_seconds=0.0,
                        predict_chunk=1000, torch_threads=args.threads, miner_options=args.miner_options)
    context = Context(settings, Extractor("resnet18", weights_path, num_threads=args.threads))
    cache = context.ingest.cache(project_id)
    features = np.concatenate([_synthetic_features(args.annotated, labels, centers, rng),
                               _synthetic_features(args.unlabeled, hidden, centers, rng)])
    keys = [(t["id"], t["data"]["image"]) for t in tasks]
    for start in range(0, len(keys), 20000):
        cache.put(keys[start:start + 20000], features[start:start + 20000])

    figures: dict = {"annotated": args.annotated, "unlabeled": args.unlabeled, "classes": args.classes,
                     "dim": args.dim, "label_studio": "real" if args.ls_url else "in-process fake",
                     "torch_threads": args.threads, "miner_options": args.miner_options or "default"}
    if import_seconds is not None:
        figures["ls_import_seconds_not_counted"] = round(import_seconds, 1)

    from backend.refresh import refresh_project

    started = time.monotonic()
    version = train_project(project_id, context, rescore=False)  # list annotated tasks, fit, save
    figures["train_seconds"] = round(time.monotonic() - started, 2)
    figures["refresh_seconds"] = refresh_project(project_id, context)  # rank the pool, push the head, switch
    figures["model_version"] = version
    figures["n_scored"] = context.projects.get(project_id).n_scored

    app = create_app(settings, context=context)
    client = app.test_client()
    config = _label_config(classes)
    sample = [{"id": t["id"], "data": t["data"]} for t in tasks[args.annotated:args.annotated + 100]]
    timings = []
    for _ in range(5):
        t0 = time.monotonic()
        response = client.post("/predict", json={"tasks": sample, "project": f"{project_id}.1", "label_config": config})
        timings.append(time.monotonic() - t0)
        assert response.status_code == 200 and len(response.json["results"]) == 100
    figures["predict_100_seconds"] = {"first": round(timings[0], 4), "median": round(float(np.median(timings)), 4)}
    setup_times = []
    for _ in range(20):
        t0 = time.monotonic()
        client.post("/setup", json={"project": f"{project_id}.1", "schema": config})
        setup_times.append(time.monotonic() - t0)
    figures["setup_seconds_median"] = round(float(np.median(setup_times)), 4)
    app.config["MCM_SERVICE"].scheduler.close()
    text = json.dumps(figures, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
