"""Fixtures for the end-to-end tests against a real Label Studio (started by scripts/e2e.sh).

Why the backend is started here and not by the script: step 7 of the flow restarts it, so the
test session must own the process. Label Studio itself is started once per stage by
scripts/e2e.sh, which exports where it is:

  MCM_E2E_LS_URL, MCM_E2E_LS_API_KEY   the server and a working (legacy) token
  MCM_E2E_FILES_ROOT                   its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT
  MCM_E2E_STATE_DIR                    where logs, models and the metrics JSON go (optional)

Without them every e2e test is skipped with that reason, so a plain `pytest` still passes.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
REQUIRED_ENV = ("MCM_E2E_LS_URL", "MCM_E2E_LS_API_KEY", "MCM_E2E_FILES_ROOT")

# Stage durations and quality figures collected by the flow, printed at the end of the session.
METRICS: dict = {"durations_s": {}}


def pytest_collection_modifyitems(config, items):
    missing = [name for name in REQUIRED_ENV if not os.environ.get(name)]
    if not missing:
        return
    skip = pytest.mark.skip(reason=f"e2e environment not set ({', '.join(missing)}): run `bash scripts/e2e.sh`")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Mark a test whose call failed, so the ordered flow can skip the steps after it."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        item.rep_call_failed = True


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not METRICS["durations_s"] and len(METRICS) == 1:
        return
    tr = terminalreporter
    tr.section("end-to-end figures (measured)")
    for stage, seconds in METRICS["durations_s"].items():
        tr.write_line(f"  {stage:<45s} {seconds:8.1f} s")
    for key, value in METRICS.items():
        if key != "durations_s":
            tr.write_line(f"  {key:<45s} {value}")
    out = os.environ.get("MCM_E2E_STATE_DIR")
    if out:
        path = Path(out) / "e2e_metrics.json"
        path.write_text(json.dumps(METRICS, indent=2, default=str))
        tr.write_line(f"  (also written to {path})")


class Stopwatch:
    """`with stopwatch("stage"):` records how long a stage took into METRICS."""

    def __call__(self, stage: str) -> "Stopwatch":
        self._stage = stage
        return self

    def __enter__(self) -> "Stopwatch":
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        METRICS["durations_s"][self._stage] = round(time.monotonic() - self._t0, 1)


@pytest.fixture(scope="session")
def stopwatch() -> Stopwatch:
    return Stopwatch()


@pytest.fixture(scope="session")
def metrics() -> dict:
    return METRICS


@pytest.fixture(scope="session")
def ls_env() -> dict:
    return {
        "url": os.environ["MCM_E2E_LS_URL"].rstrip("/"),
        "api_key": os.environ["MCM_E2E_LS_API_KEY"],
        "files_root": Path(os.environ["MCM_E2E_FILES_ROOT"]),
    }


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory) -> Path:
    given = os.environ.get("MCM_E2E_STATE_DIR")
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        return Path(given)
    return tmp_path_factory.mktemp("e2e_state")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BackendProcess:
    """Our backend (`python _wsgi.py`) as a subprocess the tests can start, stop and restart."""

    def __init__(self, ls: dict, model_dir: Path, log_path: Path, port: int, pid_path: Path) -> None:
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
            # Short lifecycle times so the stage sees a version filled and an old one retired.
            "MCM_FILL_AFTER_SECONDS": "5",
            "MCM_PREDICTION_GRACE_SECONDS": "20",
            "MCM_MAINTAIN_SECONDS": "2",
            # The scripted burst of step 3 (hundreds of annotations through the API, each followed by
            # Label Studio's START_TRAINING) lasts minutes on a busy machine: one training at its end.
            "MCM_RETRAIN_MAX_WAIT": "600",
            "MCM_SEED": "0",
            "LOG_LEVEL": "INFO",
            "OMP_NUM_THREADS": "2",
            "PYTHONUNBUFFERED": "1",
        })
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


@pytest.fixture(scope="session")
def backend(ls_env, state_dir) -> BackendProcess:
    model_dir = state_dir / "models"
    model_dir.mkdir(parents=True, exist_ok=True)
    proc = BackendProcess(ls_env, model_dir, state_dir / "backend.log",
                          int(os.environ.get("MCM_E2E_BACKEND_PORT") or free_port()), state_dir / "backend.pid")
    proc.start()
    yield proc
    proc.stop()
