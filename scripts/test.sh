#!/usr/bin/env bash
# The project's whole test suite, as CI runs it:
#   1. unit and backend tests (python -m pytest -m "not e2e"), with a real redis-server for the RQ tests;
#   2. the end-to-end stage against a real Label Studio server (scripts/e2e.sh), on SQLite and on a
#      private PostgreSQL 15 cluster.
# Installs what is missing (the project venv, redis-server, postgresql-15, Label Studio's own venv), starts every
# service it needs on 127.0.0.1 and stops them again, also on failure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export MCM_VENV="${MCM_VENV:-$HOME/.cache/mcm/venv}"
bash scripts/setup_env.sh
PY="$MCM_VENV/bin/python"

apt_install() {  # Debian packages the tests need; CI runs as root, a developer may need sudo
  echo "[test] installing $* (Debian packages)"
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- redis-server for the scale-out (RQ) tests; PostgreSQL 15 for the e2e stage on PostgreSQL ---
command -v redis-server >/dev/null 2>&1 || apt_install redis-server
[ -x "${MCM_PG_BIN:-/usr/lib/postgresql/15/bin}/initdb" ] || apt_install postgresql-15
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
"$PY" -m pytest -m "not e2e" -q

# The e2e flow runs on both databases: SQLite is the quickstart's, PostgreSQL the deployment's
# (docker/docker-compose.yml). MCM_TEST_E2E_DBS="postgresql" runs one (about 5 minutes each).
for db in ${MCM_TEST_E2E_DBS:-sqlite postgresql}; do
  echo "[test] stage 2: end-to-end against a real Label Studio on $db"
  MCM_LS_DB="$db" bash scripts/e2e.sh
done
