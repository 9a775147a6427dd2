#!/usr/bin/env bash
# The project's whole test suite, as CI runs it:
#   1. unit and backend tests (pytest -m "not e2e and not browser"), with a real redis-server for the RQ tests;
#   2. the end-to-end stage against a real Label Studio server (scripts/e2e.sh);
#   3. the real-browser stage: Label Studio's web UI in Chromium, annotators labeling the tail-first
#      queue while the backend retrains (scripts/browser.sh).
# Installs what is missing (the project venv, redis-server, chromium, Label Studio's own venv),
# starts every service it needs on 127.0.0.1 and stops them again, also on failure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export MCM_VENV="${MCM_VENV:-$HOME/.cache/mcm/venv}"
bash scripts/setup_env.sh
PY="$MCM_VENV/bin/python"

apt_install() {  # COMMAND PACKAGE: install the Debian package when the command is missing
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "[test] installing $2 (Debian package)"
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2") >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  fi
}

# --- redis-server for the scale-out (RQ) tests ---------------------------------------------
apt_install redis-server redis-server
REDIS_PORT="${MCM_TEST_REDIS_PORT:-6390}"
REDIS_DIR="$(mktemp -d)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$REDIS_DIR" \
  --daemonize yes --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log"
cleanup() {
  [ -f "$REDIS_DIR/redis.pid" ] && kill "$(cat "$REDIS_DIR/redis.pid")" 2>/dev/null || true
  rm -rf "$REDIS_DIR"
}
trap cleanup EXIT
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
export MCM_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"

echo "[test] stage 1: unit, backend and scale-out tests"
"$PY" -m pytest -m "not e2e and not browser" -q

echo "[test] stage 2: end-to-end against a real Label Studio"
bash scripts/e2e.sh

echo "[test] stage 3: annotators in a real browser (Chromium) against Label Studio"
apt_install chromium chromium
bash scripts/browser.sh
