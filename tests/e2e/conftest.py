"""Fixtures for the end-to-end tests against a real Label Studio (started by scripts/e2e.sh).

The servers, the backend process and the environment are shared with the browser stage: see
tests/live_stack.py. Without the environment every e2e test is skipped with that reason, so a
plain `pytest` still passes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from live_stack import (LS, LS_ENV, Stopwatch, backend, ls_env, report_metrics,  # noqa: E402,F401
                        skip_without_env, state_dir)

# Stage durations and quality figures collected by the flow, printed at the end of the session.
METRICS: dict = {"durations_s": {}}


def pytest_collection_modifyitems(config, items):
    skip_without_env(items, "e2e", LS_ENV, "bash scripts/e2e.sh")


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
    report_metrics(terminalreporter, "end-to-end figures (measured)", METRICS, "e2e_metrics.json")


@pytest.fixture(scope="session")
def backend_env() -> dict[str, str]:
    return {
        # Short lifecycle times so the stage sees a version filled and an old one retired.
        "MCM_FILL_AFTER_SECONDS": "5",
        "MCM_PREDICTION_GRACE_SECONDS": "20",
        "MCM_MAINTAIN_SECONDS": "2",
        # The scripted burst of step 3 (hundreds of annotations through the API, each followed by
        # Label Studio's START_TRAINING) lasts minutes on a busy machine: one training at its end.
        "MCM_RETRAIN_MAX_WAIT": "600",
        # The detection flow's candidates: its "team detector"'s predictions (tests/e2e/test_detection_flow.py).
        "MCM_DETECTION_CANDIDATES": "label-studio:team-detector-v1",
        # The mining report's held-out evaluation: 3 folds keep it under a minute in CI (default 5).
        "MCM_REPORT_FOLDS": "3",
    }


@pytest.fixture(scope="session")
def stopwatch() -> Stopwatch:
    return Stopwatch(METRICS)


@pytest.fixture(scope="session")
def metrics() -> dict:
    return METRICS


# Each flow module shares one project between its ordered steps:
@pytest.fixture(scope="module")
def flow() -> dict:
    """State passed from step to step; `failed` makes later steps skip."""
    return {"failed": None}


@pytest.fixture(autouse=True)
def _chain(flow, request):
    """A step whose predecessor failed is skipped rather than failing for an unrelated reason."""
    if flow["failed"]:
        pytest.skip(f"an earlier step failed ({flow['failed']})")
    yield
    if getattr(request.node, "rep_call_failed", False):  # set by pytest_runtest_makereport above
        flow["failed"] = request.node.name


@pytest.fixture(scope="module")
def ls(ls_env) -> LS:
    return LS(ls_env["url"], ls_env["api_key"])
