# Sourced by demo.sh / test.sh: make .venv with Python 3.11 and install petrun into it (editable).
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3 python; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY="$cand"; break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "petrun needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $("$PY" --version)" >&2
  "$PY" -m venv .venv
fi
stamp=".venv/.petrun-installed-${PETRUN_EXTRAS:-base}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing petrun and its dependencies into .venv (first run: a few minutes)" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  extras="${PETRUN_EXTRAS:-}"
  .venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  .venv/bin/python -c "import petrun, mindspore" || { echo "install failed" >&2; exit 1; }
  touch "$stamp"
fi
