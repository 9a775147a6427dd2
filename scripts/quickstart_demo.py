"""Create (or reuse) the quickstart's demo project, connect the backend, train, enable tail-first.

Called by scripts/quickstart.sh once Label Studio and the backend are up. Idempotent: the project
id is remembered in STATE/project_id, so a second run reuses the project (and its model) instead
of making another one.

Why annotations are imported with the tasks here (and not posted one by one as in the e2e
tests): a new user should wait for training, not for 600 API calls.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from backend.admin import cli as admin  # noqa: E402
from make_demo_data import make_demo_data  # noqa: E402

SUBDIR = "mnist_demo"
TITLE = "MNIST demo: rare digits first"


def log(msg: str) -> None:
    print(f"[quickstart] {msg}", flush=True)


def existing_project(session: requests.Session, url: str, state: Path) -> int | None:
    path = state / "project_id"
    if not path.exists():
        return None
    pid = int(path.read_text().strip())
    response = session.get(f"{url}/api/projects/{pid}", timeout=30)
    return pid if response.ok else None


def create_project(session: requests.Session, url: str, files_root: Path, state: Path) -> int:
    manifest = make_demo_data(files_root, SUBDIR, seed=0)
    log(f"demo data: {manifest['n_labeled']} labeled + {manifest['n_pool']} unlabeled MNIST images; "
        f"rare (tail) digits {', '.join(manifest['tail_digits'])}")
    response = session.post(f"{url}/api/projects/", json={
        "title": TITLE, "label_config": manifest["label_config"],
        "description": "Skewed labeled set: two digits are rare. The 'Tail classes first' tab shows "
                       "unlabeled images most likely to be a rare digit first."}, timeout=60)
    response.raise_for_status()
    pid = response.json()["id"]
    response = session.post(f"{url}/api/storages/localfiles/", json={
        "project": pid, "title": "demo images", "path": str(files_root / SUBDIR), "use_blob_urls": False},
        timeout=60)
    response.raise_for_status()
    tasks = []
    for item in manifest["items"]:
        task = {"data": {"image": item["image"]}}
        if item["split"] == "labeled":
            task["annotations"] = [{"result": [{"from_name": "digit", "to_name": "image", "type": "choices",
                                                "value": {"choices": [item["label"]]}}]}]
        tasks.append(task)
    response = session.post(f"{url}/api/projects/{pid}/import", json=tasks, timeout=300)
    response.raise_for_status()
    log(f"created project {pid} with {response.json().get('task_count')} tasks "
        f"({manifest['n_labeled']} already labeled)")
    (state / "project_id").write_text(str(pid))
    return pid


def run_admin(*args: str) -> None:
    code = admin.main(list(args))
    if code != 0:
        raise SystemExit(f"[quickstart] `python -m backend.admin {' '.join(args)}` failed")


def wait_for_model(backend_url: str, pid: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    shown = 0.0
    while time.monotonic() < deadline:
        try:
            status = requests.get(f"{backend_url}/mcm/status", params={"project": pid},
                                  auth=admin.basic_auth_from_env(), timeout=10).json()
        except (requests.RequestException, ValueError):
            status = {}
        if status.get("model_version") and not status.get("training"):
            return status
        if status.get("last_error") and not status.get("training"):
            raise SystemExit(f"[quickstart] training failed: {status['last_error']} (see the backend log)")
        if time.monotonic() - shown > 15:
            log("waiting for the backend to train and score the unlabeled images ...")
            shown = time.monotonic()
        time.sleep(3)
    raise SystemExit(f"[quickstart] no trained model after {timeout:.0f}s; see the backend log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--files-root", required=True, type=Path)
    parser.add_argument("--backend-url", required=True)
    parser.add_argument("--train-timeout", type=float, default=900)
    args = parser.parse_args()
    url, key = os.environ["LABEL_STUDIO_URL"].rstrip("/"), os.environ["LABEL_STUDIO_API_KEY"]
    session = requests.Session()
    session.headers["Authorization"] = f"Token {key}"

    pid = existing_project(session, url, args.state)
    if pid:
        log(f"reusing project {pid}")
    else:
        pid = create_project(session, url, args.files_root, args.state)

    run_admin("connect", "--project", str(pid), "--url", args.backend_url)
    status = requests.get(f"{args.backend_url}/mcm/status", params={"project": pid},
                          auth=admin.basic_auth_from_env(), timeout=10).json()
    if not status.get("model_version") and not status.get("training"):
        run_admin("retrain", "--project", str(pid))
    status = wait_for_model(args.backend_url, pid, args.train_timeout)
    log(f"model {status['model_version']}: trained on {status.get('n_labeled')} labeled tasks, "
        f"tail classes {status.get('tail_classes')}")
    run_admin("enable-ordering", "--project", str(pid))
    print(f"PROJECT_ID={pid}")


if __name__ == "__main__":
    main()
