#!/usr/bin/env bash
# Quickstart 2: create .venv if needed, install petrun with its test extras, run the whole suite
# (slow multi-process tests included). Extra arguments go to pytest (e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
PETRUN_EXTRAS="${PETRUN_EXTRAS:-test}" source scripts/_venv.sh
exec .venv/bin/python -m pytest "$@"
