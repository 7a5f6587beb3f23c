#!/usr/bin/env bash
# README command (2): set up .venv, then run the test suite.
#   bash scripts/test.sh          lint (ruff), type check (mypy), fast suite (tiny random models, doctests)
#   bash scripts/test.sh --ci     the same, then the slow real-model tests and the smoke runs
#   extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ci=0
if [ "${1:-}" = "--ci" ]; then ci=1; shift; fi
.venv/bin/ruff check .        # settings and exclusions: pyproject.toml [tool.ruff]
.venv/bin/mypy                # settings and exclusions: pyproject.toml [tool.mypy]
set +e
.venv/bin/python -m pytest "$@"
rc=$?
if [ $rc -eq 0 ] && [ $ci -eq 1 ]; then
  .venv/bin/python -m pytest -m slow "$@"
  rc=$?
fi
set -e
if [ $rc -eq 5 ]; then echo "test: no tests were collected" >&2; exit 1; fi
exit $rc
