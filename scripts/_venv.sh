# Sourced by demo.sh / test.sh: make .venv with Python 3.11 and install petrun into it (editable).
# A failed install stops the script (pip's output is shown then) and leaves no stamp, so the next
# run tries again; a good install is quiet.
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
  "$PY" -m venv .venv || { echo "could not create .venv with $PY" >&2; exit 1; }
fi
stamp=".venv/.petrun-installed-${PETRUN_EXTRAS:-base}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing petrun and its dependencies into .venv (first run: a few minutes)" >&2
  rm -f .venv/.petrun-installed-*
  log="$(mktemp)"
  extras="${PETRUN_EXTRAS:-}"
  if ! { .venv/bin/python -m pip install --upgrade pip \
         && .venv/bin/python -m pip install -e ".${extras:+[$extras]}"; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "install failed (full pip log: $log)" >&2
    exit 1
  fi
  rm -f "$log"
  .venv/bin/python -c "import petrun, mindspore" || { echo "install failed: petrun or mindspore does not import" >&2; exit 1; }
  touch "$stamp"
fi
