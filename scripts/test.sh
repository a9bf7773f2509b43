#!/usr/bin/env bash
# Quickstart 2: create .venv if needed, install petrun with its test and parity extras (torch,
# transformers, peft: the HF parity tests run in CI), run the whole suite (slow multi-process tests
# included). Extra arguments go to pytest (e.g. -m "not slow and not parity").
set -euo pipefail
cd "$(dirname "$0")/.."
PETRUN_EXTRAS="${PETRUN_EXTRAS:-test,parity}" source scripts/_venv.sh
# -rs: the reasons of every skip are listed at the end, so a skipped oracle is seen.
exec .venv/bin/python -m pytest -rs "$@"
