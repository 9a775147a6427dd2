#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install requirements.txt and
# requirements-test.txt into it.
# Prints nothing but errors when everything is already installed. Idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MCM_VENV:-$HOME/.cache/mcm/venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.mcm-requirements.sha"
want="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-test.txt" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing requirements.txt + requirements-test.txt into $VENV (first time: a few minutes)"
  log="$(mktemp)"
  if ! "$VENV/bin/pip" install --disable-pip-version-check -q -r "$ROOT/requirements.txt" -r "$ROOT/requirements-test.txt" >"$log" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$log" >&2 || true
    rm -f "$log"
    echo "[setup] pip install of the requirements failed (see above)" >&2
    exit 1
  fi
  rm -f "$log"
  "$VENV/bin/python" -c "import torch, torchvision, flask, label_studio_sdk, rq, mlxtend, pytest, hypothesis, playwright" \
    || { echo "[setup] dependency install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
