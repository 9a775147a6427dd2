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
# STATE_DIR holds Label Studio's data dir (LABEL_STUDIO_BASE_DATA_DIR=STATE_DIR/data: the SQLite
# database, media, secret key), the pid file, the log and ls.env. A second `start` with the same
# STATE_DIR reuses the database, user and token.
#
# MCM_LS_DB=postgresql (default sqlite) runs Label Studio on a private PostgreSQL 15 cluster in
# STATE_DIR/pg (Debian's binaries, $MCM_PG_BIN), listening on 127.0.0.1 and a free port only, with
# its own role and database; `stop` stops both servers and a restart reuses the cluster. PostgreSQL
# refuses to run as root, so as root the cluster belongs to the `postgres` system user (runuser).
# Settings (environment): MCM_LS_VENV (default ~/.cache/mcm/ls-venv), MCM_LS_PORT (default 8080),
# MCM_LS_DB (sqlite | postgresql; fixed at the first start of a STATE_DIR), MCM_PG_BIN (default
# /usr/lib/postgresql/15/bin), MCM_LS_FILES_ROOT (local-files document root, default STATE_DIR/files),
# MCM_LS_USER, MCM_LS_PASSWORD, MCM_LS_START_TIMEOUT (seconds, default 180).
#
# Secrets (the user's password, the API token, the database password) never appear in a command's
# arguments, which every local user can read (`ps`, /proc/PID/cmdline): Label Studio gets them from its
# environment, curl reads the token's header from stdin, psql its SQL. Files holding them (ls.env, the
# data dir with the SQLite database) are created readable by their owner only (umask 077).
set -euo pipefail

LS_VERSION="1.23.2"
VENV="${MCM_LS_VENV:-$HOME/.cache/mcm/ls-venv}"
PORT="${MCM_LS_PORT:-8080}"
START_TIMEOUT="${MCM_LS_START_TIMEOUT:-180}"
PG_BIN="${MCM_PG_BIN:-/usr/lib/postgresql/15/bin}"
PG_ROLE="labelstudio"
PG_DATABASE="labelstudio"

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

random_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

write_secret_file() {  # FILE: stdin into FILE, readable by its owner only from the moment it exists
  local file="$1" tmp="$1.tmp.$$"
  (umask 077 && cat >"$tmp") && mv -f "$tmp" "$file"
}

