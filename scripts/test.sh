#!/usr/bin/env bash
# The project's whole test suite, as CI runs it:
#   1. unit and backend tests (pytest -m "not e2e and not browser"), with a real redis-server for the RQ tests;
#   2. the end-to-end stage against a real Label Studio on a private PostgreSQL 15 cluster (the
#      deployment's database; scripts/e2e.sh);
#   3. the real-browser stage: Label Studio's web UI (on SQLite, the quickstart's database) in Chromium,
#      annotators labeling the tail-first queue while the backend retrains (scripts/browser.sh).
# Installs what is missing (the project venv, redis-server, postgresql-15, chromium, Label Studio's own
# venv), starts every service it needs on 127.0.0.1 and stops them again, also on failure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export MCM_VENV="${MCM_VENV:-$HOME/.cache/mcm/venv}"
bash scripts/setup_env.sh
PY="$MCM_VENV/bin/python"

apt_install() {  # PACKAGE...: Debian packages the tests need; CI runs as root, a developer may need sudo
  echo "[test] installing $* (Debian packages)"
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- redis-server for the scale-out (RQ) tests; PostgreSQL 15 and Chromium for the live stages ---
command -v redis-server >/dev/null 2>&1 || apt_install redis-server
[ -x "${MCM_PG_BIN:-/usr/lib/postgresql/15/bin}/initdb" ] || apt_install postgresql-15
command -v chromium >/dev/null 2>&1 || apt_install chromium
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

# Stage 1 runs in a random order (pytest-randomly): every test must pass alone and after any other.
# The seed is printed (-q hides pytest-randomly's own header line); MCM_TEST_SEED=N repeats an order.
SEED="${MCM_TEST_SEED:-$RANDOM}"
echo "[test] stage 1: unit, backend and scale-out tests in random order, seed $SEED" \
  "(this order again: MCM_TEST_SEED=$SEED bash scripts/test.sh, or pytest -p randomly --randomly-seed=$SEED)"
"$PY" -m pytest -m "not e2e and not browser" -q -p randomly --randomly-seed="$SEED"

# The e2e flow runs on PostgreSQL, the deployment's database (docker/docker-compose.yml); the browser
# stage on SQLite, the quickstart's. MCM_TEST_E2E_DBS="sqlite postgresql" runs the e2e flow on both
# (about 5 minutes each).
for db in ${MCM_TEST_E2E_DBS:-postgresql}; do
  echo "[test] stage 2: end-to-end against a real Label Studio on $db"
  MCM_LS_DB="$db" bash scripts/e2e.sh
done

echo "[test] stage 3: annotators in a real browser (Chromium) against Label Studio"
bash scripts/browser.sh
