#!/usr/bin/env bash
# The end-to-end stage: a real Label Studio 1.23.2 on 127.0.0.1 (fresh data dir; on SQLite, or on
# a private PostgreSQL 15 cluster with MCM_LS_DB=postgresql), our backend (started, restarted and
# stopped by the tests), and the ordered flow in tests/e2e. Every server is stopped at the end, also
# on failure or Ctrl-C. The browser stage (scripts/browser.sh) runs through here too, with
# MCM_STAGE=browser: the same servers and environment (tests/live_stack.py), `pytest tests/browser`.
#
# Usage: [MCM_LS_DB=postgresql] bash scripts/e2e.sh [extra pytest args]
# Settings: MCM_STAGE (e2e | browser, default e2e), MCM_LS_DB (sqlite | postgresql, default sqlite),
# MCM_VENV (project venv), MCM_LS_VENV (Label Studio venv), MCM_E2E_LS_PORT (default: a free port),
# MCM_E2E_STATE_DIR (default: a new temp dir, removed after a pass unless MCM_E2E_KEEP=1).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export MCM_VENV="${MCM_VENV:-$HOME/.cache/mcm/venv}"
PY="$MCM_VENV/bin/python"
STAGE="${MCM_STAGE:-e2e}"
case "$STAGE" in e2e|browser) ;; *) echo "MCM_STAGE must be e2e or browser, not '$STAGE'" >&2; exit 2 ;; esac
t_start=$(date +%s)

[ -x "$PY" ] || bash scripts/setup_env.sh
bash scripts/ls_server.sh ensure-venv

made_state=0
if [ -n "${MCM_E2E_STATE_DIR:-}" ]; then STATE="$MCM_E2E_STATE_DIR"; else STATE="$(mktemp -d "/tmp/mcm-$STAGE.XXXXXX")"; made_state=1; fi
mkdir -p "$STATE"
STATE="$(cd "$STATE" && pwd)"
export MCM_E2E_STATE_DIR="$STATE"
export MCM_LS_PORT="${MCM_E2E_LS_PORT:-$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
export MCM_LS_FILES_ROOT="$STATE/files"
export MCM_LS_DB="${MCM_LS_DB:-sqlite}"
# mktemp makes the folder 0700; the PostgreSQL cluster below it belongs to the postgres user, who
# needs search permission (not read) on the way to it.
if [ "$MCM_LS_DB" = postgresql ] && [ "$made_state" = 1 ]; then chmod o+x "$STATE"; fi

rc=1
cleanup() {
  # The backend belongs to pytest; if pytest died without stopping it, stop it here.
  if [ -f "$STATE/backend.pid" ]; then
    kill "$(cat "$STATE/backend.pid")" 2>/dev/null || true
    rm -f "$STATE/backend.pid"
  fi
  bash "$ROOT/scripts/ls_server.sh" stop "$STATE/ls" || true
  if [ "$rc" = 0 ] && [ "$made_state" = 1 ] && [ "${MCM_E2E_KEEP:-0}" != 1 ]; then
    rm -rf "$STATE"
  else
    echo "[$STAGE] logs and data kept in $STATE (ls/ls.log, backend.log, ${STAGE}_metrics.json)"
  fi
  echo "[$STAGE] whole stage took $(( $(date +%s) - t_start ))s"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t0=$(date +%s)
bash scripts/ls_server.sh start "$STATE/ls"
echo "[$STAGE] Label Studio on $MCM_LS_DB ready in $(( $(date +%s) - t0 ))s"
set -a
# shellcheck disable=SC1091
source "$STATE/ls/ls.env"
set +a
export MCM_E2E_LS_URL="$LABEL_STUDIO_URL" MCM_E2E_LS_API_KEY="$LABEL_STUDIO_API_KEY" MCM_E2E_FILES_ROOT="$MCM_LS_FILES_ROOT" \
  MCM_E2E_LS_USER="$MCM_LS_USER_SAVED" MCM_E2E_LS_PASSWORD="$MCM_LS_PASSWORD_SAVED"

set +e
# -p no:randomly: the e2e and browser flows are ordered (each test continues the previous one's project).
"$PY" -m pytest "tests/$STAGE" -m "$STAGE" -p no:cacheprovider -p no:randomly -q "$@"
rc=$?
set -e
exit "$rc"
