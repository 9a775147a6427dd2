#!/usr/bin/env bash
# The real-browser stage: Label Studio 1.23.2's own web UI in Debian's Chromium, driven by
# Playwright, against the quickstart's demo project and our backend (tests/browser). Annotators
# log in, open the "Tail classes first" tab, "Label Tasks As Displayed" and label at a person's
# pace while the backend retrains; every submission must be saved (issue 9). An object detection
# project's tab is worked the same way, its pre-filled boxes accepted (test_detection_session.py).
# Servers, state dir, clean-up and the test order (file order: -p no:randomly) are scripts/e2e.sh's
# (run with MCM_STAGE=browser); screenshots
# and page HTML go to <state dir>/browser/, the figures to <state dir>/browser_metrics.json.
#
# Usage: bash scripts/browser.sh [extra pytest args]
# Settings: MCM_BROWSER_PAUSE (seconds an annotator looks at a task, default 8), MCM_BROWSER_TASKS
# (tasks of the one-annotator session, default 12), MCM_BROWSER_PAIR_TASKS (tasks per annotator in
# the two-annotator session, default 4), and e2e.sh's (MCM_E2E_STATE_DIR, MCM_E2E_KEEP, ...).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! command -v chromium >/dev/null 2>&1; then
  echo "[browser] Debian's chromium is not installed: apt-get install chromium (scripts/test.sh installs it)" >&2
  exit 1
fi
MCM_STAGE=browser exec bash "$ROOT/scripts/e2e.sh" "$@"
