"""What the live stages (tests/e2e, tests/browser) share: a real Label Studio and our backend.

scripts/e2e.sh starts Label Studio once per stage and exports where it is:

  MCM_E2E_LS_URL, MCM_E2E_LS_API_KEY   the server and a working (legacy) token
  MCM_E2E_LS_USER, MCM_E2E_LS_PASSWORD its first user (what a person types on the login page)
  MCM_E2E_FILES_ROOT                   its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT
  MCM_E2E_STATE_DIR                    where logs, models, screenshots and metrics go (optional)

The backend is started by the test session, not by the script, because the flows restart it.
A stage's conftest imports the fixtures below (`ls_env`, `state_dir`, `backend`) and calls
`skip_without_env` from its collection hook, so a plain `pytest` skips the stage with the reason.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
LS_ENV = ("MCM_E2E_LS_URL", "MCM_E2E_LS_API_KEY", "MCM_E2E_FILES_ROOT")


def skip_without_env(items: Iterable[pytest.Item], marker: str, required: Iterable[str], how: str) -> None:
    """Skip the items carrying `marker` when one of the `required` variables is unset."""
    missing = [name for name in required if not os.environ.get(name)]
    if not missing:
        return
    skip = pytest.mark.skip(reason=f"{marker} environment not set ({', '.join(missing)}): run `{how}`")
    for item in items:
        if item.get_closest_marker(marker):
            item.add_marker(skip)


def report_metrics(terminalreporter, title: str, metrics: dict, filename: str) -> None:
    """Print the figures a stage measured and write them as JSON `filename` into its state dir."""
    out = os.environ.get("MCM_E2E_STATE_DIR")
    path = Path(out) / filename if out else None
    tr = terminalreporter
    tr.section(title)
    for key, value in metrics.items():
        if isinstance(value, dict) and key == "durations_s":
            for stage, seconds in value.items():
                tr.write_line(f"  {stage:<45s} {seconds:8.1f} s")
        else:
            tr.write_line(f"  {key:<45s} {value}")
    if path is not None:
        path.write_text(json.dumps(metrics, indent=2, default=str))
        tr.write_line(f"  (also written to {path})")


class Stopwatch:
    """`with stopwatch("stage"):` records how long a stage took into `metrics["durations_s"]`."""

    def __init__(self, metrics: dict) -> None:
        self.metrics = metrics

    def __call__(self, stage: str) -> "Stopwatch":
        self._stage = stage
        return self

    def __enter__(self) -> "Stopwatch":
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.metrics.setdefault("durations_s", {})[self._stage] = round(time.monotonic() - self._t0, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], Any], timeout: float, backend: "BackendProcess | None" = None,
             interval: float = 2.0) -> Any:
    """Poll `check()` until it returns something truthy; fail naming `what` (with the backend log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    tail = f"\nbackend log:\n{backend.log_tail()}" if backend else ""
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{tail}")


class BackendProcess:
    """Our backend (`python _wsgi.py`) as a subprocess the tests can start, stop and restart."""

    def __init__(self, ls: dict, model_dir: Path, log_path: Path, port: int, pid_path: Path,
                 extra_env: dict[str, str] | None = None) -> None:
        self.port = port
        self.pid_path = pid_path
        self.url = f"http://127.0.0.1:{port}"
        self.model_dir = model_dir
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.env = dict(os.environ)
        self.env.update({
            "LABEL_STUDIO_URL": ls["url"],
            "LABEL_STUDIO_API_KEY": ls["api_key"],
            "MODEL_DIR": str(model_dir),
            "MCM_BACKBONE": "simple-cnn",
            "MCM_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "MCM_DEBOUNCE_SECONDS": os.environ.get("MCM_E2E_DEBOUNCE_SECONDS", "3"),
            "MCM_SEED": "0",
            "LOG_LEVEL": "INFO",
            "OMP_NUM_THREADS": "2",
            "PYTHONUNBUFFERED": "1",
        })
        self.env.update(extra_env or {})
        self.env.pop("REDIS_URL", None)
        # Run as in production: basic auth on the backend, so `connect` must pass it on to
        # Label Studio and to the annotation webhook.
        self.auth = ("e2e", os.urandom(8).hex())
        self.env.update(BASIC_AUTH_USER=self.auth[0], BASIC_AUTH_PASS=self.auth[1])

    def start(self, timeout: float = 90.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "backend already running"
        log = open(self.log_path, "a")
        log.write(f"\n===== start {time.strftime('%H:%M:%S')} =====\n")
        log.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "_wsgi.py", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.pid_path.write_text(str(self.proc.pid))  # scripts/e2e.sh kills it if pytest dies
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"backend exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"backend did not answer /health within {timeout}s; log:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.pid_path.unlink(missing_ok=True)

    def restart(self) -> None:
        self.stop()
        self.start()

    def get(self, path: str, **params) -> dict:
        response = requests.get(self.url + path, params=params, auth=self.auth, timeout=10)
        response.raise_for_status()
        return response.json()

    def status(self, project_id: int) -> dict:
        return self.get("/mcm/status", project=project_id)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


class LS:
    """Minimal REST access to Label Studio with the legacy token (what a script would do)."""

    def __init__(self, url: str, api_key: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {api_key}"

    def request(self, method: str, path: str, **kwargs):
        response = self.session.request(method, self.url + path, timeout=120, **kwargs)
        assert response.status_code < 300, f"{method} {path}: HTTP {response.status_code} {response.text[:300]}"
        return response.json() if response.content else None

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def project(self, pid: int) -> dict:
        return self.get(f"/api/projects/{pid}")

    def tasks(self, pid: int, view: int | None = None, limit: int | None = None) -> list[dict]:
        """Tasks in Label Studio's order (the view's filters and ordering when `view` is given)."""
        out, page = [], 1
        while True:
            params = {"project": pid, "page": page, "page_size": 500, "fields": "all"}
            if view is not None:
                params["view"] = view
            response = self.session.get(self.url + "/api/tasks", params=params, timeout=120)
            if response.status_code == 404:  # past the last page
                break
            assert response.ok, response.text[:300]
            body = response.json()
            items = body["tasks"] if isinstance(body, dict) else body
            out.extend(items)
            if not items or len(items) < 500 or (limit and len(out) >= limit):
                break
            page += 1
        return out[:limit] if limit else out

    def predictions(self, pid: int) -> list[dict]:
        return self.get("/api/predictions/", params={"project": pid})

    def local_files_project(self, title: str, label_config: str, folder: Path, tasks: list[dict]) -> tuple[int, dict]:
        """(id, import answer) of a new project importing `tasks`, whose images are local files under
        `folder`: /data/local-files/ only serves paths under a local storage of the project."""
        pid = self.post("/api/projects/", json={"title": title, "label_config": label_config})["id"]
        self.post("/api/storages/localfiles/", json={"project": pid, "title": folder.name, "path": str(folder),
                                                     "use_blob_urls": False})
        return pid, self.post(f"/api/projects/{pid}/import", json=tasks)

    def model_versions(self, pid: int) -> dict[str, int]:
        body = self.get(f"/api/projects/{pid}/model-versions/", params={"extended": "true"})
        rows = body.get("static", []) if isinstance(body, dict) else body
        return {r["model_version"]: r["count"] for r in rows if r.get("model_version")}

    def annotate(self, task_id: int, label: str) -> None:
        self.post(f"/api/tasks/{task_id}/annotations/", json={"result": [{
            "from_name": "digit", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]})


def admin(ls_env: dict, backend: BackendProcess, *args: str) -> subprocess.CompletedProcess:
    """Run `python -m backend.admin` as an operator would (backend's basic auth and URL in the environment)."""
    env = dict(os.environ, LABEL_STUDIO_URL=ls_env["url"], LABEL_STUDIO_API_KEY=ls_env["api_key"],
               BASIC_AUTH_USER=backend.auth[0], BASIC_AUTH_PASS=backend.auth[1], MCM_BACKEND_URL=backend.url)
    return subprocess.run([sys.executable, "-m", "backend.admin", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def ls_env() -> dict:
    return {
        "url": os.environ["MCM_E2E_LS_URL"].rstrip("/"),
        "api_key": os.environ["MCM_E2E_LS_API_KEY"],
        "files_root": Path(os.environ["MCM_E2E_FILES_ROOT"]),
        "user": os.environ.get("MCM_E2E_LS_USER"),
        "password": os.environ.get("MCM_E2E_LS_PASSWORD"),
    }


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory) -> Path:
    given = os.environ.get("MCM_E2E_STATE_DIR")
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        return Path(given)
    return tmp_path_factory.mktemp("live_state")


@pytest.fixture(scope="session")
def backend_env() -> dict[str, str]:
    """Settings a stage gives the backend on top of BackendProcess's (a stage's conftest overrides this)."""
    return {}


@pytest.fixture(scope="session")
def backend(ls_env, state_dir, backend_env) -> BackendProcess:
    model_dir = state_dir / "models"
    model_dir.mkdir(parents=True, exist_ok=True)
    proc = BackendProcess(ls_env, model_dir, state_dir / "backend.log",
                          int(os.environ.get("MCM_E2E_BACKEND_PORT") or free_port()), state_dir / "backend.pid",
                          backend_env)
    proc.start()
    yield proc
    proc.stop()