is_running() {  # pid file exists and that process is alive
  local pidfile="$1/ls.pid"
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

answers() {  # url answers /health
  curl -sf --max-time 3 "$1/health" >/dev/null 2>&1
}

port_free() {  # nothing listens on 127.0.0.1:$1
  "$VENV/bin/python" -c 'import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}

free_port() {
  "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

as_pg_owner() {  # PostgreSQL refuses to run as root: as root, run its tools as the postgres system user
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_running() {  # the cluster in STATE_DIR/pg/data is up
  [ -f "$1/pg/data/PG_VERSION" ] && as_pg_owner "$PG_BIN/pg_ctl" status -D "$1/pg/data" >/dev/null 2>&1
}

pg_admin_sql() {  # run SQL from stdin as the cluster's superuser over its private socket; prints rows
  as_pg_owner "$PG_BIN/psql" -h "$1/pg/run" -p "$2" -U postgres -d postgres -X -q -A -t -v ON_ERROR_STOP=1
}

pg_prepare_dirs() {
  local state="$1" pg="$1/pg"
  mkdir -p "$pg"
  chmod 700 "$pg"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 \
      || die "running as root needs the 'postgres' system user (the Debian package postgresql-15 creates it)"
    chmod o+x "$state"  # search permission only, so the postgres user can reach its own folder below
    chown postgres: "$pg"
    runuser -u postgres -- test -w "$pg" \
      || die "the postgres user cannot reach $pg: a parent folder of STATE_DIR is not searchable by others (chmod o+x it, or use a STATE_DIR under /tmp)"
  fi
}

# Start (or reuse) the cluster of STATE_DIR on 127.0.0.1:PORT and make sure Label Studio's role and
# database exist. Prints the port it listens on (another free one if PORT was taken meanwhile).
pg_start() {
  local state="$1" port="$2" password="$3" pg="$1/pg"
  [ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/pg_ctl" ] && [ -x "$PG_BIN/psql" ] \
    || die "PostgreSQL 15 server binaries not found in $PG_BIN (Debian: apt-get install postgresql-15; or set MCM_PG_BIN)"
  pg_prepare_dirs "$state"
  if [ ! -f "$pg/data/PG_VERSION" ]; then
    log "creating a PostgreSQL cluster in $pg/data"
    as_pg_owner mkdir -p "$pg/run"
    # Local socket: trust, but the socket lives in $pg/run (mode 700, the owner's only). TCP: password.
    as_pg_owner "$PG_BIN/initdb" -D "$pg/data" -U postgres -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >"$pg/initdb.log" 2>&1 \
      || { tail -20 "$pg/initdb.log" >&2; die "initdb failed (log: $pg/initdb.log)"; }
    printf "listen_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n" "$pg/run" \
      | as_pg_owner tee -a "$pg/data/postgresql.conf" >/dev/null
  fi
  if pg_running "$state"; then
    port="$(sed -n 4p "$pg/data/postmaster.pid")"
    log "PostgreSQL already running on 127.0.0.1:$port"
  else
    if [ -z "$port" ] || ! port_free "$port"; then port="$(free_port)"; fi
    log "starting PostgreSQL on 127.0.0.1:$port (log: $pg/pg.log)"
    as_pg_owner "$PG_BIN/pg_ctl" -D "$pg/data" -l "$pg/pg.log" -w -t 120 -o "-p $port" start >/dev/null \
      || { tail -20 "$pg/pg.log" >&2 || true; die "PostgreSQL did not start (log: $pg/pg.log)"; }
  fi
  local exists
  exists="$(echo "SELECT 1 FROM pg_roles WHERE rolname = '$PG_ROLE';" | pg_admin_sql "$state" "$port")" \
    || die "cannot run SQL on the PostgreSQL cluster in $pg (log: $pg/pg.log)"
  # (Re)set the password too: a first start that failed before ls.env was written may have made the role.
  if [ "$exists" = 1 ]; then
    echo "ALTER ROLE $PG_ROLE LOGIN PASSWORD '$password';" | pg_admin_sql "$state" "$port" >/dev/null
  else
    echo "CREATE ROLE $PG_ROLE LOGIN PASSWORD '$password';" | pg_admin_sql "$state" "$port" >/dev/null
  fi
  exists="$(echo "SELECT 1 FROM pg_database WHERE datname = '$PG_DATABASE';" | pg_admin_sql "$state" "$port")"
  if [ "$exists" != 1 ]; then
    echo "CREATE DATABASE $PG_DATABASE OWNER $PG_ROLE;" | pg_admin_sql "$state" "$port" >/dev/null
  fi
  echo "$port"
}

pg_stop() {
  local state="$1"
  if pg_running "$state"; then
    as_pg_owner "$PG_BIN/pg_ctl" -D "$state/pg/data" -m fast -w -t 60 stop >/dev/null \
      || die "PostgreSQL in $state/pg did not stop (log: $state/pg/pg.log)"
    log "stopped PostgreSQL ($state/pg)"
  fi
}

start() {
  local state="$1"
  mkdir -p "$state"
  state="$(cd "$state" && pwd)"
  local files_root="${MCM_LS_FILES_ROOT:-$state/files}"
  mkdir -p "$files_root"
  (umask 077 && mkdir -p "$state/data")
  chmod 700 "$state/data"  # Label Studio's database holds the token (also a data dir left by an older run)
  files_root="$(cd "$files_root" && pwd)"
  ensure_venv

  # Credentials persist in ls.env so a restart reuses the same user and token.
  local user password token port db pg_port="" pg_password=""
  if [ -f "$state/ls.env" ]; then
    # shellcheck disable=SC1091
    source "$state/ls.env"
    user="$MCM_LS_USER_SAVED"; password="$MCM_LS_PASSWORD_SAVED"; token="$LABEL_STUDIO_API_KEY"
    port="$MCM_LS_PORT_SAVED"
    db="${MCM_LS_DB_SAVED:-sqlite}"
    pg_port="${MCM_PG_PORT_SAVED:-}"; pg_password="${MCM_PG_PASSWORD_SAVED:-}"
    if [ -n "${MCM_LS_DB:-}" ] && [ "$MCM_LS_DB" != "$db" ]; then
      die "$state was created with MCM_LS_DB=$db; use a new STATE_DIR for MCM_LS_DB=$MCM_LS_DB"
    fi
  else
    user="${MCM_LS_USER:-admin@example.com}"
    password="${MCM_LS_PASSWORD:-$(random_hex 12)}"
    # A legacy token (40 hex characters): label-studio-ml and the sdk's file download send it as
    # "Token <key>", which works for API calls and /data/local-files alike.
    token="$(random_hex 20)"
    port="$PORT"
    db="${MCM_LS_DB:-sqlite}"
  fi
  case "$db" in
    sqlite) ;;
    postgresql) [ -n "$pg_password" ] || pg_password="$(random_hex 16)" ;;
    *) die "MCM_LS_DB must be sqlite or postgresql, not '$db'" ;;
  esac
  local url="http://127.0.0.1:$port"

  if is_running "$state" && answers "$url"; then
    log "already running at $url (pid $(cat "$state/ls.pid"))"
  else
    if answers "$url"; then
      die "port $port already serves something else; set MCM_LS_PORT to a free port"
    fi
    # A failed start below must leave no server running (Label Studio or its database).
    trap '[ $? = 0 ] || stop "'"$state"'"' EXIT
    if [ "$db" = postgresql ]; then
      pg_port="$(pg_start "$state" "$pg_port" "$pg_password")"
    fi
    log "starting Label Studio $LS_VERSION at $url on $db (data: $state/data, log: $state/ls.log)"
    (
      umask 077  # its database, media and log: the owner's only
      export LABEL_STUDIO_BASE_DATA_DIR="$state/data"
      # The first user and its token through the environment (label_studio/server.py reads
      # LABEL_STUDIO_USERNAME / _PASSWORD / _USER_TOKEN when --username etc. are not given).
      export LABEL_STUDIO_USERNAME="$user" LABEL_STUDIO_PASSWORD="$password" LABEL_STUDIO_USER_TOKEN="$token"
      if [ "$db" = postgresql ]; then
        # Names read by label_studio/core/settings/base.py (DATABASES_ALL) and label_studio.py (DJANGO_DB).
        export DJANGO_DB=default POSTGRE_HOST=127.0.0.1 POSTGRE_PORT="$pg_port" \
          POSTGRE_NAME="$PG_DATABASE" POSTGRE_USER="$PG_ROLE" POSTGRE_PASSWORD="$pg_password"
      else
        export DJANGO_DB=sqlite
      fi
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
    trap - EXIT
  fi

  # The token must work for the API, otherwise nothing downstream will.
  local code
  code="$(printf 'Authorization: Token %s\n' "$token" \
    | curl -s -o /dev/null -w '%{http_code}' -H @- "$url/api/current-user/whoami")"  # the header from stdin
  [ "$code" = "200" ] || die "API token rejected by $url (HTTP $code)"

  write_secret_file "$state/ls.env" <<EOF
LABEL_STUDIO_URL=$url
LABEL_STUDIO_API_KEY=$token
MCM_LS_USER_SAVED=$user
MCM_LS_PASSWORD_SAVED=$password
MCM_LS_PORT_SAVED=$port
MCM_LS_FILES_ROOT_SAVED=$files_root
MCM_LS_DB_SAVED=$db
MCM_PG_PORT_SAVED=$pg_port
MCM_PG_PASSWORD_SAVED=$pg_password
EOF
}

stop() {
  local state="$1"
  stop_label_studio "$state"
  [ -d "$state/pg/data" ] && pg_stop "$state"
  return 0
}

stop_label_studio() {
  local state="$1"
  [ -f "$state/ls.pid" ] || { log "no pid file in $state: Label Studio not running"; return 0; }
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
