#!/usr/bin/env bash
# Install, start and stop a local Label Studio 1.23.2 for the e2e tests and the quickstart.
#
# Why a script of its own: Label Studio must live in its own virtual environment (its pins
# clash with label-studio-ml's), and a loopback ML backend only works with a handful of
# settings that are easy to forget (see /work/shared/LABEL_STUDIO_NOTES.md).
#
# Usage:
#   scripts/ls_server.sh ensure-venv          create $MCM_LS_VENV with label-studio==1.23.2 if missing
#   scripts/ls_server.sh start STATE_DIR      start on 127.0.0.1:$MCM_LS_PORT, wait until it answers,
#                                             write STATE_DIR/ls.env (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY, ...)
#   scripts/ls_server.sh stop STATE_DIR       stop the server started with that STATE_DIR
#   scripts/ls_server.sh status STATE_DIR     exit 0 when that server answers /health
#
# STATE_DIR holds the SQLite database (LABEL_STUDIO_BASE_DATA_DIR=STATE_DIR/data), the pid file,
# the log and ls.env. A second `start` with the same STATE_DIR reuses the database, user and token.
# Settings (environment): MCM_LS_VENV (default ~/.cache/mcm/ls-venv), MCM_LS_PORT (default 8080),
# MCM_LS_FILES_ROOT (local-files document root, default STATE_DIR/files), MCM_LS_USER,
# MCM_LS_PASSWORD, MCM_LS_START_TIMEOUT (seconds, default 180).
set -euo pipefail

LS_VERSION="1.23.2"
VENV="${MCM_LS_VENV:-$HOME/.cache/mcm/ls-venv}"
PORT="${MCM_LS_PORT:-8080}"
START_TIMEOUT="${MCM_LS_START_TIMEOUT:-180}"

log() { echo "[ls_server] $*" >&2; }
die() { echo "[ls_server] ERROR: $*" >&2; exit 1; }

ensure_venv() {
  if [ -x "$VENV/bin/label-studio" ] \
     && [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("label-studio"))' 2>/dev/null)" = "$LS_VERSION" ]; then
    return 0
  fi
  log "installing label-studio==$LS_VERSION into $VENV (first time: several minutes)"
  mkdir -p "$(dirname "$VENV")"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  # pip's outcome is judged by the version check below; the grep drops its noise about
  # configured-but-absent local index directories.
  "$VENV/bin/pip" install --disable-pip-version-check -q "label-studio==$LS_VERSION" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
  "$VENV/bin/python" -c 'import importlib.metadata as m; assert m.version("label-studio") == "'"$LS_VERSION"'"' 2>/dev/null \
    || die "pip install label-studio==$LS_VERSION failed (is the package index reachable?)"
}

is_running() {  # pid file exists and that process is alive
  local pidfile="$1/ls.pid"
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

answers() {  # url answers /health
  curl -sf --max-time 3 "$1/health" >/dev/null 2>&1
}

start() {
  local state="$1"
  mkdir -p "$state"
  state="$(cd "$state" && pwd)"
  local files_root="${MCM_LS_FILES_ROOT:-$state/files}"
  mkdir -p "$files_root" "$state/data"
  files_root="$(cd "$files_root" && pwd)"
  ensure_venv

  # Credentials persist in ls.env so a restart reuses the same user and token.
  local user password token port
  if [ -f "$state/ls.env" ]; then
    # shellcheck disable=SC1091
    source "$state/ls.env"
    user="$MCM_LS_USER_SAVED"; password="$MCM_LS_PASSWORD_SAVED"; token="$LABEL_STUDIO_API_KEY"
    port="$MCM_LS_PORT_SAVED"
  else
    user="${MCM_LS_USER:-admin@example.com}"
    password="${MCM_LS_PASSWORD:-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
    # A legacy token (40 hex characters): label-studio-ml and the sdk's file download send it as
    # "Token <key>", which works for API calls and /data/local-files alike.
    token="$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    port="$PORT"
  fi
  local url="http://127.0.0.1:$port"

  if is_running "$state" && answers "$url"; then
    log "already running at $url (pid $(cat "$state/ls.pid"))"
  else
    if answers "$url"; then
      die "port $port already serves something else; set MCM_LS_PORT to a free port"
    fi
    log "starting Label Studio $LS_VERSION at $url (data: $state/data, log: $state/ls.log)"
    (
      export LABEL_STUDIO_BASE_DATA_DIR="$state/data"
      # Loopback ML backends are blocked (SSRF protection) unless BOTH are off.
      export ML_BLOCK_LOCAL_IP=false USE_DEFAULT_BANNED_SUBNETS=false
      # Without this flag every import/predictions request recounts all tasks of the project.
      export fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short=true
      export LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true
      export LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT="$files_root"
      # Legacy tokens are off by default for a new organization; this must be set before it exists.
      export LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true
      export LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK=true
      export SENTRY_DSN="" FRONTEND_SENTRY_DSN="" COLLECT_ANALYTICS=false
      cd "$state"
      exec "$VENV/bin/label-studio" start --no-browser \
        --internal-host 127.0.0.1 --port "$port" \
        --username "$user" --password "$password" --user-token "$token" \
        --enable-legacy-api-token </dev/null >>"$state/ls.log" 2>&1
    ) &
    echo $! >"$state/ls.pid"
    local waited=0
    until answers "$url"; do
      kill -0 "$(cat "$state/ls.pid")" 2>/dev/null \
        || { tail -20 "$state/ls.log" >&2; die "Label Studio exited during start (log: $state/ls.log)"; }
      [ "$waited" -ge "$START_TIMEOUT" ] && { tail -20 "$state/ls.log" >&2; die "Label Studio did not answer within ${START_TIMEOUT}s"; }
      sleep 1; waited=$((waited + 1))
    done
    log "up after ${waited}s"
  fi

  # The token must work for the API, otherwise nothing downstream will.
  local code
  code="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Token $token" "$url/api/current-user/whoami")"
  [ "$code" = "200" ] || die "API token rejected by $url (HTTP $code)"

  cat >"$state/ls.env" <<EOF
LABEL_STUDIO_URL=$url
LABEL_STUDIO_API_KEY=$token
MCM_LS_USER_SAVED=$user
MCM_LS_PASSWORD_SAVED=$password
MCM_LS_PORT_SAVED=$port
MCM_LS_FILES_ROOT_SAVED=$files_root
EOF
  chmod 600 "$state/ls.env"
}

stop() {
  local state="$1"
  [ -f "$state/ls.pid" ] || { log "no pid file in $state: nothing to stop"; return 0; }
  local pid; pid="$(cat "$state/ls.pid")"
  if kill -0 "$pid" 2>/dev/null; then
    # `label-studio start` serves from this single process (runserver without autoreload).
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped (pid $pid)"
  fi
  rm -f "$state/ls.pid"
}

status() {
  local state="$1"
  [ -f "$state/ls.env" ] || return 1
  # shellcheck disable=SC1091
  source "$state/ls.env"
  is_running "$state" && answers "$LABEL_STUDIO_URL"
}

cmd="${1:-}"
case "$cmd" in
  ensure-venv) ensure_venv ;;
  start) [ $# -ge 2 ] || die "usage: $0 start STATE_DIR"; start "$2" ;;
  stop) [ $# -ge 2 ] || die "usage: $0 stop STATE_DIR"; stop "$2" ;;
  status) [ $# -ge 2 ] || die "usage: $0 status STATE_DIR"; status "$2" ;;
  *) die "usage: $0 {ensure-venv|start STATE_DIR|stop STATE_DIR|status STATE_DIR}" ;;
esac
