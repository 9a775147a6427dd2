#!/usr/bin/env bash
# One command from a fresh clone to a Label Studio whose queue shows rare digits first.
#
#   bash scripts/quickstart.sh          install what is missing, start Label Studio + the backend on
#                                       localhost, create the MNIST demo project, train, enable ordering
#   bash scripts/quickstart.sh stop     stop both servers (data stays; a later start reuses it)
#   bash scripts/quickstart.sh status   say what runs where
#
# A second run reuses everything (venvs, database, user, project, model) and restarts only the
# servers that are down. State: $MCM_QUICKSTART_DIR (default ~/.cache/mcm/quickstart): Label Studio's
# database and log under ls/, backend.log, backend.pid, models/, files/ (the demo PNGs).
# Ports: MCM_LS_PORT (default 8080), MCM_BACKEND_PORT (default 9090). Backbone: MCM_BACKBONE
# (default simple-cnn, which needs no downloaded weights and suits the demo's grayscale digits; it is the
# wrong choice for colour images, photos or a few dozen labels: use resnet18 for photos, pool-cnn for
# glyphs, icons, shapes or textures without weights: docs/backend.md). Needs no internet beyond the package index.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STATE="${MCM_QUICKSTART_DIR:-$HOME/.cache/mcm/quickstart}"
mkdir -p "$STATE"
STATE="$(cd "$STATE" && pwd)"
export MCM_VENV="${MCM_VENV:-$HOME/.cache/mcm/venv}"
PY="$MCM_VENV/bin/python"
BACKEND_PORT="${MCM_BACKEND_PORT:-9090}"
BACKEND_URL="http://127.0.0.1:$BACKEND_PORT"
export MCM_LS_FILES_ROOT="$STATE/files"
export MCM_LS_PORT="${MCM_LS_PORT:-8080}"

log() { echo "[quickstart] $*"; }

backend_running() {
  [ -f "$STATE/backend.pid" ] && kill -0 "$(cat "$STATE/backend.pid")" 2>/dev/null \
    && curl -sf --max-time 3 "$BACKEND_URL/health" >/dev/null 2>&1
}

stop_backend() {
  if [ -f "$STATE/backend.pid" ]; then
    local pid; pid="$(cat "$STATE/backend.pid")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
      log "backend stopped (pid $pid)"
    fi
    rm -f "$STATE/backend.pid"
  fi
}

start_backend() {
  if backend_running; then
    log "backend already running at $BACKEND_URL (pid $(cat "$STATE/backend.pid"))"
    return 0
  fi
  stop_backend
  if curl -sf --max-time 3 "$BACKEND_URL/health" >/dev/null 2>&1; then
    log "ERROR: port $BACKEND_PORT already serves something else; set MCM_BACKEND_PORT to a free port" >&2
    exit 1
  fi
  mkdir -p "$STATE/models"
  log "starting the backend at $BACKEND_URL (log: $STATE/backend.log)"
  LABEL_STUDIO_URL="$LABEL_STUDIO_URL" LABEL_STUDIO_API_KEY="$LABEL_STUDIO_API_KEY" \
  MODEL_DIR="$STATE/models" MCM_BACKBONE="${MCM_BACKBONE:-simple-cnn}" \
  MCM_ALLOWED_HOSTS="127.0.0.1,localhost${MCM_ALLOWED_HOSTS:+,$MCM_ALLOWED_HOSTS}" \
  nohup "$PY" _wsgi.py --host 127.0.0.1 --port "$BACKEND_PORT" </dev/null >>"$STATE/backend.log" 2>&1 &
  echo $! >"$STATE/backend.pid"
  for _ in $(seq 1 120); do
    curl -sf --max-time 3 "$BACKEND_URL/health" >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$STATE/backend.pid")" 2>/dev/null || { tail -20 "$STATE/backend.log"; log "ERROR: the backend exited" >&2; exit 1; }
    sleep 1
  done
  log "ERROR: the backend did not answer within 120s (log: $STATE/backend.log)" >&2
  exit 1
}

case "${1:-start}" in
  stop)
    stop_backend
    bash scripts/ls_server.sh stop "$STATE/ls"
    exit 0 ;;
  status)
    if bash scripts/ls_server.sh status "$STATE/ls"; then
      # shellcheck disable=SC1091
      source "$STATE/ls/ls.env"; log "Label Studio running at $LABEL_STUDIO_URL"
    else log "Label Studio not running"; fi
    if backend_running; then log "backend running at $BACKEND_URL"; else log "backend not running"; fi
    exit 0 ;;
  start) ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac

log "1/4 project environment ($MCM_VENV)"
bash scripts/setup_env.sh
log "2/4 Label Studio 1.23.2 (its own venv: ${MCM_LS_VENV:-$HOME/.cache/mcm/ls-venv})"
bash scripts/ls_server.sh start "$STATE/ls"
set -a
# shellcheck disable=SC1091
source "$STATE/ls/ls.env"
set +a
log "3/4 backend"
start_backend
log "4/4 demo project, training and tail-first ordering"
"$PY" scripts/quickstart_demo.py --state "$STATE" --files-root "$MCM_LS_FILES_ROOT" --backend-url "$BACKEND_URL" \
  | tee "$STATE/demo.out"
PID="$(sed -n 's/^PROJECT_ID=//p' "$STATE/demo.out" | tail -1)"

cat <<EOF

============================================================================================
 Label Studio:  $LABEL_STUDIO_URL/projects/$PID/data
 Login:         $MCM_LS_USER_SAVED   password: $MCM_LS_PASSWORD_SAVED
 Backend:       $BACKEND_URL   (log: $STATE/backend.log)

 What to click: open the project, choose the tab "Tail classes first" at the top of the task
 list, then click "Label Tasks As Displayed". The images most likely to be one of the rare
 digits come first. (Not "Label All Tasks": it ignores the tab's order.)
 Every annotation you submit is sent to the backend, which retrains (a burst counts once),
 re-scores the unlabeled images and re-points the project's model version.
 Your own images: simple-cnn suits grayscale digits like these. For photos start the backend with
 MCM_BACKBONE=resnet18 (ImageNet weights, downloaded once), for colour glyphs, icons, shapes or
 textures without weights MCM_BACKBONE=pool-cnn (which backbone for which images: docs/backend.md).
 Status:  LABEL_STUDIO_URL=$LABEL_STUDIO_URL LABEL_STUDIO_API_KEY=<see $STATE/ls/ls.env> \\
          $PY -m backend.admin status --project $PID
 Stop:    bash scripts/quickstart.sh stop
============================================================================================
EOF
