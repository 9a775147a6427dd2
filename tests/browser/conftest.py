"""Fixtures for the real-browser stage (started by scripts/browser.sh).

Same servers and environment as the e2e stage (tests/live_stack.py), plus Label Studio's login
(MCM_E2E_LS_USER / MCM_E2E_LS_PASSWORD) and Debian's chromium driven by Playwright. Screenshots
and page HTML go to <state dir>/browser/: one of the labeling page always, and one of every open
page when a test fails.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_stack import (LS_ENV, backend, ls_env, report_metrics, skip_without_env,  # noqa: E402,F401
                        state_dir)
from lsui import AnnotatorUI, launch_chromium  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from make_detection_data import DETECTOR_VERSION  # noqa: E402

REQUIRED_ENV = (*LS_ENV, "MCM_E2E_LS_USER", "MCM_E2E_LS_PASSWORD")
METRICS: dict = {}
OPEN_UIS: list[AnnotatorUI] = []


def pytest_collection_modifyitems(config, items):
    skip_without_env(items, "browser", REQUIRED_ENV, "bash scripts/browser.sh")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, keep a screenshot and the HTML of every open page (before teardown closes them)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("setup", "call"):
        for ui in OPEN_UIS:
            try:
                path = ui.save_evidence(f"FAILED-{item.name}-{ui.name}")
                report.sections.append(("browser evidence", f"{ui.name}: {path}"))
            except Exception as exc:  # noqa: BLE001 (a closed page must not mask the real failure)
                report.sections.append(("browser evidence", f"{ui.name}: no screenshot ({exc})"))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not METRICS:
        return
    report_metrics(terminalreporter, "browser session figures (measured)", METRICS, "browser_metrics.json")


@pytest.fixture(scope="session")
def backend_env() -> dict[str, str]:
    # The mining report's held-out evaluation (test_report_page.py): 3 folds, not 5, for CI time.
    # test_detection_session.py: the team detector's predictions are the candidates (as in the e2e stage)
    return {"MCM_REPORT_FOLDS": "3", "MCM_DETECTION_CANDIDATES": f"label-studio:{DETECTOR_VERSION}"}


@pytest.fixture(scope="session")
def metrics() -> dict:
    return METRICS


@pytest.fixture(scope="session")
def shots_dir(state_dir) -> Path:
    path = state_dir / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


@pytest.fixture
def open_ui(chromium, ls_env, shots_dir):
    """`open_ui(name)`: a fresh browser context (own cookies: one person) with one page."""
    made = []

    def make(name: str, **kwargs) -> AnnotatorUI:
        context = chromium.new_context(viewport={"width": 1400, "height": 900})
        context.set_default_timeout(60_000)
        ui = AnnotatorUI(context.new_page(), ls_env["url"], name, shots_dir, **kwargs)
        made.append(context)
        OPEN_UIS.append(ui)
        return ui

    yield make
    OPEN_UIS.clear()
    for context in made:
        context.close()
